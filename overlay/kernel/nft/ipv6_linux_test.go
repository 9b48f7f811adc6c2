//go:build linux

package nft

import (
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"
)

var (
	podAddr6      = netip.MustParseAddr("fd00:10:244:1::2")
	peerPodAddr6  = netip.MustParseAddr("fd00:10:244:2::1")
	peerUnderlay6 = netip.MustParseAddr("fd00:56::2")
	nodeUnderlay6 = netip.MustParseAddr("fd00:56::1")
	clusterNet6   = netip.MustParsePrefix("fd00:10:244::/56")
	nodeSubnet6   = netip.MustParsePrefix("fd00:10:244:1::/64")
	peerSubnet6   = netip.MustParsePrefix("fd00:10:244:2::/64")
)

// newCluster6 is newCluster's cluster with IPv6 addresses beside the IPv4
// ones: pod fd00:10:244:1::2/64, node fd00:10:244:1::1/64 and
// fd00:56::1/64 on the underlay, peer fd00:56::2/64 with its pod
// fd00:10:244:2::1/64 on lo.
func newCluster6(t *testing.T) *cluster {
	c := newCluster(t)
	ipCmd(t, "-n", c.node, "addr", "add", "fd00:10:244:1::1/64", "dev", "p0", "nodad")
	ipCmd(t, "-n", c.node, "addr", "add", "fd00:56::1/64", "dev", "u0", "nodad")
	ipCmd(t, "-n", c.node, "route", "add", "fd00:10:244:2::/64", "via", "fd00:56::2")
	ipCmd(t, "-n", c.pod, "addr", "add", "fd00:10:244:1::2/64", "dev", "eth0", "nodad")
	ipCmd(t, "-n", c.pod, "route", "add", "default", "via", "fd00:10:244:1::1")
	ipCmd(t, "-n", c.peer, "addr", "add", "fd00:56::2/64", "dev", "u0", "nodad")
	ipCmd(t, "-n", c.peer, "addr", "add", "fd00:10:244:2::1/64", "dev", "lo", "nodad")
	ipCmd(t, "-n", c.peer, "route", "add", "fd00:10:244:1::/64", "via", "fd00:56::1")
	if err := namespace.DoName(c.node, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatalf("enable IPv6 forwarding in %s: %v", c.node, err)
	}
	return c
}

