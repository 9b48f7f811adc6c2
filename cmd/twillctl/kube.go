package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/twillnet/twill/overlay/lease/kube"
)

// kubeConn are the flags that reach a Kubernetes API server.
type kubeConn struct {
	kubeconfig string
	prefix     string
}

func kubeFlags(fs *flag.FlagSet) *kubeConn {
	k := &kubeConn{}
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "list the Kubernetes nodes of this kubeconfig (Kubernetes mode, twilld --kube-subnet-mgr) instead of etcd")
	fs.StringVar(&k.prefix, "kube-annotation-prefix", kube.DefaultPrefix, "prefix of the node annotations (twilld's --kube-annotation-prefix; "+kube.FlannelPrefix+" for flannel's)")
	return k
}

// kubeLeases lists the nodes: pod CIDRs and what each publishes.
func kubeLeases(ctx context.Context, k *kubeConn, format string, out io.Writer) error {
	ann, err := kube.NewAnnotations(k.prefix)
	if err != nil {
		return err
	}
	rc, err := kube.RESTConfig("", k.kubeconfig)
	if err != nil {
		return err
	}
	c, err := kube.NewClient(rc, "twillctl/"+version)
	if err != nil {
		return err
	}
	nodes, err := kube.ListNodes(ctx, c, ann)
	if err != nil {
		return err
	}
	switch format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(nodes)
	case "table":
	default:
		return fmt.Errorf("-o %q: want table or json", format)
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPOD CIDRS\tPUBLIC IP\tBACKEND\tMANAGED\tNETWORK UNAVAILABLE\tBACKEND DATA")
	for _, n := range nodes {
		ip := n.PublicIP
		if n.PublicIPv6 != "" {
			ip = strings.TrimPrefix(ip+","+n.PublicIPv6, ",")
		}
		data := n.BackendData
		if n.BackendV6Data != "" {
			data += " v6:" + n.BackendV6Data
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\t%s\n", n.Node, dash(strings.Join(n.PodCIDRs, ",")), dash(ip), dash(n.BackendType),
			n.Managed, dash(n.NetworkUnavailable), dash(data))
	}
	return tw.Flush()
}
