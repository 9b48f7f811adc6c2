//go:build linux

package nft

import (
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/twillnet/twill/overlay/namespace/nstest"
)

// kernelTable is the twill table as read back from the kernel.
type kernelTable struct {
	chains   map[string]*nftables.Chain
	rules    map[string][]*nftables.Rule
	elements map[string][]nftables.SetElement
}

func conn(t testing.TB, ns string) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(nsFD(t, ns)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readTable(t testing.TB, ns string) *kernelTable {
	t.Helper()
	return readTableOf(t, ns, ipv4)
}

func readTableOf(t testing.TB, ns string, f family) *kernelTable {
	t.Helper()
	c := conn(t, ns)
	tbl := f.table()
	kt := &kernelTable{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{}, elements: map[string][]nftables.SetElement{}}
	chains, err := c.ListChainsOfTableFamily(f.nft)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		kt.chains[ch.Name] = ch
		if kt.rules[ch.Name], err = c.GetRules(tbl, ch); err != nil {
			t.Fatalf("list rules of %s: %v", ch.Name, err)
		}
	}
	sets, err := c.GetSets(tbl)
	if err != nil {
		t.Fatalf("list sets: %v", err)
	}
	for _, s := range sets {
		if kt.elements[s.Name], err = c.GetSetElements(s); err != nil {
			t.Fatalf("list elements of %s: %v", s.Name, err)
		}
	}
	return kt
}

func ruleComments(rs []*nftables.Rule) []string {
	var out []string
	for _, r := range rs {
		c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		out = append(out, c)
	}
	return out
}

func handles(kt *kernelTable) map[string][]uint64 {
	out := map[string][]uint64{}
	for name, rs := range kt.rules {
		for _, r := range rs {
			out[name] = append(out[name], r.Handle)
		}
	}
	return out
}

func tableNames(t testing.TB, ns string) []string {
	t.Helper()
	tables, err := conn(t, ns).ListTables()
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	var out []string
	for _, tb := range tables {
		out = append(out, fmt.Sprintf("%d/%s", tb.Family, tb.Name))
	}
	slices.Sort(out)
	return out
}

