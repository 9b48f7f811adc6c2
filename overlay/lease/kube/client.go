package kube

import (
	"context"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig is how to reach the API server, as flannel finds it: the
// kubeconfig file and/or the API server URL if given, else the pod's service
// account (in-cluster).
func RESTConfig(apiURL, kubeconfig string) (*rest.Config, error) {
	if apiURL == "" && kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: not in a pod (%w); give --kubeconfig-file or --kube-api-url", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags(apiURL, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client from --kube-api-url %q --kubeconfig-file %q: %w", apiURL, kubeconfig, err)
	}
	return c, nil
}

// NewClient is a clientset for c, identifying itself as agent.
func NewClient(c *rest.Config, agent string) (kubernetes.Interface, error) {
	c = rest.CopyConfig(c)
	c.UserAgent = agent
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// NodeName finds the node's name as flannel does: given (--node-name), else
// NODE_NAME, else the node of the pod POD_NAMESPACE/POD_NAME runs on.
func NodeName(ctx context.Context, c kubernetes.Interface, given string, getenv func(string) string) (string, error) {
	if given != "" {
		return given, nil
	}
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	pod, ns := getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if pod == "" || ns == "" {
		return "", errors.New("node name unknown: set NODE_NAME (a DaemonSet sets it from spec.nodeName), or POD_NAME and POD_NAMESPACE, or --node-name")
	}
	p, err := c.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("find the node name: get pod %s/%s (POD_NAMESPACE/POD_NAME): %w", ns, pod, err)
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("find the node name: pod %s/%s has no spec.nodeName", ns, pod)
	}
	return p.Spec.NodeName, nil
}

// NodeView is what a node publishes, as twillctl leases --kubeconfig shows
// it: every node, marked or not, with its pod CIDRs and its annotations.
type NodeView struct {
	Node          string   `json:"node"`
	PodCIDRs      []string `json:"podCIDRs"`
	Managed       bool     `json:"kubeSubnetManager"`
	PublicIP      string   `json:"publicIP,omitempty"`
	PublicIPv6    string   `json:"publicIPv6,omitempty"`
	BackendType   string   `json:"backendType,omitempty"`
	BackendData   string   `json:"backendData,omitempty"`
	BackendV6Data string   `json:"backendV6Data,omitempty"`
	// NetworkUnavailable is the node's condition: "False" once twill (or
	// flannel) set the node up, "" when it has none.
	NetworkUnavailable string `json:"networkUnavailable,omitempty"`
}

// ListNodes lists every node with what it publishes under a's names.
func ListNodes(ctx context.Context, c kubernetes.Interface, a Annotations) ([]NodeView, error) {
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]NodeView, 0, len(nodes.Items))
	for _, n := range nodes.Items {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		v := NodeView{Node: n.Name, PodCIDRs: cidrs, Managed: n.Annotations[a.KubeSubnetManager] == "true",
			PublicIP: n.Annotations[a.PublicIP], PublicIPv6: n.Annotations[a.PublicIPv6], BackendType: n.Annotations[a.BackendType],
			BackendData: n.Annotations[a.BackendData], BackendV6Data: n.Annotations[a.BackendV6Data]}
		for _, c := range n.Status.Conditions {
			if c.Type == conditionType {
				v.NetworkUnavailable = string(c.Status)
			}
		}
		out = append(out, v)
	}
	return out, nil
}
