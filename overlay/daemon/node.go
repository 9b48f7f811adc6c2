package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// underlay is the interface and addresses the node uses to reach its
// peers: an IPv4 address, a global IPv6 one, or both, as the network's
// families need.
type underlay struct {
	iface   *net.Interface
	addr    netip.Addr
	prefix  netip.Prefix
	addr6   netip.Addr
	prefix6 netip.Prefix
}

// uplinkFlags are twilld's flags that choose the underlay.
type uplinkFlags struct {
	publicIP, publicIPv6 netip.Addr
	ifaces, ifaceRegex   []string
}

// families is what the network needs of the underlay: an IPv4 address
// (need4), a global IPv6 one (need6), and whether it uses an IPv6 one if
// the interface has it (want6: EnableIPv6, where vxlan and wireguard Mode
// auto/ipv4 carry IPv6 over IPv4 without one). why4 and why6 say, for
// errors, what needs the address.
type families struct {
	need4, need6, want6 bool
	why4, why6          string
}

// underlayFamilies is what cfg needs of the underlay.
func underlayFamilies(cfg *netconf.Config) families {
	f := families{need4: cfg.EnableIPv4, want6: cfg.EnableIPv6}
	if f.need4 {
		f.why4 = fmt.Sprintf("which the IPv4 network %s needs", cfg.Network)
	}
	if !cfg.EnableIPv6 {
		return f
	}
	switch {
	case !cfg.EnableIPv4:
		f.need6, f.why6 = true, fmt.Sprintf("which the IPv6-only network %s needs (EnableIPv4 false)", cfg.IPv6Network)
	case cfg.Backend.Type == netconf.TypeHostGW:
		f.need6, f.why6 = true, "which EnableIPv6 on host-gw needs (it routes via the peers' IPv6 underlay addresses)"
	case cfg.Backend.Type == netconf.TypeWireGuard && (plan.WireGuardSeparate(cfg.Backend) || cfg.Backend.Mode == "ipv6"):
		f.need6, f.why6 = true, fmt.Sprintf("which EnableIPv6 on wireguard Mode %s needs (it reaches the peers at their PublicIPv6; Mode auto or ipv4 does without)", cmp.Or(cfg.Backend.Mode, "separate"))
	}
	return f
}

// missing says which needed address u lacks ("" if none): an address given
// by --public-ip or --public-ipv6 stands in for the interface's.
func (f families) missing(u underlay, fl uplinkFlags) string {
	switch {
	case f.need4 && !u.addr.IsValid() && !fl.publicIP.IsValid():
		return "an IPv4 address, " + f.why4
	case f.need6 && !u.addr6.IsValid() && !fl.publicIPv6.IsValid():
		return "a global IPv6 address, " + f.why6
	}
	return ""
}

// hasNo turns what missing says into what an interface has not: "an IPv4
// address, ..." into "no IPv4 address, ...".
func hasNo(missing string) string {
	_, rest, _ := strings.Cut(missing, " ")
	return "no " + rest
}

// findUnderlay picks the node's underlay interface and its addresses in
// the families the network uses, in flannel's order: the first --iface
// (name or address, of either family) that exists, else the first
// interface whose name or address matches an --iface-regex, else the
// interface that holds --public-ip (or, without it, --public-ipv6), else
// the interface of the default route (IPv4's; IPv6's on an IPv6-only
// network). An interface chosen must have an address of each family the
// network needs; among those an --iface-regex matches, one that also has
// the IPv6 address the network wants goes first. The other family's
// address comes from the same interface (the first the kernel lists, as
// `ip addr` shows them: for IPv6 the newest first); --public-ip and
// --public-ipv6, when set, are the addresses published.
func findUnderlay(fl uplinkFlags, fam families) (underlay, error) {
	u, err := chooseUnderlay(fl, fam)
	if err != nil {
		return underlay{}, err
	}
	switch {
	case fl.publicIP.IsValid():
		u.addr = fl.publicIP
	case !fam.need4 && fam.want6:
		// An IPv6-only network publishes no IPv4 address unless told
		// (flannel's too).
		u.addr, u.prefix = netip.Addr{}, netip.Prefix{}
	}
	if fl.publicIPv6.IsValid() && u.addr6 != fl.publicIPv6 {
		// Not an address of the interface (one NATed to it, say): no
		// segment known, so no IPv6 peer is direct.
		u.addr6, u.prefix6 = fl.publicIPv6, netip.Prefix{}
		if u.iface != nil {
			if p, ok := holding(ipv6Prefixes(u.iface), fl.publicIPv6, true); ok {
				u.prefix6 = p.Masked()
			}
		}
	}
	if !fam.want6 {
		u.addr6, u.prefix6 = netip.Addr{}, netip.Prefix{}
	}
	return u, nil
}

