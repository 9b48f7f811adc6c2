package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/netconf"
)

// TestUplinkChoice: --iface (by name or by an address of either family),
// --iface-regex (over names and the addresses of the network's families),
// --public-ip/--public-ipv6 and the default route choose an interface with
// an address of each family the network needs, and take the other family's
// address from the same interface; a choice that lacks one is refused
// naming the flag, the value and what is missing. The interfaces are veths
// in a namespace of the test's: up4 with IPv4 alone, up6 with a global
// IPv6 address alone, updual with both (two IPv6 ones), upll with a
// link-local one alone; the IPv4 default route is via updual, the IPv6 one
// via up6. The kernel lists the newer IPv6 address first: fd00:56:2::14 is
// updual's first.
func TestUplinkChoice(t *testing.T) {
	ns := nstest.New(t, "uplink")
	parse := func(js string) *netconf.Config {
		c, err := netconf.Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	v4 := parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	dual := parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	dualHostGW := parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	v6only := parse(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	err := ns.Do(func() error {
		links := map[string]netlink.Link{}
		for _, l := range []struct {
			name, peer string
			addrs      []string
		}{
			{"up4", "pe4", []string{"192.168.56.11/24"}},
			{"up6", "pe6", []string{"fd00:56:1::12/64"}},
			{"updual", "pedual", []string{"192.168.57.13/24", "fd00:56:2::13/64", "fd00:56:2::14/64"}},
			{"upll", "pell", []string{"fe80::5/64"}},
		} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.name}, PeerName: l.peer}
			if err := netlink.LinkAdd(v); err != nil {
				return err
			}
			for _, a := range l.addrs {
				addr, _ := netlink.ParseAddr(a)
				addr.Flags = 0x02 // IFA_F_NODAD
				if err := netlink.AddrAdd(v, addr); err != nil {
					return err
				}
			}
			for _, name := range []string{l.name, l.peer} {
				x, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(x); err != nil {
					return err
				}
			}
			links[l.name] = v
		}
		for _, r := range []netlink.Route{
			{LinkIndex: links["updual"].Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP("192.168.57.1")},
			{LinkIndex: links["up6"].Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: net.ParseIP("fd00:56:1::1")},
		} {
			if err := netlink.RouteAdd(&r); err != nil {
				return fmt.Errorf("add route %s: %w", r.Dst, err)
			}
		}
		for _, tt := range []struct {
			what               string
			cfg                *netconf.Config
			fl                 uplinkFlags
			iface, addr, addr6 string // want; addr6 "fd00:56:2::14 fd00:56:2::/64" also wants its prefix
			err                string
		}{
			{what: "--iface IPv6-only interface, IPv6-only network", cfg: v6only, fl: uplinkFlags{ifaces: []string{"up6"}}, iface: "up6", addr6: "fd00:56:1::12 fd00:56:1::/64"},
			{what: "--iface IPv6-only interface, IPv4 network", cfg: v4, fl: uplinkFlags{ifaces: []string{"up6"}},
				err: "--iface up6: the interface up6 has no IPv4 address, which the IPv4 network 10.244.0.0/16 needs"},
			{what: "--iface IPv4-only interface, IPv6-only network", cfg: v6only, fl: uplinkFlags{ifaces: []string{"up4"}},
				err: "--iface up4: the interface up4 has no global IPv6 address, which the IPv6-only network fd00:10:244::/56 needs"},
			{what: "--iface by IPv6 address", cfg: v6only, fl: uplinkFlags{ifaces: []string{"fd00:56:1::12"}}, iface: "up6", addr6: "fd00:56:1::12"},
			{what: "--iface by the other IPv6 address, dual stack", cfg: dual, fl: uplinkFlags{ifaces: []string{"fd00:56:2::13"}}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::13 fd00:56:2::/64"},
			{what: "--iface by IPv4 address, dual stack", cfg: dual, fl: uplinkFlags{ifaces: []string{"192.168.57.13"}}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::14"},
			{what: "--iface IPv4-only, vxlan dual stack (IPv6 over IPv4)", cfg: dual, fl: uplinkFlags{ifaces: []string{"up4"}}, iface: "up4", addr: "192.168.56.11"},
			{what: "--iface IPv4-only, host-gw dual stack", cfg: dualHostGW, fl: uplinkFlags{ifaces: []string{"up4"}},
				err: "--iface up4: the interface up4 has no global IPv6 address, which EnableIPv6 on host-gw needs"},
			{what: "--iface: the first that fits", cfg: dualHostGW, fl: uplinkFlags{ifaces: []string{"up4", "nosuch0", "updual"}}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::14"},
			{what: "--iface link-local only", cfg: v6only, fl: uplinkFlags{ifaces: []string{"upll"}}, err: "--iface upll: the interface has no IPv4 address and no global IPv6 address"},
			{what: "--iface by an address no interface has", cfg: v6only, fl: uplinkFlags{ifaces: []string{"fd00:56:9::1"}}, err: "--iface fd00:56:9::1: no interface has that address (have lo ["},
			{what: "--iface dual stack on an IPv4 network", cfg: v4, fl: uplinkFlags{ifaces: []string{"updual"}}, iface: "updual", addr: "192.168.57.13"},

			{what: "--iface-regex by name, IPv6-only", cfg: v6only, fl: uplinkFlags{ifaceRegex: []string{"^up6$"}}, iface: "up6", addr6: "fd00:56:1::12"},
			{what: "--iface-regex by name, dual stack prefers both families", cfg: dual, fl: uplinkFlags{ifaceRegex: []string{"^up"}}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::14"},
			{what: "--iface-regex by name, IPv4 network takes the first", cfg: v4, fl: uplinkFlags{ifaceRegex: []string{"^up"}}, iface: "up4", addr: "192.168.56.11"},
			{what: "--iface-regex by name, IPv6-only skips IPv4-only", cfg: v6only, fl: uplinkFlags{ifaceRegex: []string{"^up"}}, iface: "up6", addr6: "fd00:56:1::12"},
			{what: "--iface-regex by IPv6 address, not the first", cfg: v6only, fl: uplinkFlags{ifaceRegex: []string{`^fd00:56:2::13$`}}, iface: "updual", addr6: "fd00:56:2::13 fd00:56:2::/64"},
			{what: "--iface-regex by IPv4 address", cfg: v4, fl: uplinkFlags{ifaceRegex: []string{`^192\.168\.56\.`}}, iface: "up4", addr: "192.168.56.11"},
			{what: "--iface-regex over IPv6 addresses on an IPv4 network", cfg: v4, fl: uplinkFlags{ifaceRegex: []string{`^fd00:56:1::12$`}},
				err: `--iface-regex "^fd00:56:1::12$" matches no interface by name or address (have lo [`},
			{what: "--iface-regex matching IPv4-only interfaces, host-gw dual stack", cfg: dualHostGW, fl: uplinkFlags{ifaceRegex: []string{"^up4"}},
				err: `--iface-regex "^up4" matches no interface with a global IPv6 address, which EnableIPv6 on host-gw needs`},
			{what: "--iface-regex matching IPv6-only interfaces, IPv4 network", cfg: v4, fl: uplinkFlags{ifaceRegex: []string{"^up6"}},
				err: `--iface-regex "^up6" matches no interface with an IPv4 address, which the IPv4 network 10.244.0.0/16 needs`},
			{what: "--iface before --iface-regex", cfg: dual, fl: uplinkFlags{ifaces: []string{"up4"}, ifaceRegex: []string{"^updual"}}, iface: "up4", addr: "192.168.56.11"},

			{what: "the IPv4 default route", cfg: v4, iface: "updual", addr: "192.168.57.13"},
			{what: "the IPv6 default route on an IPv6-only network", cfg: v6only, iface: "up6", addr6: "fd00:56:1::12"},
			{what: "the IPv4 default route, dual stack", cfg: dualHostGW, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::14"},
			{what: "--public-ipv6 alone picks its interface", cfg: v6only, fl: uplinkFlags{publicIPv6: netip.MustParseAddr("fd00:56:2::13")}, iface: "updual", addr6: "fd00:56:2::13 fd00:56:2::/64"},
			{what: "--public-ipv6 not on the interface", cfg: dual, fl: uplinkFlags{ifaces: []string{"updual"}, publicIPv6: netip.MustParseAddr("fd00:99::1")}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:99::1 invalid Prefix"},
			{what: "--public-ipv6 on the interface, not its first", cfg: dual, fl: uplinkFlags{ifaces: []string{"updual"}, publicIPv6: netip.MustParseAddr("fd00:56:2::13")}, iface: "updual", addr: "192.168.57.13", addr6: "fd00:56:2::13 fd00:56:2::/64"},
			{what: "--public-ip on an interface without the IPv6 host-gw needs", cfg: dualHostGW, fl: uplinkFlags{publicIP: netip.MustParseAddr("192.168.56.11")},
				err: "--public-ip 192.168.56.11 is on up4, and up4 has no global IPv6 address, which EnableIPv6 on host-gw needs"},
			{what: "--public-ip and --public-ipv6 stand in for the interface's", cfg: dualHostGW, fl: uplinkFlags{publicIP: netip.MustParseAddr("192.168.56.11"), publicIPv6: netip.MustParseAddr("fd00:99::1")}, iface: "up4", addr: "192.168.56.11", addr6: "fd00:99::1"},
		} {
			u, err := findUnderlay(tt.fl, underlayFamilies(tt.cfg))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("%s: %+v, %v; want an error saying %q", tt.what, u, err, tt.err)
				}
				continue
			}
			var got string
			if u.iface != nil {
				got = u.iface.Name
			}
			want6, wantPrefix6, _ := strings.Cut(tt.addr6, " ")
			switch {
			case err != nil:
				t.Errorf("%s: %v", tt.what, err)
			case got != tt.iface:
				t.Errorf("%s: interface %q, want %q", tt.what, got, tt.iface)
			case tt.addr != "" && u.addr.String() != tt.addr, tt.addr == "" && u.addr.IsValid():
				t.Errorf("%s: IPv4 address %s, want %q", tt.what, u.addr, tt.addr)
			case want6 != "" && u.addr6.String() != want6, want6 == "" && u.addr6.IsValid():
				t.Errorf("%s: IPv6 address %s, want %q", tt.what, u.addr6, want6)
			case wantPrefix6 != "" && u.prefix6.String() != wantPrefix6:
				t.Errorf("%s: IPv6 prefix %s, want %s", tt.what, u.prefix6, wantPrefix6)
			}
			if n := u.backendNode("n"); n.PublicIPv6 != u.addr6 || n.IfacePrefix6 != u.prefix6 || n.PublicIP != u.addr {
				t.Errorf("%s: node %+v from %+v", tt.what, n, u)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestIPv6UnderlayChecks: what ipv6Underlay makes of a node a FindUplink
// (or findUnderlay) described: an IPv4 network publishes no IPv6 address,
// --public-ipv6 wins over the uplink's, and a network that needs one and
// has none is refused naming the flag.
func TestIPv6UnderlayChecks(t *testing.T) {
	parse := func(js string) *netconf.Config {
		c, err := netconf.Parse([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	dual := parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`)
	v6only := parse(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`)
	v4 := parse(`{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	wgSeparate := parse(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}`)
	log := slog.New(slog.DiscardHandler)
	uplink := netip.MustParseAddr("fd00:56::11")
	for _, tt := range []struct {
		cfg      *netconf.Config
		has, flg string
		want     string
		err      string
	}{
		{cfg: dual, has: "fd00:56::11", want: "fd00:56::11"},
		{cfg: v6only, has: "fd00:56::11", want: "fd00:56::11"},
		{cfg: dual, has: "fd00:56::11", flg: "fd00:56::99", want: "fd00:56::99"},
		{cfg: v4, has: "fd00:56::11", want: "invalid IP"},
		{cfg: dual, want: "invalid IP"},
		{cfg: v6only, err: `the uplink "up0" has no global IPv6 address, which the IPv6-only network fd00:10:244::/56 needs (EnableIPv4 false): set --public-ipv6`},
		{cfg: wgSeparate, err: "which EnableIPv6 on wireguard Mode separate needs"},
	} {
		n := backend.Node{Iface: "up0"}
		if tt.has != "" {
			n.PublicIPv6 = uplink
		}
		var flag netip.Addr
		if tt.flg != "" {
			flag = netip.MustParseAddr(tt.flg)
		}
		err := ipv6Underlay(&n, tt.cfg, flag, log)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%+v: %v, want an error saying %q", tt, err, tt.err)
		case tt.err == "" && (err != nil || n.PublicIPv6.String() != tt.want):
			t.Errorf("%+v: %s, %v; want %s", tt, n.PublicIPv6, err, tt.want)
		}
	}
}

func TestDefaultRouteFiles(t *testing.T) {
	v4 := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth1\t00000000\t0138A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n" +
		"eth0\t00000000\t0138A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n" +
		"eth0\t0038A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
	if got, err := defaultRoute4(strings.NewReader(v4)); err != nil || got != "eth0" {
		t.Errorf("IPv4 default route: %q, %v; want eth0, the lower metric", got, err)
	}
	if _, err := defaultRoute4(strings.NewReader(v4[:strings.Index(v4, "eth1")])); err == nil {
		t.Error("no IPv4 default route, yet one found")
	}
	v6 := "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth1\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000100 00000003 00000000 00000003     eth2\n" +
		"00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000010 00000003 00000000 00000201     eth3\n"
	if got, err := defaultRoute6(strings.NewReader(v6)); err != nil || got != "eth2" {
		t.Errorf("IPv6 default route: %q, %v; want eth2 (lowest metric; not lo, not the unreachable eth3)", got, err)
	}
	if _, err := defaultRoute6(strings.NewReader(strings.SplitAfterN(v6, "\n", 2)[0])); err == nil {
		t.Error("no IPv6 default route, yet one found")
	}
}
