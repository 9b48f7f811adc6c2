package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
)

// underlay is the interface and address the node uses to reach its peers.
type underlay struct {
	iface  *net.Interface
	addr   netip.Addr
	prefix netip.Prefix
}

// findUnderlay picks the node's public address and underlay interface, in
// flannel's order: --public-ip (the interface that holds it, if any), else
// the first --iface (name or address) that exists, else the first interface
// whose name or address matches an --iface-regex, else the interface of the
// default route.
func findUnderlay(publicIP netip.Addr, ifaces, ifaceRegex []string) (underlay, error) {
	all, err := net.Interfaces()
	if err != nil {
		return underlay{}, fmt.Errorf("list network interfaces: %w", err)
	}
	if publicIP.IsValid() {
		// The interface that holds it exactly, else the one whose subnet
		// contains it (127.0.0.11 lives on lo's 127.0.0.0/8).
		if u, ok := ifaceHolding(all, publicIP, true); ok {
			return u, nil
		}
		if u, ok := ifaceHolding(all, publicIP, false); ok {
			u.addr = publicIP
			return u, nil
		}
		if len(ifaces) == 0 && len(ifaceRegex) == 0 {
			return underlay{addr: publicIP}, nil
		}
	}
	var errs []error
	for _, spec := range ifaces {
		u, err := ifaceBySpec(all, spec)
		if err == nil {
			if publicIP.IsValid() {
				u.addr = publicIP
			}
			return u, nil
		}
		errs = append(errs, err)
	}
	for _, expr := range ifaceRegex {
		re, err := regexp.Compile(expr)
		if err != nil {
			return underlay{}, fmt.Errorf("--iface-regex %q: %w", expr, err)
		}
		for i := range all {
			for _, p := range ipv4Prefixes(&all[i]) {
				if re.MatchString(all[i].Name) || re.MatchString(p.Addr().String()) {
					u := underlay{iface: &all[i], addr: p.Addr(), prefix: p.Masked()}
					if publicIP.IsValid() {
						u.addr = publicIP
					}
					return u, nil
				}
			}
		}
		errs = append(errs, fmt.Errorf("--iface-regex %q matches no interface with an IPv4 address", expr))
	}
	if len(errs) > 0 {
		return underlay{}, errors.Join(errs...)
	}
	name, err := defaultRouteInterface()
	if err != nil {
		return underlay{}, fmt.Errorf("find the default route's interface (set --iface or --public-ip): %w", err)
	}
	u, err := ifaceBySpec(all, name)
	if err != nil {
		return underlay{}, fmt.Errorf("default route's interface: %w", err)
	}
	return u, nil
}

func ifaceHolding(all []net.Interface, ip netip.Addr, exact bool) (underlay, bool) {
	for i := range all {
		for _, p := range ipv4Prefixes(&all[i]) {
			if (exact && p.Addr() == ip) || (!exact && p.Contains(ip)) {
				return underlay{iface: &all[i], addr: p.Addr(), prefix: p.Masked()}, true
			}
		}
	}
	return underlay{}, false
}

// ifaceBySpec finds an interface by name or by one of its addresses, and
// takes its first IPv4 address.
func ifaceBySpec(all []net.Interface, spec string) (underlay, error) {
	if ip, err := netip.ParseAddr(spec); err == nil {
		if u, ok := ifaceHolding(all, ip, true); ok {
			return u, nil
		}
		for i := range all {
			if ip.Is6() && slices.Contains(ipv6Addrs(&all[i]), ip) {
				return ifaceBySpec(all, all[i].Name) // its IPv4 address, if it has one
			}
		}
		return underlay{}, fmt.Errorf("--iface %s: no interface has that address", spec)
	}
	for i := range all {
		if all[i].Name != spec {
			continue
		}
		ps := ipv4Prefixes(&all[i])
		if len(ps) == 0 {
			// An IPv6-only uplink: usable on an IPv6-only network, which
			// configure checks once it has read the config.
			if _, ok := globalIPv6(&all[i]); ok {
				return underlay{iface: &all[i]}, nil
			}
			return underlay{}, fmt.Errorf("--iface %s: the interface has no IPv4 address and no global IPv6 address", spec)
		}
		return underlay{iface: &all[i], addr: ps[0].Addr(), prefix: ps[0].Masked()}, nil
	}
	names := make([]string, len(all))
	for i := range all {
		names[i] = all[i].Name
	}
	return underlay{}, fmt.Errorf("--iface %s: no such interface (have %s)", spec, strings.Join(names, ", "))
}

func ipv4Prefixes(ifc *net.Interface) []netip.Prefix {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok || !ip.Unmap().Is4() {
			continue
		}
		ones, _ := ipn.Mask.Size()
		if ones > 32 {
			ones -= 96
		}
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out
}

// backendNode describes the node to a backend.
func (u underlay) backendNode(name string) backend.Node {
	n := backend.Node{Name: name, PublicIP: u.addr, IfacePrefix: u.prefix}
	if u.iface != nil {
		n.Iface, n.IfaceIndex, n.IfaceMTU = u.iface.Name, u.iface.Index, u.iface.MTU
	}
	return n
}

// publicIPv6 is the IPv6 address the node publishes: none unless the
// network enables IPv6; --public-ipv6 if set; else the first global IPv6
// address of the uplink interface. A dual-stack node without one carries
// IPv6 pod traffic over its IPv4 underlay where its backend can; an
// IPv6-only node must have one.
func (d *Daemon) publicIPv6(node backend.Node, netcfg *netconf.Config) (netip.Addr, error) {
	if !netcfg.EnableIPv6 {
		return netip.Addr{}, nil
	}
	if d.cfg.PublicIPv6.IsValid() {
		return d.cfg.PublicIPv6, nil
	}
	if node.Iface != "" {
		if ifc, err := net.InterfaceByName(node.Iface); err == nil {
			if a, ok := globalIPv6(ifc); ok {
				d.log.Info("public IPv6 address from the uplink", "iface", node.Iface, "public_ipv6", a)
				return a, nil
			}
		}
	}
	if !netcfg.EnableIPv4 {
		return netip.Addr{}, fmt.Errorf("the network is IPv6-only, and the uplink %q has no global IPv6 address: set --public-ipv6", node.Iface)
	}
	d.log.Warn("the network enables IPv6 but the uplink has no global IPv6 address; publishing none (set --public-ipv6)", "iface", node.Iface)
	return netip.Addr{}, nil
}

// globalIPv6 is the first global unicast IPv6 address of ifc (unique local
// addresses count: they are what a lab's underlay has).
func globalIPv6(ifc *net.Interface) (netip.Addr, bool) {
	for _, ip := range ipv6Addrs(ifc) {
		if ip.IsGlobalUnicast() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// ipv6Addrs are the IPv6 addresses of ifc.
func ipv6Addrs(ifc *net.Interface) []netip.Addr {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Is6() && !ip.Is4In6() {
			out = append(out, ip)
		}
	}
	return out
}
