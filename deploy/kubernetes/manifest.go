// Package kubernetes is twill's Kubernetes manifest (twill.yaml: the
// namespace, service account, ClusterRole and binding, the ConfigMap with
// net-conf.json and the CNI conflist, and the DaemonSet) for Go code that
// applies it, and its tests against a real kube-apiserver. It holds no
// logic of twill's and must not: what twilld does in a cluster is in
// overlay/lease/kube.
package kubernetes

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Manifest is twill.yaml, as a user applies it.
//
//go:embed twill.yaml
var Manifest []byte

// Names in the manifest.
const (
	Namespace      = "twill"
	ServiceAccount = "twill"
	DaemonSet      = "twill"
	ConfigMap      = "twill-cfg"
)

// Objects are the manifest's objects, in its order.
func Objects() ([]*unstructured.Unstructured, error) {
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(Manifest), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("twill.yaml, document %d: %w", len(objs)+1, err)
		}
		if m == nil {
			continue // an empty document
		}
		o := &unstructured.Unstructured{Object: m}
		if o.GetKind() == "" || o.GetAPIVersion() == "" || o.GetName() == "" {
			return nil, fmt.Errorf("twill.yaml, document %d: no kind, apiVersion or name", len(objs)+1)
		}
		objs = append(objs, o)
	}
}
