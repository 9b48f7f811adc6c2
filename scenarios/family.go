package scenarios

import (
	"net/netip"

	"github.com/twillnet/twill/vmtest"
)

// The address families a step runs in.
const (
	ipv4 = "ipv4"
	ipv6 = "ipv6"
)

// families are the address families of the cluster's pods, IPv4 first.
func (c *ClusterSpec) families() []string {
	switch c.IPFamily {
	case "dual":
		return []string{ipv4, ipv6}
	case "ipv6":
		return []string{ipv6}
	}
	return []string{ipv4}
}

// stepFamilies are the families a step runs in: its own, or for ping-all
// every family of the cluster's, for the others the first.
func (p *play) stepFamilies(st Step) []string {
	if st.Family != "" {
		return []string{st.Family}
	}
	fs := p.s.Cluster.families()
	if st.Kind == "ping-all" {
		return fs
	}
	return fs[:1]
}

// addrIn is a pod's address in a family (zero if it has none).
func addrIn(pod vmtest.Pod, family string) netip.Addr {
	if family == ipv6 {
		return pod.Addr6
	}
	return pod.Addr
}

// nodeAddrIn is a node's underlay address in a family.
func nodeAddrIn(n vmtest.Node, family string) netip.Addr {
	if family == ipv6 {
		return n.UnderlayIP6
	}
	return n.UnderlayIP
}

// ipHeader is the length of the IP and ICMP headers of an echo request:
// what a ping's payload leaves of the packet.
func ipHeader(family string) int {
	if family == ipv6 {
		return 40 + 8
	}
	return 20 + 8
}

// outside6 is the cluster's outside host's IPv6 address, for clusters
// that have one (a vmtest.Lab with IPv6 and an outside host).
type outside6 interface {
	Outside6() (netip.Addr, bool)
}