func TestApplyReadBack(t *testing.T) {
	ns := nstest.New(t, "apply").Name
	tbl := New(testLog(t), InNetNS(nsFD(t, ns)))
	pp := netip.MustParsePrefix
	peers := []netip.Prefix{pp("10.244.8.0/22"), pp("10.244.3.0/24"), pp("10.244.2.0/24"), pp("10.244.255.255/32")}
	rules := Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Masquerade: true, Peers: peers}
	if err := tbl.Apply(rules); err != nil {
		t.Fatalf("apply: %v", err)
	}

	kt := readTable(t, ns)
	wantChains := map[string]struct {
		typ  nftables.ChainType
		hook nftables.ChainHook
		prio nftables.ChainPriority
	}{
		"forward":     {nftables.ChainTypeFilter, *nftables.ChainHookForward, 0},
		"input":       {nftables.ChainTypeFilter, *nftables.ChainHookInput, 0},
		"output":      {nftables.ChainTypeFilter, *nftables.ChainHookOutput, 0},
		"postrouting": {nftables.ChainTypeNAT, *nftables.ChainHookPostrouting, 100},
	}
	if got := slices.Sorted(maps.Keys(kt.chains)); !slices.Equal(got, slices.Sorted(maps.Keys(wantChains))) {
		t.Fatalf("chains = %v", got)
	}
	for name, w := range wantChains {
		ch := kt.chains[name]
		if ch.Type != w.typ || *ch.Hooknum != w.hook || *ch.Priority != w.prio {
			t.Errorf("chain %s: type %s hook %d priority %d, want %s %d %d", name, ch.Type, *ch.Hooknum, *ch.Priority, w.typ, w.hook, w.prio)
		}
	}
	wantRules := map[string][]string{
		"forward": {
			"ip daddr @peers-tx",
			"ip saddr @peers-rx",
			"ip saddr 10.244.0.0/16 accept",
			"ip daddr 10.244.0.0/16 accept",
		},
		"output": {"ip daddr @peers-tx"},
		"input":  {"ip saddr @peers-rx"},
		"postrouting": {
			"ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
			"ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
			"ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
			"ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
		},
	}
	for name, want := range wantRules {
		if got := ruleComments(kt.rules[name]); !slices.Equal(got, want) {
			t.Errorf("rules of %s:\n got %q\nwant %q", name, got, want)
		}
	}
	// The comments are ours; check the expressions the kernel holds too.
	masq := kt.rules["postrouting"][1].Exprs
	if m, ok := masq[len(masq)-1].(*expr.Masq); !ok || !m.FullyRandom {
		t.Errorf("postrouting rule 2 ends in %#v, want masquerade fully-random", masq[len(masq)-1])
	}
	if c, ok := masq[5].(*expr.Cmp); !ok || c.Op != expr.CmpOpNeq || !slices.Equal(c.Data, []byte{224, 0, 0, 0}) {
		t.Errorf("postrouting rule 2 compares %#v, want != 224.0.0.0", masq[5])
	}
	acc := kt.rules["forward"][2].Exprs
	if v, ok := acc[len(acc)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictAccept {
		t.Errorf("forward rule 3 ends in %#v, want accept", acc[len(acc)-1])
	}
	if l, ok := kt.rules["forward"][0].Exprs[1].(*expr.Lookup); !ok || l.SetName != "peers-tx" {
		t.Errorf("forward rule 1 is %#v, want a lookup in peers-tx", kt.rules["forward"][0].Exprs)
	}
	for _, set := range []string{"peers-tx", "peers-rx"} {
		got := slices.SortedFunc(maps.Keys(ipv4.intervals(kt.elements[set])), comparePrefix)
		want := slices.SortedFunc(slices.Values(peers), comparePrefix)
		if !slices.Equal(got, want) {
			t.Errorf("set %s holds %v, want %v", set, got, want)
		}
	}
	counters, err := tbl.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(counters) != len(peers) {
		t.Errorf("counters for %d peers, want %d: %v", len(counters), len(peers), counters)
	}
	for p, c := range counters {
		if c != (PeerCounters{}) {
			t.Errorf("new peer %v has counters %+v", p, c)
		}
	}

	if nft, err := exec.LookPath("nft"); err == nil {
		out, err := exec.Command("ip", "netns", "exec", ns, nft, "list", "table", "ip", "twill").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		for _, want := range []string{"masquerade fully-random", "10.244.2.0/24", "10.244.8.0/22", "@peers-tx", "counter"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("nft list table ip twill lacks %q:\n%s", want, out)
			}
		}
	}

	// Applying the same rules (in another order) changes nothing: the same
	// rule handles, the same elements.
	before := handles(kt)
	slices.Reverse(rules.Peers)
	if err := tbl.Apply(rules); err != nil {
		t.Fatalf("apply again: %v", err)
	}
	again := readTable(t, ns)
	if got := handles(again); !maps.EqualFunc(got, before, slices.Equal) {
		t.Errorf("rule handles changed on a second apply: %v, then %v", before, got)
	}

	// Without masquerade the nat chain goes; the rest stays as it was.
	rules.Masquerade = false
	if err := tbl.Apply(rules); err != nil {
		t.Fatalf("apply without masquerade: %v", err)
	}
	nomasq := readTable(t, ns)
	if _, ok := nomasq.chains["postrouting"]; ok {
		t.Error("postrouting chain still there without masquerade")
	}
	delete(before, "postrouting")
	if got := handles(nomasq); !maps.EqualFunc(got, before, slices.Equal) {
		t.Errorf("filter rules changed when masquerade went off: %v, then %v", before, got)
	}

	// A changed cluster network rewrites the forward chain.
	rules.ClusterNetwork = pp("10.240.0.0/12")
	if err := tbl.Apply(rules); err != nil {
		t.Fatalf("apply with a new network: %v", err)
	}
	if got := ruleComments(readTable(t, ns).rules["forward"]); got[2] != "ip saddr 10.240.0.0/12 accept" {
		t.Errorf("forward rules after a network change: %q", got)
	}
}

