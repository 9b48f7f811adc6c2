package daemon_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/daemon"
	"github.com/twillnet/twill/overlay/netconf"
)

// TestIPv6RefusedByIPv4Backends: EnableIPv6 on a backend that carries IPv4
// only (udp, ipip, bgp, macvlan) stops the node before it leases anything,
// naming the field, its value and the backend; host-gw and wireguard's Mode
// separate without an IPv6 underlay address are refused too.
func TestIPv6RefusedByIPv4Backends(t *testing.T) {
	for _, typ := range []string{"udp", "ipip", "bgp", "wireguard", "macvlan", "host-gw"} {
		t.Run(typ, func(t *testing.T) {
			reg := newRegistry(t)
			if err := reg.PutNetworkConfig(context.Background(), []byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,`+
				`"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"`+typ+`"}}`)); err != nil {
				t.Fatal(err)
			}
			n := newNode(t, reg, func(c *daemon.Config) {
				// An uplink without IPv6 (this host's own eth0 may have some).
				c.FindUplink = func() (backend.Node, error) {
					return backend.Node{PublicIP: publicIP, Iface: "twill-none0", IfaceMTU: 1500, IfacePrefix: netip.MustParsePrefix("192.168.56.0/24")}, nil
				}
			})
			n.start()
			err := n.result()
			want := "network config: EnableIPv6 = true: the " + typ + " backend carries IPv4 only"
			switch typ {
			case "host-gw":
				want = `the uplink "twill-none0" has no global IPv6 address, which EnableIPv6 on host-gw needs`
			case "wireguard":
				want = `the uplink "twill-none0" has no global IPv6 address, which EnableIPv6 on wireguard Mode separate needs`
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Run: %v, want an error with %q", err, want)
			}
			var fe *netconf.FieldError
			if typ != "host-gw" && typ != "wireguard" && (!errors.As(err, &fe) || fe.Field != "EnableIPv6") {
				t.Errorf("error %v is not a FieldError of EnableIPv6", err)
			}
			if ls := mustList(t, reg); len(ls) != 0 {
				t.Errorf("a refused node leased %v", ls)
			}
		})
	}
}
