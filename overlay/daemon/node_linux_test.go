package daemon

import (
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

// TestPublicIPv6FromTheUplink: with IPv6 enabled and no --public-ipv6, the
// node publishes the uplink's global IPv6 address (never a link-local one,
// nor another interface's); --public-ipv6 wins; an IPv4 network publishes
// none. The uplink is a veth in a namespace of the test's.
func TestPublicIPv6FromTheUplink(t *testing.T) {
	ns := nstest.New(t, "uplink")
	dual, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	v6only, err := netconf.Parse([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	v4, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		for name, addrs := range map[string][]string{"up0": {"fe80::1/64", "192.168.56.11/24", "fd00:56::11/64"}, "other0": {"fd00:57::11/64"}, "bare0": {"192.168.57.11/24", "fe80::2/64"}} {
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(l); err != nil {
				return err
			}
			for _, a := range addrs {
				addr, _ := netlink.ParseAddr(a)
				addr.Flags = 0x02 // IFA_F_NODAD
				if err := netlink.AddrAdd(l, addr); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		d := &Daemon{log: slog.New(slog.DiscardHandler)}
		for _, tt := range []struct {
			iface string
			cfg   *netconf.Config
			flag  string
			want  string
			err   string
		}{
			{"up0", dual, "", "fd00:56::11", ""},
			{"up0", v6only, "", "fd00:56::11", ""},
			{"up0", dual, "fd00:56::99", "fd00:56::99", ""},
			{"up0", v4, "", "invalid IP", ""},
			{"bare0", dual, "", "invalid IP", ""},
			{"bare0", v6only, "", "", "has no global IPv6 address: set --public-ipv6"},
		} {
			d.cfg.PublicIPv6 = netip.Addr{}
			if tt.flag != "" {
				d.cfg.PublicIPv6 = netip.MustParseAddr(tt.flag)
			}
			got, err := d.publicIPv6(backend.Node{Iface: tt.iface}, tt.cfg)
			switch {
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("%s: %v, want an error saying %q", tt.iface, err, tt.err)
			case tt.err == "" && (err != nil || got.String() != tt.want):
				t.Errorf("%s (flag %q): %s, %v; want %s", tt.iface, tt.flag, got, err, tt.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
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

// TestIPv6OnlyUplink: on a host with IPv6 alone (no IPv4 address, an IPv6
// default route), the uplink is found by the default route, by --iface and
// by its address (TestIPv4NetworkNeedsAnIPv4Uplink: an IPv4 network
// refuses it once the config is read).
func TestIPv6OnlyUplink(t *testing.T) {
	ns := nstest.New(t, "v6up")
	err := ns.Do(func() error {
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v6up0"}, PeerName: "v6up0p"}
		if err := netlink.LinkAdd(l); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("fd00:56::21/64")
		addr.Flags = 0x02 // IFA_F_NODAD
		peer, err := netlink.LinkByName("v6up0p")
		if err != nil {
			return err
		}
		for _, x := range []netlink.Link{l, peer} {
			if err := netlink.LinkSetUp(x); err != nil {
				return err
			}
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		gw := net.ParseIP("fd00:56::1")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: gw}); err != nil {
			return err
		}
		for _, tt := range []struct {
			ifaces []string
			what   string
		}{{nil, "the default route"}, {[]string{"v6up0"}, "--iface by name"}, {[]string{"fd00:56::21"}, "--iface by address"}} {
			u, err := findUnderlay(netip.Addr{}, tt.ifaces, nil)
			if err != nil || u.iface == nil || u.iface.Name != "v6up0" || u.addr.IsValid() {
				t.Errorf("%s: %+v, %v; want v6up0 without an IPv4 address", tt.what, u, err)
			}
		}
		// A dual-stack interface found by its IPv6 address gives its IPv4 one.
		v4, _ := netlink.ParseAddr("192.168.56.21/24")
		if err := netlink.AddrAdd(l, v4); err != nil {
			return err
		}
		if u, err := findUnderlay(netip.Addr{}, []string{"fd00:56::21"}, nil); err != nil || u.addr.String() != "192.168.56.21" {
			t.Errorf("dual-stack --iface by IPv6 address: %+v, %v; want its IPv4 address", u, err)
		}
		if _, err := findUnderlay(netip.Addr{}, []string{"v6up0p"}, nil); err == nil || !strings.Contains(err.Error(), "no IPv4 address and no global IPv6 address") {
			t.Errorf("an interface with a link-local address only: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