// TestPeerCountersTraffic sends real datagrams from a pod and from the node
// to a peer's pod address and checks the peer's counters saw exactly them.
func TestPeerCountersTraffic(t *testing.T) {
	c := newCluster(t)
	other := netip.MustParsePrefix("10.244.3.0/24")
	rules := Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Masquerade: true, Peers: []netip.Prefix{peerSubnet, other}}
	if err := c.table.Apply(rules); err != nil {
		t.Fatalf("apply: %v", err)
	}
	udpEcho(t, c.peer, netip.AddrPortFrom(peerPodAddr, 9000))

	const payload = 100
	const ipBytes = payload + 20 + 8 // IPv4 and UDP headers
	echo := func(ns string, n int) {
		conn := udpDial(t, ns, netip.Addr{}, netip.AddrPortFrom(peerPodAddr, 9000))
		buf := make([]byte, 2000)
		for i := range n {
			msg := fmt.Appendf(nil, "%0*d", payload, i)
			if _, err := conn.Write(msg); err != nil {
				t.Fatalf("send %d from %s: %v", i, ns, err)
			}
			conn.SetReadDeadline(timeoutIn(5))
			m, err := conn.Read(buf)
			if err != nil || string(buf[:m]) != string(msg) {
				t.Fatalf("echo %d to %s: %q, %v", i, ns, buf[:m], err)
			}
		}
	}
	const fromPod, fromNode = 20, 5
	echo(c.pod, fromPod)   // forward path: pod -> node -> peer and back
	echo(c.node, fromNode) // output and input paths: the node itself
	// Traffic to the peer's underlay address is not to its pods: not counted.
	udpEcho(t, c.peer, netip.AddrPortFrom(peerUnderlay, 9002))
	conn := udpDial(t, c.pod, netip.Addr{}, netip.AddrPortFrom(peerUnderlay, 9002))
	conn.Write([]byte("not a peer pod"))
	conn.SetReadDeadline(timeoutIn(5))
	if _, err := conn.Read(make([]byte, 100)); err != nil {
		t.Fatalf("echo from the peer's underlay address: %v", err)
	}

	counters, err := c.table.Counters()
	if err != nil {
		t.Fatal(err)
	}
	const n = fromPod + fromNode
	want := PeerCounters{Tx: Counter{n, n * ipBytes}, Rx: Counter{n, n * ipBytes}}
	if got := counters[peerSubnet]; got != want {
		t.Errorf("counters of %v = %+v, want %+v", peerSubnet, got, want)
	}
	if got := counters[other]; got != (PeerCounters{}) {
		t.Errorf("counters of %v (no traffic) = %+v, want zero", other, got)
	}

	// A reconcile that keeps the peer set keeps the counters; adding a peer
	// keeps the others' values.
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	third := netip.MustParsePrefix("10.244.4.0/24")
	rules.Peers = append(rules.Peers, third)
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	counters, err = c.table.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := counters[peerSubnet]; got != want {
		t.Errorf("after adding %v, counters of %v = %+v, want %+v", third, peerSubnet, got, want)
	}
	if _, ok := counters[third]; !ok {
		t.Errorf("no counters for added peer %v: %v", third, counters)
	}

	// More traffic keeps counting on the same counters.
	echo(c.pod, 3)
	counters, _ = c.table.Counters()
	if got := counters[peerSubnet].Tx.Packets; got != n+3 {
		t.Errorf("tx packets after 3 more = %d, want %d", got, n+3)
	}

	// A peer that leaves loses its counters; the others keep theirs. Coming
	// back it starts from zero.
	rules.Peers = []netip.Prefix{other, third}
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	counters, err = c.table.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := counters[peerSubnet]; ok {
		t.Errorf("counters of removed peer %v still there: %+v", peerSubnet, counters[peerSubnet])
	}
	if got := slices.SortedFunc(maps.Keys(counters), comparePrefix); !slices.Equal(got, []netip.Prefix{other, third}) {
		t.Errorf("peers with counters = %v, want %v %v", got, other, third)
	}
	echo(c.pod, 2) // not counted: the peer is not in the set
	rules.Peers = append(rules.Peers, peerSubnet)
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	counters, _ = c.table.Counters()
	if got := counters[peerSubnet]; got != (PeerCounters{}) {
		t.Errorf("re-added peer %v starts at %+v, want zero", peerSubnet, got)
	}
}

