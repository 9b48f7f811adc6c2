package kubeapi

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// NodeIPAM is what the node IPAM controller hands out: each Node's
// spec.podCIDR from ClusterCIDR, MaskSize bits long.
type NodeIPAM struct {
	ClusterCIDR netip.Prefix
	MaskSize    int
}

func (n NodeIPAM) check() error {
	if !n.ClusterCIDR.IsValid() || !n.ClusterCIDR.Addr().Is4() {
		return fmt.Errorf("node IPAM: ClusterCIDR %v: want an IPv4 prefix", n.ClusterCIDR)
	}
	if n.MaskSize <= n.ClusterCIDR.Bits() || n.MaskSize > 30 {
		return fmt.Errorf("node IPAM: MaskSize %d: want %d..30 for %s", n.MaskSize, n.ClusterCIDR.Bits()+1, n.ClusterCIDR)
	}
	return nil
}

// ControllerManagerArgs are kube-controller-manager's flags to run the
// controllers named (node IPAM too, as --allocate-node-cidrs does in a
// real cluster, when ipam is not nil) against the server of kubeconfig,
// serving nothing itself.
func ControllerManagerArgs(kubeconfig string, serviceCIDR netip.Prefix, ipam *NodeIPAM, controllers ...string) []string {
	if ipam != nil {
		controllers = append(controllers, "node-ipam-controller")
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--service-cluster-ip-range=" + serviceCIDR.String(),
		"--leader-elect=false",
		"--secure-port=0",
	}
	if ipam != nil {
		args = append(args, "--allocate-node-cidrs=true",
			"--cluster-cidr="+ipam.ClusterCIDR.String(),
			"--node-cidr-mask-size-ipv4="+strconv.Itoa(ipam.MaskSize))
	}
	return args
}

// StartControllerManager starts kube-controller-manager for s, its log in
// s's Dir, running the node IPAM controller when ipam is not nil and the
// controllers named (daemonset-controller, say); Stop it before s. It
// does not wait: a Node gets its podCIDR within a second or two.
func (s *Server) StartControllerManager(ipam *NodeIPAM, controllers ...string) (*Process, error) {
	if ipam != nil {
		if err := ipam.check(); err != nil {
			return nil, err
		}
		if ipam.ClusterCIDR.Overlaps(s.ServiceCIDR) {
			return nil, fmt.Errorf("node IPAM: ClusterCIDR %s overlaps the service network %s", ipam.ClusterCIDR, s.ServiceCIDR)
		}
	}
	if ipam == nil && len(controllers) == 0 {
		return nil, errors.New("kube-controller-manager: no controller to run")
	}
	bin, err := Binary(ControllerManagerBinary)
	if err != nil {
		return nil, err
	}
	return start(bin, ControllerManagerArgs(s.Kubeconfig, s.ServiceCIDR, ipam, controllers...),
		filepath.Join(s.Dir, "kube-controller-manager.log"), s.DieWithParent)
}
