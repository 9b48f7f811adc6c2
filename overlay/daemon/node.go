package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
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
	return ifacePrefixes(ifc, netip.Addr.Is4)
}

// ipv6Prefixes are an interface's global unicast IPv6 addresses with their
// prefixes (link-local ones left out).
func ipv6Prefixes(ifc *net.Interface) []netip.Prefix {
	return ifacePrefixes(ifc, func(a netip.Addr) bool { return a.Is6() && a.IsGlobalUnicast() })
}

// ifacePrefixes are an interface's addresses that keep, with their
// prefixes (IPv4 ones unmapped).
func ifacePrefixes(ifc *net.Interface, keep func(netip.Addr) bool) []netip.Prefix {
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
		if !ok || !keep(ip.Unmap()) {
			continue
		}
		ones, bits := ipn.Mask.Size()
		if ip.Unmap().Is4() && bits == 128 {
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

// ipv6Underlay checks that the backend can carry the config's IPv6 pod
// network and gives the node its IPv6 underlay address: publicIPv6 if set
// (with its prefix if the underlay interface holds it), else the first
// global IPv6 address of the underlay interface. Without
// EnableIPv6 the node has none. host-gw needs the address; vxlan without
// one carries IPv6 over the IPv4 underlay.
//
// This is the model branch's publicIPv6 (i17-model) folded in: the data
// path needs the address's prefix too, to tell peers on the IPv6 segment.
func ipv6Underlay(n *backend.Node, cfg *netconf.Config, publicIPv6 netip.Addr, log *slog.Logger) error {
	if !cfg.EnableIPv6 {
		n.PublicIPv6, n.IfacePrefix6 = netip.Addr{}, netip.Prefix{}
		return nil
	}
	if !plan.CarriesIPv6(cfg.Backend) {
		return &netconf.FieldError{Field: "EnableIPv6", Value: "true",
			Reason: fmt.Sprintf("the %s backend carries IPv4 only in twill (IPv6 pod networks run on vxlan, host-gw or wireguard)", cfg.Backend.Type)}
	}
	if !n.PublicIPv6.IsValid() && n.Iface != "" { // a FindUplink may have set it
		if ifc, err := net.InterfaceByName(n.Iface); err == nil {
			for _, p := range ipv6Prefixes(ifc) {
				if !publicIPv6.IsValid() || p.Addr() == publicIPv6 {
					n.PublicIPv6, n.IfacePrefix6 = p.Addr(), p.Masked()
					break
				}
			}
		}
	}
	if publicIPv6.IsValid() && n.PublicIPv6 != publicIPv6 {
		// Not an address of the interface (one NATed to it, say): no
		// segment known, so no IPv6 peer is direct.
		n.PublicIPv6, n.IfacePrefix6 = publicIPv6, netip.Prefix{}
	}
	switch {
	case n.PublicIPv6.IsValid():
		log.Info("public IPv6 address", "iface", n.Iface, "public_ipv6", n.PublicIPv6, "prefix", n.IfacePrefix6)
	case !cfg.EnableIPv4:
		return fmt.Errorf("the network is IPv6-only, and the uplink %q has no global IPv6 address: set --public-ipv6", n.Iface)
	case cfg.Backend.Type == netconf.TypeHostGW:
		return fmt.Errorf("host-gw with EnableIPv6 routes via the peers' IPv6 underlay addresses: the underlay interface %q has no global IPv6 address (set --public-ipv6)", n.Iface)
	case cfg.Backend.Type == netconf.TypeWireGuard && (plan.WireGuardSeparate(cfg.Backend) || cfg.Backend.Mode == "ipv6"):
		return fmt.Errorf("wireguard Mode %s with EnableIPv6 reaches the peers at their PublicIPv6: the underlay interface %q has no global IPv6 address (set --public-ipv6, or use Mode auto or ipv4)", cfg.Backend.Mode, n.Iface)
	case cfg.Backend.Type == netconf.TypeWireGuard:
		log.Warn("the network enables IPv6 but the uplink has no global IPv6 address; publishing none and carrying IPv6 to the peers' IPv4 endpoints", "iface", n.Iface, "mode", cfg.Backend.Mode)
	default:
		log.Warn("the network enables IPv6 but the uplink has no global IPv6 address; publishing none and carrying IPv6 over IPv4 (set --public-ipv6)", "iface", n.Iface)
	}
	return nil
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
