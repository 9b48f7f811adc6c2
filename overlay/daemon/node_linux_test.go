package daemon

import (
	"log/slog"
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