func chooseUnderlay(fl uplinkFlags, fam families) (underlay, error) {
	all, err := net.Interfaces()
	if err != nil {
		return underlay{}, fmt.Errorf("list network interfaces: %w", err)
	}
	var errs []error
	for _, spec := range fl.ifaces {
		u, err := ifaceBySpec(all, spec)
		if err == nil {
			if m := fam.missing(u, fl); m != "" {
				err = fmt.Errorf("--iface %s: the interface %s has %s", spec, u.iface.Name, hasNo(m))
			}
		}
		if err == nil {
			return u, nil
		}
		errs = append(errs, err)
	}
	for _, expr := range fl.ifaceRegex {
		u, err := ifaceByRegex(all, expr, fl, fam)
		if err == nil {
			return u, nil
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return underlay{}, errors.Join(errs...)
	}
	for _, ip := range []netip.Addr{fl.publicIP, fl.publicIPv6} {
		if !ip.IsValid() {
			continue
		}
		// The interface that holds it exactly, else the one whose subnet
		// contains it (127.0.0.11 lives on lo's 127.0.0.0/8).
		u, ok := ifaceHolding(all, ip, true)
		if !ok {
			u, ok = ifaceHolding(all, ip, false)
		}
		if ok {
			if m := fam.missing(u, fl); m != "" {
				flag := "--public-ip"
				if ip != fl.publicIP {
					flag = "--public-ipv6"
				}
				return underlay{}, fmt.Errorf("%s %s is on %s, and %s has %s: set --iface or --iface-regex to an interface with one", flag, ip, u.iface.Name, u.iface.Name, hasNo(m))
			}
			return u, nil
		}
		if ip == fl.publicIP {
			// Not on this host (a NATed address): no interface, as before
			// the families were known.
			return underlay{}, nil
		}
	}
	v6 := !fam.need4 && fam.want6
	name, err := defaultRouteInterface(v6)
	if err != nil {
		return underlay{}, fmt.Errorf("find the default route's interface (set --iface or --public-ip): %w", err)
	}
	u, err := ifaceBySpec(all, name)
	if err != nil {
		return underlay{}, fmt.Errorf("the default route's interface: %w", err)
	}
	if m := fam.missing(u, fl); m != "" {
		return underlay{}, fmt.Errorf("the default route's interface %s has %s: set --iface or --iface-regex", name, hasNo(m))
	}
	return u, nil
}

// ifaceByRegex is the first interface whose name, or one of whose
// addresses in the network's families, expr matches, and that has the
// addresses the network needs; one that also has the IPv6 address it
// wants goes first. An address matched is the one taken in its family.
func ifaceByRegex(all []net.Interface, expr string, fl uplinkFlags, fam families) (underlay, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return underlay{}, fmt.Errorf("--iface-regex %q: %w", expr, err)
	}
	var usable []underlay
	missing := ""
	for i := range all {
		u := interfaceAddrs(&all[i])
		matched := re.MatchString(all[i].Name)
		if fam.need4 || !fam.want6 {
			if p, ok := matching(ipv4Prefixes(&all[i]), re); ok {
				u.addr, u.prefix, matched = p.Addr(), p.Masked(), true
			}
		}
		if fam.want6 {
			if p, ok := matching(ipv6Prefixes(&all[i]), re); ok {
				u.addr6, u.prefix6, matched = p.Addr(), p.Masked(), true
			}
		}
		if !matched {
			continue
		}
		if m := fam.missing(u, fl); m != "" {
			missing = cmp.Or(missing, m)
			continue
		}
		if !fam.want6 || u.addr6.IsValid() {
			return u, nil
		}
		usable = append(usable, u)
	}
	if len(usable) > 0 {
		return usable[0], nil
	}
	if missing != "" {
		return underlay{}, fmt.Errorf("--iface-regex %q matches no interface with %s", expr, missing)
	}
	return underlay{}, fmt.Errorf("--iface-regex %q matches no interface by name or address (have %s)", expr, describeInterfaces(all))
}