// TestMasquerade checks the source addresses the far side sees, with
// masquerade on and off.
func TestMasquerade(t *testing.T) {
	c := newCluster(t)
	rules := Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Masquerade: true, Peers: []netip.Prefix{peerSubnet}}
	if err := c.table.Apply(rules); err != nil {
		t.Fatalf("apply: %v", err)
	}
	peerL := udpListen(t, c.peer, 9001)
	podL := udpListen(t, c.pod, 9001)
	for _, tc := range []struct {
		name     string
		from     string
		src      netip.Addr
		to       netip.Addr
		listener func() any
		want     netip.Addr
	}{
		{"pod to outside is masqueraded", c.pod, netip.Addr{}, peerUnderlay, nil, nodeUnderlay},
		{"pod to peer pod keeps its address", c.pod, netip.Addr{}, peerPodAddr, nil, podAddr},
		{"outside to local pod keeps its address", c.peer, netip.Addr{}, podAddr, nil, peerUnderlay},
		{"host to peer pod is masqueraded", c.node, nodeOther, peerPodAddr, nil, nodeUnderlay},
	} {
		l := peerL
		if tc.to == podAddr {
			l = podL
		}
		if got := sourceSeen(t, tc.from, tc.src, netip.AddrPortFrom(tc.to, 9001), l); got != tc.want {
			t.Errorf("%s: source seen %v, want %v", tc.name, got, tc.want)
		}
	}

	rules.Masquerade = false
	if err := c.table.Apply(rules); err != nil {
		t.Fatalf("apply without masquerade: %v", err)
	}
	// A new socket is a new conntrack entry, so the NAT decision is made anew.
	if got := sourceSeen(t, c.pod, netip.Addr{}, netip.AddrPortFrom(peerUnderlay, 9001), peerL); got != podAddr {
		t.Errorf("without masquerade, pod to outside: source seen %v, want %v", got, podAddr)
	}
	if got := sourceSeen(t, c.node, nodeOther, netip.AddrPortFrom(peerPodAddr, 9001), peerL); got != nodeOther {
		t.Errorf("without masquerade, host to peer pod: source seen %v, want %v", got, nodeOther)
	}
}

func TestCleanupLeavesOtherTables(t *testing.T) {
	ns := nstest.New(t, "cleanup").Name
	// Foreign tables first: one of another name, one named twill in another family.
	c := conn(t, ns)
	for _, ft := range []*nftables.Table{
		{Name: "foreign", Family: nftables.TableFamilyIPv4},
		{Name: TableName, Family: nftables.TableFamilyINet},
	} {
		c.AddTable(ft)
		c.AddChain(&nftables.Chain{Name: "fwd", Table: ft, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("create foreign tables: %v", err)
	}
	before := tableNames(t, ns)

	tbl := New(testLog(t), InNetNS(nsFD(t, ns)))
	if err := tbl.Apply(Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Masquerade: true, Peers: []netip.Prefix{peerSubnet}}); err != nil {
		t.Fatal(err)
	}
	if got := tableNames(t, ns); len(got) != len(before)+1 {
		t.Fatalf("tables after apply: %v (before %v)", got, before)
	}
	if err := tbl.Cleanup(); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if got := tableNames(t, ns); !slices.Equal(got, before) {
		t.Errorf("tables after cleanup = %v, want %v", got, before)
	}
	fwd, err := c.ListChain(&nftables.Table{Name: "foreign", Family: nftables.TableFamilyIPv4}, "fwd")
	if err != nil || fwd == nil {
		t.Errorf("foreign chain gone after cleanup: %v", err)
	}
	if err := tbl.Cleanup(); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
	counters, err := tbl.Counters()
	if err != nil || len(counters) != 0 {
		t.Errorf("counters without a table = %v, %v; want none", counters, err)
	}
}
