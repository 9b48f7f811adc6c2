package etcd_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/leasetest"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// hostileDualStack is a dual-stack host-gw network of 16 IPv6 subnets.
const hostileDualStack = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/60","Backend":{"Type":"host-gw"}}`

// TestDualStackHalvesOfOthers plays writers that ignore twill's rules
// against the real (embedded) etcd: two flannel-format keys whose IPv4
// halves differ and whose IPv6 halves are one subnet, one whose IPv6 half
// is a /61 covering eight subnets, and, after twill's nodes took theirs,
// one whose IPv6 half is a twill node's. Twill's allocator hands out no
// half another key holds or overlaps (6 of the 15 leasable are free: 6
// nodes get them, the 7th is told the network is full), and the plan of every node
// routes each IPv6 subnet to one node, the older lease's, reporting the
// others naming both nodes and the subnet.
func TestDualStackHalvesOfOthers(t *testing.T) {
	reg := newRegistry(t)
	ctx := leasetest.Context(t)
	cli := reg.Client()
	g, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key, node string, n int) {
		t.Helper()
		v := fmt.Sprintf(`{"PublicIP":"192.168.56.%d","PublicIPv6":"fd00:56::%d","BackendType":"host-gw","BackendData":null,"Twill":{"Node":%q}}`, n, n, node)
		if _, err := cli.Put(ctx, reg.Prefix()+"/subnets/"+key, v, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	put("10.244.1.0-24&fd00:10:244:1::-64", "node-a", 21)
	put("10.244.2.0-24&fd00:10:244:1::-64", "node-b", 22) // node-a's IPv6 half
	put("10.244.3.0-24&fd00:10:244:8::-61", "node-c", 23) // covers :8 to :f
	hostile := []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("fd00:10:244:8::/61")}

	cfg := leasetest.MustConfig(t, hostileDualStack)
	var mine []lease.Lease
	for i := range 7 {
		attrs := leasetest.DualStackAttrs(fmt.Sprintf("192.168.56.%d", 31+i), fmt.Sprintf("fd00:56::%d", 31+i))
		attrs.BackendType = netconf.TypeHostGW
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, TTL: time.Minute, Attrs: attrs})
		if i == 6 {
			var full *lease.ExhaustedError
			if !errors.As(err, &full) || full.Network != cfg.IPv6Network {
				t.Errorf("the 7th node: %v (%v), want the IPv6 network full", l.Subnets(), err)
			}
			break
		}
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		for _, h := range hostile {
			if l.IPv6Subnet.Overlaps(h) {
				t.Errorf("twill handed out %s, which overlaps another key's %s", l.IPv6Subnet, h)
			}
		}
		for _, o := range mine {
			if o.IPv6Subnet == l.IPv6Subnet {
				t.Errorf("twill handed out %s twice", l.IPv6Subnet)
			}
		}
		mine = append(mine, l)
	}
	// Written after twill's leases: a key with a twill node's IPv6 half.
	// Its IPv4 half one no lease holds (twill's are random).
	dV4 := netip.MustParsePrefix("10.244.9.0/24")
	for n := 10; slices.ContainsFunc(mine, func(l lease.Lease) bool { return l.Subnet == dV4 }); n++ {
		dV4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n), 0}), 24)
	}
	put(lease.SubnetKey(dV4)+"&"+strings.ReplaceAll(mine[1].IPv6Subnet.String(), "/", "-"), "node-d", 24)

	leases, _, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Every twill node plans; each IPv6 subnet goes to one node at most.
	for i, own := range mine {
		p, err := plan.Build(planInput(t, cfg, own, leases))
		if err != nil {
			t.Fatal(err)
		}
		via := map[netip.Prefix][]string{}
		for _, r := range p.Routes {
			via[r.Dst] = append(via[r.Dst], r.Gateway.String())
		}
		for dst, gws := range via {
			if len(gws) > 1 {
				t.Errorf("node %d routes %s to %v", i, dst, gws)
			}
		}
		if gw := via[hostile[0]]; len(gw) != 1 || gw[0] != "fd00:56::21" {
			t.Errorf("node %d routes %s via %v, want node-a's fd00:56::21 (the older lease)", i, hostile[0], gw)
		}
		want := []string{"node node-b claims fd00:10:244:1::/64, as node node-a does in an older lease; node-a is routed, node-b is not"}
		if i == 1 {
			want = append(want, "node node-d: overlaps this node's subnet "+mine[1].IPv6Subnet.String())
		} else {
			if gw := via[mine[1].IPv6Subnet]; len(gw) != 1 || gw[0] != mine[1].Attrs.PublicIPv6.String() {
				t.Errorf("node %d routes %s via %v, want the twill node's %s", i, mine[1].IPv6Subnet, gw, mine[1].Attrs.PublicIPv6)
			}
			want = append(want, fmt.Sprintf("node node-d claims %s, as node %s does in an older lease", mine[1].IPv6Subnet, mine[1].Attrs.NodeName()))
		}
		var got []string
		for _, pr := range p.Problems {
			got = append(got, pr.String())
		}
		txt := strings.Join(got, "\n")
		for _, w := range want {
			if !strings.Contains(txt, w) {
				t.Errorf("node %d: problems\n%s\nwant one saying %q", i, txt, w)
			}
		}
		// The IPv4 halves of node-b and node-d are theirs alone: routed.
		for _, v4 := range []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), dV4} {
			if len(via[v4]) != 1 {
				t.Errorf("node %d does not route %s, a half no one else holds", i, v4)
			}
		}
	}
}

// planInput is the plan input of a host-gw node holding own, on
// 192.168.56.0/24 and fd00:56::/64.
func planInput(t *testing.T, cfg *netconf.Config, own lease.Lease, peers []lease.Lease) plan.Input {
	t.Helper()
	return plan.Input{Network: cfg.Network, Backend: cfg.Backend, Own: own, Peers: peers, SubnetLen: cfg.SubnetLen,
		Network6: cfg.IPv6Network, SubnetLen6: cfg.IPv6SubnetLen,
		Underlay: plan.Underlay{Device: "eth0", PublicIP: own.Attrs.PublicIP, Prefix: netip.MustParsePrefix("192.168.56.0/24"),
			PublicIPv6: own.Attrs.PublicIPv6, Prefix6: netip.MustParsePrefix("fd00:56::/64"), MTU: 1500}}
}