// matching is the first of ps whose address re matches.
func matching(ps []netip.Prefix, re *regexp.Regexp) (netip.Prefix, bool) {
	for _, p := range ps {
		if re.MatchString(p.Addr().String()) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// holding is the prefix of ps whose address is ip (exact), or that
// contains it.
func holding(ps []netip.Prefix, ip netip.Addr, exact bool) (netip.Prefix, bool) {
	for _, p := range ps {
		if (exact && p.Addr() == ip) || (!exact && p.Contains(ip)) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// interfaceAddrs is ifc with its first IPv4 and first global IPv6 address.
func interfaceAddrs(ifc *net.Interface) underlay {
	u := underlay{iface: ifc}
	if ps := ipv4Prefixes(ifc); len(ps) > 0 {
		u.addr, u.prefix = ps[0].Addr(), ps[0].Masked()
	}
	if ps := ipv6Prefixes(ifc); len(ps) > 0 {
		u.addr6, u.prefix6 = ps[0].Addr(), ps[0].Masked()
	}
	return u
}

// ifaceHolding is the interface that has ip (exact), or an address whose
// subnet contains it, with ip's family's address taken from that prefix.
func ifaceHolding(all []net.Interface, ip netip.Addr, exact bool) (underlay, bool) {
	for i := range all {
		u := interfaceAddrs(&all[i])
		if ip.Is4() {
			if p, ok := holding(ipv4Prefixes(&all[i]), ip, exact); ok {
				u.addr, u.prefix = p.Addr(), p.Masked()
				return u, true
			}
		} else if p, ok := holding(ipv6Prefixes(&all[i]), ip, exact); ok {
			u.addr6, u.prefix6 = p.Addr(), p.Masked()
			return u, true
		}
	}
	return underlay{}, false
}

// ifaceBySpec finds an interface by name or by one of its addresses (of
// either family), with its first address of each family unless the spec
// named one.
func ifaceBySpec(all []net.Interface, spec string) (underlay, error) {
	if ip, err := netip.ParseAddr(spec); err == nil {
		if u, ok := ifaceHolding(all, ip, true); ok {
			return u, nil
		}
		return underlay{}, fmt.Errorf("--iface %s: no interface has that address (have %s)", spec, describeInterfaces(all))
	}
	for i := range all {
		if all[i].Name != spec {
			continue
		}
		u := interfaceAddrs(&all[i])
		if !u.addr.IsValid() && !u.addr6.IsValid() {
			return underlay{}, fmt.Errorf("--iface %s: the interface has no IPv4 address and no global IPv6 address", spec)
		}
		return u, nil
	}
	return underlay{}, fmt.Errorf("--iface %s: no such interface (have %s)", spec, describeInterfaces(all))
}

// describeInterfaces lists the interfaces with their addresses, for an
// error saying none fits: "lo [127.0.0.1/8 ::1/128], eth0 [...]".
func describeInterfaces(all []net.Interface) string {
	out := make([]string, len(all))
	for i := range all {
		var as []string
		for _, p := range ifacePrefixes(&all[i], func(a netip.Addr) bool { return !a.IsLinkLocalUnicast() }) {
			as = append(as, p.String())
		}
		out[i] = all[i].Name + " [" + strings.Join(as, " ") + "]"
	}
	return strings.Join(out, ", ")
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
	n := backend.Node{Name: name, PublicIP: u.addr, IfacePrefix: u.prefix, PublicIPv6: u.addr6, IfacePrefix6: u.prefix6}
	if u.iface != nil {
		n.Iface, n.IfaceIndex, n.IfaceMTU = u.iface.Name, u.iface.Index, u.iface.MTU
	}
	return n
}

// ipv6Underlay checks that the backend can carry the config's IPv6 pod
// network and that the node has the IPv6 underlay address the network
// needs (findUnderlay chose it on the uplink, or a FindUplink did);
// publicIPv6, if set, is the address published. Without EnableIPv6 the
// node has none. vxlan, and wireguard Mode auto or ipv4, without one carry
// IPv6 over the IPv4 underlay.
func ipv6Underlay(n *backend.Node, cfg *netconf.Config, publicIPv6 netip.Addr, log *slog.Logger) error {
	if !cfg.EnableIPv6 {
		n.PublicIPv6, n.IfacePrefix6 = netip.Addr{}, netip.Prefix{}
		return nil
	}
	if !plan.CarriesIPv6(cfg.Backend) {
		return &netconf.FieldError{Field: "EnableIPv6", Value: "true",
			Reason: fmt.Sprintf("the %s backend carries IPv4 only in twill (IPv6 pod networks run on vxlan, host-gw or wireguard)", cfg.Backend.Type)}
	}
	if publicIPv6.IsValid() && n.PublicIPv6 != publicIPv6 {
		n.PublicIPv6, n.IfacePrefix6 = publicIPv6, netip.Prefix{}
	}
	fam := underlayFamilies(cfg)
	switch {
	case n.PublicIPv6.IsValid():
		log.Info("public IPv6 address", "iface", n.Iface, "public_ipv6", n.PublicIPv6, "prefix", n.IfacePrefix6)
	case fam.need6:
		return fmt.Errorf("the uplink %q has no global IPv6 address, %s: set --public-ipv6, or --iface or --iface-regex to an interface with one", n.Iface, fam.why6)
	case cfg.Backend.Type == netconf.TypeWireGuard:
		log.Warn("the network enables IPv6 but the uplink has no global IPv6 address; publishing none and carrying IPv6 to the peers' IPv4 endpoints", "iface", n.Iface, "mode", cfg.Backend.Mode)
	default:
		log.Warn("the network enables IPv6 but the uplink has no global IPv6 address; publishing none and carrying IPv6 over IPv4 (set --public-ipv6)", "iface", n.Iface)
	}
	return nil
}
