package link

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/netconf"
)

// SubInterface returns the link to create for a pod or the host: a macvlan
// or ipvlan of the given mode with attrs (name, parent, MTU, namespace).
func SubInterface(typ, mode string, attrs netlink.LinkAttrs) (netlink.Link, error) {
	switch typ {
	case netconf.TypeMacvlan:
		m, ok := map[string]netlink.MacvlanMode{
			"bridge": netlink.MACVLAN_MODE_BRIDGE, "private": netlink.MACVLAN_MODE_PRIVATE,
			"vepa": netlink.MACVLAN_MODE_VEPA, "passthru": netlink.MACVLAN_MODE_PASSTHRU,
		}[mode]
		if !ok {
			return nil, fmt.Errorf("unknown macvlan mode %q; known modes are bridge, private, vepa, passthru", mode)
		}
		return &netlink.Macvlan{LinkAttrs: attrs, Mode: m}, nil
	case netconf.TypeIPvlan:
		m, ok := map[string]netlink.IPVlanMode{
			"l2": netlink.IPVLAN_MODE_L2, "l3": netlink.IPVLAN_MODE_L3, "l3s": netlink.IPVLAN_MODE_L3S,
		}[mode]
		if !ok {
			return nil, fmt.Errorf("unknown ipvlan mode %q; known modes are l2, l3, l3s", mode)
		}
		return &netlink.IPVlan{LinkAttrs: attrs, Mode: m}, nil
	}
	return nil, fmt.Errorf("backend %q has no sub-interfaces; want macvlan or ipvlan", typ)
}

// DefaultGateway is the gateway of the IPv4 default route in the main table
// among routes (a link's routes); invalid if there is none. The macvlan and
// ipvlan backend publishes it in the subnet file, and the CNI plugin falls
// back to it.
func DefaultGateway(routes []netlink.Route) netip.Addr {
	for _, r := range routes {
		if r.Gw == nil || r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
				continue
			}
		}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
			return gw
		}
	}
	return netip.Addr{}
}

// Prefix is n (an address with its mask, as netlink reports addresses and
// route destinations) as a netip.Prefix, IPv4 unmapped; false for nil or a
// malformed address.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
