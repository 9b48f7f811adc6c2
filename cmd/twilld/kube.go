package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/twillnet/twill/overlay/lease/kube"
)

// kubeArgs are the flags of the Kubernetes mode (flannel's names): the
// lease store is the API server, each node's subnet its spec.podCIDR.
type kubeArgs struct {
	enabled     bool
	apiURL      string
	kubeconfig  string
	prefix      string
	netConfPath string
}

// DefaultNetConfPath is where the DaemonSet mounts net-conf.json.
const DefaultNetConfPath = "/etc/twill/net-conf.json"

func addKubeFlags(fs *flag.FlagSet, k *kubeArgs) {
	fs.BoolVar(&k.enabled, "kube-subnet-mgr", false, "take the subnet from the Kubernetes API (the node's spec.podCIDR) instead of etcd; peers are the nodes marked <prefix>/kube-subnet-manager=true")
	fs.StringVar(&k.apiURL, "kube-api-url", "", "Kubernetes API server URL (default: from --kubeconfig-file, else the pod's service account)")
	fs.StringVar(&k.kubeconfig, "kubeconfig-file", "", "kubeconfig file (default: the pod's service account)")
	fs.StringVar(&k.prefix, "kube-annotation-prefix", kube.DefaultPrefix, "prefix of the node annotations; "+kube.FlannelPrefix+" shares a cluster with flannel")
	fs.StringVar(&k.netConfPath, "net-config-path", DefaultNetConfPath, "with --kube-subnet-mgr: the network config file (flannel's net-conf.json)")
}

// newKubeRegistry connects to the API server, finds the node's name
// (--node-name, NODE_NAME, or POD_NAMESPACE/POD_NAME's node) and starts the
// registry on Nodes.
func newKubeRegistry(ctx context.Context, a *args, log *slog.Logger) (*kube.Registry, error) {
	k := &a.kube
	if _, err := kube.NewAnnotations(k.prefix); err != nil {
		return nil, err
	}
	rc, err := kube.RESTConfig(k.apiURL, k.kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kube.NewClient(rc, "twilld/"+version)
	if err != nil {
		return nil, err
	}
	name, err := kube.NodeName(ctx, client, a.cfg.NodeName, os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("--kube-subnet-mgr: %w", err)
	}
	a.cfg.NodeName = name
	// Every node probes the API server (GET /version): every 30 s, not
	// etcd's 5 s, since a cluster may have thousands.
	if a.cfg.ProbeInterval == 0 {
		a.cfg.ProbeInterval = 30 * time.Second
	}
	log.Info("kube subnet manager", "node", name, "api", rc.Host, "annotation_prefix", k.prefix, "net_config", k.netConfPath)
	return kube.New(kube.Config{Client: client, NodeName: name, Prefix: k.prefix, NetConfPath: k.netConfPath,
		Log: log.With("component", "kube")})
}