// TestIPv6Table: the ip6 twill table beside the ip one: its rules are the
// ip table's with ip6 matches, its per-peer counters count IPv6 traffic,
// pod traffic to the outside is masqueraded to the node's IPv6 address
// while pod-to-pod traffic keeps its source, its tunnel guard takes IPv6
// sources, and Cleanup of one family leaves the other.
func TestIPv6Table(t *testing.T) {
	c := newCluster6(t)
	v6 := New(testLog(t), InNetNS(nsFD(t, c.node)), IPv6())
	rules6 := Rules{ClusterNetwork: clusterNet6, NodeSubnet: nodeSubnet6, Masquerade: true, Peers: []netip.Prefix{peerSubnet6},
		Tunnel: &Tunnel{Proto: ProtoUDP, Port: 8472, Sources: []netip.Addr{peerUnderlay6}}}
	if err := v6.Apply(rules6); err != nil {
		t.Fatalf("apply ip6: %v", err)
	}
	if err := c.table.Apply(Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Masquerade: true, Peers: []netip.Prefix{peerSubnet}}); err != nil {
		t.Fatalf("apply ip: %v", err)
	}

	kt := readTableOf(t, c.node, ipv6)
	want := map[string][]string{
		"forward": {"ip6 daddr @peers-tx", "ip6 saddr @peers-rx", "ip6 saddr fd00:10:244::/56 accept", "ip6 daddr fd00:10:244::/56 accept"},
		"input":   {"udp dport 8472 ip6 saddr != @tunnel-sources counter drop", "udp dport 8472 ip6 saddr @tunnel-sources", "ip6 saddr @peers-rx"},
		"postrouting": {
			"ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 return",
			"ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
			"ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return",
			"ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
		},
	}
	for name, w := range want {
		if got := ruleComments(kt.rules[name]); !slices.Equal(got, w) {
			t.Errorf("ip6 rules of %s:\n got %q\nwant %q", name, got, w)
		}
	}
	if out, err := exec.Command("ip", "netns", "exec", c.node, "nft", "list", "table", "ip6", "twill").CombinedOutput(); err != nil {
		t.Errorf("nft list table ip6 twill: %v: %s", err, out)
	} else if !strings.Contains(string(out), "fd00:10:244:2::/64") || !strings.Contains(string(out), "fd00:56::2") {
		t.Errorf("nft list table ip6 twill lacks the peer or the tunnel source:\n%s", out)
	}

	// Counters: 3 pings of 100 bytes to the peer's pod, and their replies.
	if out, err := exec.Command("ip", "netns", "exec", c.pod, "ping", "-6", "-c", "3", "-i", "0.2", "-s", "52", "-W", "2", peerPodAddr6.String()).CombinedOutput(); err != nil {
		t.Fatalf("ping -6 the peer's pod: %v: %s", err, out)
	}
	counters, err := v6.Counters()
	if err != nil {
		t.Fatal(err)
	}
	// 52 bytes of payload + 8 of ICMPv6 + 40 of IPv6 header.
	if got := counters[peerSubnet6]; got.Tx.Packets != 3 || got.Tx.Bytes != 300 || got.Rx.Packets != 3 || got.Rx.Bytes != 300 {
		t.Errorf("counters of %v = %+v, want 3 packets of 100 bytes each way", peerSubnet6, got)
	}
	if v4, err := c.table.Counters(); err != nil || v4[peerSubnet].Tx.Packets != 0 {
		t.Errorf("the ip table counted IPv6 traffic: %+v, %v", v4, err)
	}

	peerL := udpListen(t, c.peer, 9001)
	podL := udpListen(t, c.pod, 9001)
	if got := sourceSeen(t, c.pod, netip.Addr{}, netip.AddrPortFrom(peerUnderlay6, 9001), peerL); got != nodeUnderlay6 {
		t.Errorf("pod to an outside IPv6 host: source seen %v, want the node's %v (masquerade)", got, nodeUnderlay6)
	}
	if got := sourceSeen(t, c.pod, netip.Addr{}, netip.AddrPortFrom(peerPodAddr6, 9001), peerL); got != podAddr6 {
		t.Errorf("pod to peer pod over IPv6: source seen %v, want %v", got, podAddr6)
	}
	if got := sourceSeen(t, c.peer, peerUnderlay6, netip.AddrPortFrom(podAddr6, 9001), podL); got != peerUnderlay6 {
		t.Errorf("outside to local pod over IPv6: source seen %v, want %v", got, peerUnderlay6)
	}
	// IPv4 still goes through the ip table.
	if got := sourceSeen(t, c.pod, netip.Addr{}, netip.AddrPortFrom(peerUnderlay, 9001), peerL); got != nodeUnderlay {
		t.Errorf("pod to outside over IPv4: source seen %v, want %v", got, nodeUnderlay)
	}

	// Applying again sends nothing; the rule handles stay.
	before := handles(kt)
	if err := v6.Apply(rules6); err != nil {
		t.Fatal(err)
	}
	if after := handles(readTableOf(t, c.node, ipv6)); !mapsEqual(before, after) {
		t.Errorf("second Apply rewrote rules: %v -> %v", before, after)
	}

	if err := v6.Cleanup(); err != nil {
		t.Fatalf("cleanup ip6: %v", err)
	}
	if got := tableNames(t, c.node); !slices.Equal(got, []string{"2/twill"}) {
		t.Errorf("tables after the ip6 cleanup = %v, want the ip table only (2/twill)", got)
	}
}

func mapsEqual(a, b map[string][]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// TestIPv6RulesRefused: the ip6 table refuses IPv4 prefixes and IP-in-IP,
// naming what it refused.
func TestIPv6RulesRefused(t *testing.T) {
	ns := nstest.New(t, "v6bad").Name
	v6 := New(testLog(t), InNetNS(nsFD(t, ns)), IPv6())
	for _, tc := range []struct {
		rules Rules
		want  string
	}{
		{Rules{ClusterNetwork: clusterNet}, "cluster network 10.244.0.0/16: want an IPv6 prefix"},
		{Rules{ClusterNetwork: clusterNet6, Peers: []netip.Prefix{peerSubnet}}, "peer 10.244.2.0/24: want an IPv6 prefix"},
		{Rules{ClusterNetwork: clusterNet6, Tunnel: &Tunnel{Proto: ProtoIPIP}}, "IP-in-IP is IPv4 only"},
		{Rules{ClusterNetwork: clusterNet6, Tunnel: &Tunnel{Proto: ProtoUDP, Port: 8472, Sources: []netip.Addr{peerUnderlay}}}, "tunnel source 192.168.56.2: want an IPv6 address"},
	} {
		err := v6.Apply(tc.rules)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Apply(%+v) = %v, want an error with %q", tc.rules, err, tc.want)
		}
	}
	if got := tableNames(t, ns); len(got) != 0 {
		t.Errorf("refused rules left tables %v", got)
	}
}
