package kubeapi

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
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
// node IPAM controller alone (what --allocate-node-cidrs does in a real
// cluster) against the server of kubeconfig, serving nothing itself.
func ControllerManagerArgs(kubeconfig string, serviceCIDR netip.Prefix, ipam NodeIPAM) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=node-ipam-controller",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + ipam.ClusterCIDR.String(),
		"--node-cidr-mask-size-ipv4=" + strconv.Itoa(ipam.MaskSize),
		"--service-cluster-ip-range=" + serviceCIDR.String(),
		"--leader-elect=false",
		"--secure-port=0",
	}
}

// StartControllerManager starts kube-controller-manager as the node IPAM
// controller of s, its log in s's Dir; Stop it before s. It does not wait:
// the first Node it sees gets its podCIDR within a second or two.
func (s *Server) StartControllerManager(ipam NodeIPAM) (*Process, error) {
	if err := ipam.check(); err != nil {
		return nil, err
	}
	if ipam.ClusterCIDR.Overlaps(s.ServiceCIDR) {
		return nil, fmt.Errorf("node IPAM: ClusterCIDR %s overlaps the service network %s", ipam.ClusterCIDR, s.ServiceCIDR)
	}
	bin, err := Binary(ControllerManagerBinary)
	if err != nil {
		return nil, err
	}
	p, err := start(bin, ControllerManagerArgs(s.Kubeconfig, s.ServiceCIDR, ipam),
		filepath.Join(s.Dir, "kube-controller-manager.log"), s.DieWithParent)
	if err != nil {
		return nil, err
	}
	return p, nil
}
