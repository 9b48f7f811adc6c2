package nft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestRulesNormalized(t *testing.T) {
	pp := netip.MustParsePrefix
	r, err := Rules{
		ClusterNetwork: pp("10.244.7.7/16"),
		NodeSubnet:     pp("10.244.1.9/24"),
		Masquerade:     true,
		Peers:          []netip.Prefix{pp("10.244.3.0/24"), pp("10.244.2.5/24"), pp("10.244.3.0/24")},
	}.normalized(false)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClusterNetwork != pp("10.244.0.0/16") || r.NodeSubnet != pp("10.244.1.0/24") {
		t.Errorf("prefixes not masked: %v %v", r.ClusterNetwork, r.NodeSubnet)
	}
	if want := []netip.Prefix{pp("10.244.2.0/24"), pp("10.244.3.0/24")}; !slices.Equal(r.Peers, want) {
		t.Errorf("peers = %v, want %v", r.Peers, want)
	}
}

func TestRulesInvalid(t *testing.T) {
	pp := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		r    Rules
		want string
	}{
		{"no network", Rules{}, "cluster network"},
		{"ipv6 network", Rules{ClusterNetwork: pp("fd00::/64")}, "cluster network"},
		{"masq without subnet", Rules{ClusterNetwork: pp("10.244.0.0/16"), Masquerade: true}, "masquerade needs"},
		{"overlapping peers", Rules{ClusterNetwork: pp("10.244.0.0/16"),
			Peers: []netip.Prefix{pp("10.244.2.0/24"), pp("10.244.2.0/23")}}, "overlap"},
		{"ipv6 peer", Rules{ClusterNetwork: pp("10.244.0.0/16"), Peers: []netip.Prefix{pp("fd00::/64")}}, "peer fd00::/64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.r.normalized(false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one that says %q", err, tc.want)
			}
		})
	}
}
