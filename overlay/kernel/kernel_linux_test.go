package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// testNS is a fresh network namespace (nstest: deleted when the test ends)
// with a netlink handle into it.
type testNS struct {
	ns netns.NsHandle
	nl *netlink.Handle
}

func newNS(t testing.TB) *testNS {
	t.Helper()
	ns := nstest.New(t, "")
	return &testNS{ns: ns.Handle(), nl: ns.Netlink(t)}
}

// underlay adds eth0 (a veth whose peer eth0p stays in the namespace; the
// kernel here has no dummy devices) with addr, and the VXLAN device twill.1
// on it.
func (n *testNS) underlay(t testing.TB, addr string) {
	t.Helper()
	eth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0p"}
	must(t, n.nl.LinkAdd(eth))
	peer, err := n.nl.LinkByName("eth0p")
	must(t, err)
	must(t, n.nl.LinkSetUp(peer))
	a, err := netlink.ParseAddr(addr)
	must(t, err)
	must(t, n.nl.AddrAdd(eth, a))
	must(t, n.nl.LinkSetUp(eth))
	n.vxlan(t, "twill.1", 1450, net.HardwareAddr{0x0a, 0x58, 0, 0, 0, 0}, eth, a.IP)
}

// vxlan adds a VXLAN device (VNI 1, port 8472) on eth with the VTEP
// address local, up.
func (n *testNS) vxlan(t testing.TB, name string, mtu int, mac net.HardwareAddr, eth netlink.Link, local net.IP) *netlink.Vxlan {
	t.Helper()
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: mtu, HardwareAddr: mac},
		VxlanId:      1,
		VtepDevIndex: eth.Attrs().Index,
		SrcAddr:      local,
		Port:         8472,
	}
	must(t, n.nl.LinkAdd(vx))
	must(t, n.nl.LinkSetUp(vx))
	return vx
}

func (n *testNS) open(t testing.TB) *Handle {
	h, err := Open(n.ns, nil)
	must(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func lease1(typ string, subnet, publicIP string, n int) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(publicIP), BackendType: typ}}
	if typ == netconf.TypeVXLAN {
		l.Attrs.BackendData = plan.VXLANData(1, net.HardwareAddr{0x0a, 0x58, 0, byte(n >> 16), byte(n >> 8), byte(n)})
	}
	return l
}

// buildPlan plans a node 10.244.0.0/24 at 192.168.56.11 (or, for many peers,
// 10.128.0.0/9 on 172.16.0.0/16) with the given peers.
func buildPlan(t testing.TB, b netconf.Backend, peers ...lease.Lease) plan.Plan {
	t.Helper()
	in := plan.Input{
		Network:  netip.MustParsePrefix("10.244.0.0/16"),
		Backend:  b,
		Own:      lease1(b.Type, "10.244.0.0/24", "192.168.56.11", 0),
		Peers:    peers,
		Underlay: plan.Underlay{Device: "eth0", Prefix: netip.MustParsePrefix("192.168.56.0/24"), MTU: 1500},
	}
	if len(peers) > 200 {
		in.Network = netip.MustParsePrefix("10.128.0.0/9")
		in.Own = lease1(b.Type, "10.128.0.0/24", "172.16.0.1", 0)
		in.Underlay.Prefix = netip.MustParsePrefix("172.16.0.0/16")
	}
	p, err := plan.Build(in)
	must(t, err)
	if len(p.Problems) > 0 {
		t.Fatalf("plan has problems: %v", p.Problems)
	}
	return p
}

var vxlanBackend = netconf.Backend{Type: netconf.TypeVXLAN, VNI: 1, Port: 8472}

func vxlanPeers(n int) []lease.Lease {
	var ls []lease.Lease
	for i := 1; i <= n; i++ {
		if n > 200 {
			s := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + byte(i>>8), byte(i), 0}), 24)
			ip := netip.AddrFrom4([4]byte{172, 16, byte((i + 1) >> 8), byte(i + 1)})
			ls = append(ls, lease1(netconf.TypeVXLAN, s.String(), ip.String(), i))
			continue
		}
		ls = append(ls, lease1(netconf.TypeVXLAN, fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("192.168.56.%d", 11+i), i))
	}
	return ls
}

// assertState reads the namespace back and checks it holds p exactly.
func assertState(t *testing.T, h *Handle, p plan.Plan) State {
	t.Helper()
	s, err := h.Read(OwnedDevices(p)...)
	must(t, err)
	if d := Compare(p, s); !d.InSync() {
		t.Fatalf("kernel differs from plan: %+v", d)
	}
	return s
}

// TestApplyVXLAN: a vxlan plan lands in the kernel (routes with twill's
// protocol and onlink, permanent neighbours, FDB), reads back equal, and a
// second Apply changes nothing.
func TestApplyVXLAN(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	p := buildPlan(t, vxlanBackend, vxlanPeers(3)...)

	ch, err := h.Apply(p)
	must(t, err)
	want := Changes{RoutesAdded: 3, NeighborsAdded: 3, FDBAdded: 3}
	if ch != want {
		t.Errorf("first Apply: %v, want %v", ch, want)
	}
	s := assertState(t, h, p)
	if got, want := len(s.Routes)+len(s.Neighbors)+len(s.FDB), 9; got != want {
		t.Errorf("read back %d entries, want %d: %+v", got, want, s)
	}

	// Check the kernel's own view, independently of Read.
	vx, err := n.nl.LinkByName("twill.1")
	must(t, err)
	routes, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: vx.Attrs().Index}, netlink.RT_FILTER_OIF)
	must(t, err)
	found := 0
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "10.244.2.0/24" {
			found++
			if r.Protocol != Protocol || r.Gw.String() != "10.244.2.0" || r.Flags&int(netlink.FLAG_ONLINK) == 0 {
				t.Errorf("route to 10.244.2.0/24 = %v, want proto %d via 10.244.2.0 onlink", r, Protocol)
			}
		}
	}
	if found != 1 {
		t.Errorf("%d routes to 10.244.2.0/24 on twill.1, want 1", found)
	}
	fdb, err := n.nl.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
	must(t, err)
	var fdbText []string
	for _, f := range fdb {
		fdbText = append(fdbText, f.HardwareAddr.String()+" "+f.IP.String())
	}
	if !strings.Contains(strings.Join(fdbText, ","), "0a:58:00:00:00:02 192.168.56.13") {
		t.Errorf("fdb of twill.1 = %v, want 0a:58:00:00:00:02 -> 192.168.56.13", fdbText)
	}

	ch, err = h.Apply(p)
	must(t, err)
	if ch.Total() != 0 {
		t.Errorf("second Apply changed %v, want nothing", ch)
	}
}

// TestApplyChanges: a peer that leaves loses its entries, a peer that moves
// has its FDB entry changed in place, and nothing else is touched.
func TestApplyChanges(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	peers := vxlanPeers(3)
	_, err := h.Apply(buildPlan(t, vxlanBackend, peers...))
	must(t, err)

	moved := peers[1]
	moved.Attrs.PublicIP = netip.MustParseAddr("192.168.56.99")
	p := buildPlan(t, vxlanBackend, peers[0], moved)
	ch, err := h.Apply(p)
	must(t, err)
	want := Changes{RoutesRemoved: 1, NeighborsRemoved: 1, FDBChanged: 1, FDBRemoved: 1}
	if ch != want {
		t.Errorf("Apply: %v, want %v", ch, want)
	}
	assertState(t, h, p)

	// An empty plan removes everything twill owns.
	empty := buildPlan(t, vxlanBackend)
	ch, err = h.Apply(empty)
	must(t, err)
	if want := (Changes{RoutesRemoved: 2, NeighborsRemoved: 2, FDBRemoved: 2}); ch != want {
		t.Errorf("Apply(empty): %v, want %v", ch, want)
	}
	s := assertState(t, h, empty)
	if len(s.Routes)+len(s.Neighbors)+len(s.FDB) != 0 {
		t.Errorf("state after empty plan: %+v", s)
	}
}

// TestHostGWAndUDP: host-gw routes via the underlay device, the udp
// network route to a device (a bridge stands in for the TUN: routes do not
// care).
func TestHostGWAndUDP(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	must(t, n.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "twill0"}}))
	tun, err := n.nl.LinkByName("twill0")
	must(t, err)
	must(t, n.nl.LinkSetUp(tun))
	h := n.open(t)

	hostGW := netconf.Backend{Type: netconf.TypeHostGW}
	var peers []lease.Lease
	for _, l := range vxlanPeers(3) {
		l.Attrs.BackendType, l.Attrs.BackendData = netconf.TypeHostGW, nil
		peers = append(peers, l)
	}
	p := buildPlan(t, hostGW, peers...)
	ch, err := h.Apply(p)
	must(t, err)
	if ch.RoutesAdded != 3 {
		t.Errorf("host-gw Apply: %v, want 3 routes added", ch)
	}
	assertState(t, h, p)

	// Switching to udp replaces the three routes with one.
	for i := range peers {
		peers[i].Attrs.BackendType = netconf.TypeUDP
	}
	p = buildPlan(t, netconf.Backend{Type: netconf.TypeUDP, Port: 8285}, peers...)
	ch, err = h.Apply(p)
	must(t, err)
	if want := (Changes{RoutesAdded: 1, RoutesRemoved: 3}); ch != want {
		t.Errorf("udp Apply: %v, want %v", ch, want)
	}
	s := assertState(t, h, p)
	if len(s.Routes) != 1 || s.Routes[0].String() != "route 10.244.0.0/16 dev twill0" {
		t.Errorf("udp routes = %v", s.Routes)
	}
}

// TestMissingDevice: a plan for a device that does not exist fails with the
// device named, and applies what it can.
func TestMissingDevice(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	b := vxlanBackend
	b.DirectRouting = true
	peers := vxlanPeers(2)
	peers[1].Attrs.PublicIP = netip.MustParseAddr("10.9.9.9") // tunnelled
	p := buildPlan(t, b, peers...)
	p.Routes[1].Device, p.Neighbors[0].Device = "nosuch0", "nosuch0"
	ch, err := h.Apply(p)
	if err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("Apply with a missing device: err = %v, want it named", err)
	}
	if ch.RoutesAdded != 1 {
		t.Errorf("Apply: %v, want the direct route added", ch)
	}
}

// TestForeignRoutesLeftAlone: routes of other protocols in the cluster
// range survive Apply and the Reconciler's resyncs.
func TestForeignRoutesLeftAlone(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	eth, err := n.nl.LinkByName("eth0")
	must(t, err)
	foreign := []*netlink.Route{
		{Dst: mustCIDR("10.244.200.0/24"), Gw: net.ParseIP("192.168.56.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC},
		{Dst: mustCIDR("10.244.201.0/24"), Gw: net.ParseIP("192.168.56.201"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_BOOT},
		// Same destination as a twill route, other metric: not twill's key.
		{Dst: mustCIDR("10.244.1.0/24"), Gw: net.ParseIP("192.168.56.202"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC, Priority: 100},
	}
	for _, r := range foreign {
		must(t, n.nl.RouteAdd(r))
	}
	h := n.open(t)
	r := NewReconciler(h, ReconcilerOptions{Resync: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	p := buildPlan(t, vxlanBackend, vxlanPeers(2)...)
	r.Set(p)
	waitFor(t, 3*time.Second, "several passes", func() bool { st := r.Status(); return st.Passes >= 5 })
	r.Set(buildPlan(t, vxlanBackend)) // and a plan that removes twill's routes
	waitFor(t, 3*time.Second, "empty plan applied", func() bool { st := r.Status(); return st.InSync && len(st.Actual.Routes) == 0 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run ended with %v, want context.Canceled", err)
	}
	for _, f := range foreign {
		rs, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: f.Dst, Priority: f.Priority}, netlink.RT_FILTER_DST)
		must(t, err)
		ok := false
		for _, x := range rs {
			ok = ok || (x.Protocol == f.Protocol && x.Gw.Equal(f.Gw))
		}
		if !ok {
			t.Errorf("foreign route %s via %s proto %d is gone: %v", f.Dst, f.Gw, f.Protocol, rs)
		}
	}
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("no %s within %s", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestReconcilerRepairs: routes, neighbours and FDB entries deleted by hand
// come back through the netlink events alone (the resync is an hour away);
// a twill route replaced by a foreign one at its key is taken back at the
// next resync.
func TestReconcilerRepairs(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	r := runReconciler(t, h, time.Hour)

	p := buildPlan(t, vxlanBackend, vxlanPeers(3)...)
	r.Set(p)
	waitFor(t, 3*time.Second, "first pass in sync", func() bool { return r.Status().InSync })
	vx, err := n.nl.LinkByName("twill.1")
	must(t, err)

	// A route.
	must(t, n.nl.RouteDel(toRoute(p.Routes[1], vx)))
	if s, _ := h.Read(); len(s.Routes) != 2 {
		t.Fatalf("route not deleted: %v", s.Routes)
	}
	took := waitFor(t, 3*time.Second, "route restored", func() bool {
		s, err := h.Read()
		return err == nil && len(Compare(p, s).MissingRoutes) == 0
	})
	t.Logf("route restored after %s", took)

	// A neighbour and an FDB entry.
	must(t, n.nl.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: netlink.FAMILY_V4, IP: p.Neighbors[0].IP.AsSlice()}))
	must(t, n.nl.NeighDel(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		IP: p.FDB[2].Dst.AsSlice(), HardwareAddr: p.FDB[2].MAC}))
	took = waitFor(t, 3*time.Second, "neighbour and fdb restored", func() bool {
		s, err := h.Read(OwnedDevices(p)...)
		return err == nil && Compare(p, s).InSync()
	})
	t.Logf("neighbour and fdb restored after %s", took)
	// The pass records its status after it wrote the entries: wait for it.
	waitFor(t, time.Second, "two repairs counted in the status", func() bool { return r.Status().Repairs >= 2 })
	if st := r.Status(); st.LastError != nil {
		t.Errorf("status after repairs: last error %v", st.LastError)
	}

	// The device goes away and comes back: its routes and entries return.
	must(t, n.nl.LinkDel(vx))
	eth, err := n.nl.LinkByName("eth0")
	must(t, err)
	must(t, n.nl.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "twill.1"}, VxlanId: 1, VtepDevIndex: eth.Attrs().Index, Port: 8472}))
	vx, err = n.nl.LinkByName("twill.1")
	must(t, err)
	must(t, n.nl.LinkSetUp(vx))
	took = waitFor(t, 3*time.Second, "state restored on the new device", func() bool {
		s, err := h.Read(OwnedDevices(p)...)
		return err == nil && Compare(p, s).InSync()
	})
	t.Logf("state restored on a recreated device after %s", took)
}

// TestReconcilerResync: a change no event reports (a foreign route replacing
// twill's at its key) is undone by the periodic resync.
func TestReconcilerResync(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	r := NewReconciler(h, ReconcilerOptions{Resync: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	p := buildPlan(t, vxlanBackend, vxlanPeers(1)...)
	r.Set(p)
	waitFor(t, 3*time.Second, "first pass in sync", func() bool { return r.Status().InSync })

	eth, err := n.nl.LinkByName("eth0")
	must(t, err)
	must(t, n.nl.RouteReplace(&netlink.Route{Dst: mustCIDR("10.244.1.0/24"), Gw: net.ParseIP("192.168.56.77"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}))
	took := waitFor(t, 3*time.Second, "twill route back", func() bool {
		s, err := h.Read(OwnedDevices(p)...)
		return err == nil && Compare(p, s).InSync()
	})
	t.Logf("route taken back after %s", took)
	// The pass records its status after it wrote the route: wait for it.
	waitFor(t, time.Second, "repair counted in the status", func() bool { return r.Status().Repairs >= 1 })
}

// TestApply1000Peers: 1000 vxlan peers (3000 kernel objects) in one pass,
// then none changed, then all removed.
func TestApply1000Peers(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "172.16.0.1/16")
	h := n.open(t)
	p := buildPlan(t, vxlanBackend, vxlanPeers(1000)...)
	start := time.Now()
	ch, err := h.Apply(p)
	must(t, err)
	t.Logf("applied 1000 peers (%v) in %s", ch, time.Since(start))
	if want := (Changes{RoutesAdded: 1000, NeighborsAdded: 1000, FDBAdded: 1000}); ch != want {
		t.Errorf("Apply: %v, want %v", ch, want)
	}
	assertState(t, h, p)
	start = time.Now()
	ch, err = h.Apply(p)
	must(t, err)
	t.Logf("re-applied 1000 peers (%v) in %s", ch, time.Since(start))
	if ch.Total() != 0 {
		t.Errorf("second Apply: %v, want nothing", ch)
	}
	ch, err = h.Apply(buildPlan(t, vxlanBackend))
	must(t, err)
	if want := (Changes{RoutesRemoved: 1000, NeighborsRemoved: 1000, FDBRemoved: 1000}); ch != want {
		t.Errorf("Apply(empty): %v, want %v", ch, want)
	}
}

// BenchmarkApply1000Peers: one pass installing 1000 vxlan peers (route,
// neighbour, FDB entry each) into an empty namespace; the removal between
// passes is not timed. Also reports the idempotent re-apply.
func BenchmarkApply1000Peers(b *testing.B) {
	n := newNS(b)
	n.underlay(b, "172.16.0.1/16")
	h := n.open(b)
	p := buildPlan(b, vxlanBackend, vxlanPeers(1000)...)
	empty := buildPlan(b, vxlanBackend)
	var again time.Duration
	passes := 0
	for b.Loop() {
		if _, err := h.Apply(p); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		start := time.Now()
		if ch, err := h.Apply(p); err != nil || ch.Total() != 0 {
			b.Fatalf("re-apply: %v, %v", ch, err)
		}
		again += time.Since(start)
		passes++
		if _, err := h.Apply(empty); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(again.Milliseconds())/float64(passes), "ms/re-apply")
	b.ReportMetric(3000, "objects/op")
}

// TestIPIP: the ipip plan needs an ipip device; where the kernel has none
// the test says so and skips.
func TestIPIP(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	err := n.nl.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: plan.IPIPDevice}, Local: net.ParseIP("192.168.56.11")})
	if err != nil {
		t.Skipf("kernel has no ipip (creating %s: %v)", plan.IPIPDevice, err)
	}
	l, err := n.nl.LinkByName(plan.IPIPDevice)
	must(t, err)
	must(t, n.nl.LinkSetUp(l))
	var peers []lease.Lease
	for _, p := range vxlanPeers(2) {
		p.Attrs.BackendType, p.Attrs.BackendData = netconf.TypeIPIP, nil
		peers = append(peers, p)
	}
	h := n.open(t)
	p := buildPlan(t, netconf.Backend{Type: netconf.TypeIPIP}, peers...)
	ch, err := h.Apply(p)
	must(t, err)
	if ch.RoutesAdded != 2 {
		t.Errorf("Apply: %v, want 2 routes", ch)
	}
	assertState(t, h, p)
}

// TestRetryDump: an interrupted dump is retried, a persistent interruption
// ends in an error that says so.
func TestRetryDump(t *testing.T) {
	calls := 0
	v, err := retryDump("list things", func() (int, error) {
		calls++
		if calls < 3 {
			return 0, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if v != 42 || err != nil || calls != 3 {
		t.Errorf("retryDump = %d, %v after %d calls; want 42, nil after 3", v, err, calls)
	}
	_, err = retryDump("list things", func() (int, error) { return 1, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || !strings.Contains(err.Error(), "list things") {
		t.Errorf("persistent interruption: %v", err)
	}
}

// TestApplyFDBRemotes: peer 1's VTEP MAC points at a wrong remote, and an
// all-zero default entry has two remotes (the kernel appends remotes only to
// all-zero and multicast MACs). Diff predicts, from the tables read, that the
// MAC's remote is replaced and both default remotes deleted; Apply does just
// that, and the kernel ends up holding the plan.
func TestApplyFDBRemotes(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	h := n.open(t)
	p := buildPlan(t, vxlanBackend, vxlanPeers(1)...)
	vx, err := n.nl.LinkByName("twill.1")
	must(t, err)
	for _, f := range []struct {
		mac net.HardwareAddr
		dst string
	}{{p.FDB[0].MAC, "192.168.56.94"}, {net.HardwareAddr{0, 0, 0, 0, 0, 0}, "192.168.56.95"}, {net.HardwareAddr{0, 0, 0, 0, 0, 0}, "192.168.56.96"}} {
		must(t, n.nl.NeighAppend(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: net.ParseIP(f.dst).To4(), HardwareAddr: f.mac}))
	}
	links, err := h.links()
	must(t, err)
	tables, _, rerr := h.tables(links, OwnedDevices(p))
	must(t, rerr.join())
	if len(tables.FDB) != 3 {
		t.Fatalf("fdb read back: %v, want the three remotes made", tables.FDB)
	}
	e := Diff(p, tables)
	want := Changes{RoutesAdded: 1, NeighborsAdded: 1, FDBChanged: 1, FDBRemoved: 2}
	if e.Changes() != want {
		t.Fatalf("Diff on the kernel's tables: %v, want %v:\n%s", e.Changes(), want, e)
	}
	ch, err := h.Apply(p)
	must(t, err)
	if ch != want {
		t.Errorf("Apply: %v, want %v, as Diff predicted", ch, want)
	}
	assertState(t, h, p)
}

// TestBlackhole: bgp's plan puts a blackhole route for the own subnet (no
// device) into the kernel with twill's protocol, a second Apply changes
// nothing, and an empty plan takes it out.
func TestBlackhole(t *testing.T) {
	n := newNS(t)
	n.underlay(t, "192.168.56.11/24")
	// The pod bridge's connected route has the blackhole's destination: it
	// must stay, and win.
	bridge, err := n.nl.LinkByName("eth0p")
	must(t, err)
	a, _ := netlink.ParseAddr("10.244.0.1/24")
	must(t, n.nl.AddrAdd(bridge, a))
	h := n.open(t)
	bgp := netconf.Backend{Type: netconf.TypeBGP, Port: 179, BGP: &netconf.BGP{ASN: 64512, IPIP: netconf.IPIPNever}}
	p := buildPlan(t, bgp)
	p.Routes = append(p.Routes, plan.Route{Dst: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("192.168.56.12"), Device: "eth0"})
	ch, err := h.Apply(p)
	must(t, err)
	if ch.RoutesAdded != 2 {
		t.Errorf("Apply: %v, want 2 routes added", ch)
	}
	rs, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	must(t, err)
	var black int
	for _, r := range rs {
		if r.Type == unix.RTN_BLACKHOLE && r.Dst.String() == "10.244.0.0/24" {
			black++
		}
	}
	if black != 1 {
		t.Errorf("kernel routes %v: want one blackhole 10.244.0.0/24 proto twill", rs)
	}
	got, err := n.nl.RouteGet(net.ParseIP("10.244.0.2"))
	if err != nil || len(got) == 0 || got[0].LinkIndex != bridge.Attrs().Index {
		t.Errorf("route to 10.244.0.2 = %v, %v; want the connected route via eth0p, not the blackhole", got, err)
	}
	assertState(t, h, p)
	if ch, err := h.Apply(p); err != nil || ch != (Changes{}) {
		t.Errorf("second Apply: %v, %v; want no change", ch, err)
	}
	ch, err = h.Apply(plan.Plan{Backend: netconf.TypeBGP})
	must(t, err)
	if ch.RoutesRemoved != 2 {
		t.Errorf("empty plan: %v, want 2 routes removed", ch)
	}
}

// dualUnderlay is underlay with fd00:56::11/64 on eth0 too and the IPv6
// VXLAN device twill-v6.1 on it.
func (n *testNS) dualUnderlay(t testing.TB) (eth netlink.Link, vx6 *netlink.Vxlan) {
	t.Helper()
	n.underlay(t, "192.168.56.11/24")
	eth, err := n.nl.LinkByName("eth0")
	must(t, err)
	a6, err := netlink.ParseAddr("fd00:56::11/64")
	must(t, err)
	a6.Flags = unix.IFA_F_NODAD
	must(t, n.nl.AddrAdd(eth, a6))
	return eth, n.vxlan(t, "twill-v6.1", 1430, net.HardwareAddr{0x0a, 0x58, 0, 0, 1, 0}, eth, a6.IP)
}

// runReconciler runs a reconciler on h until the test ends.
func runReconciler(t *testing.T, h *Handle, resync time.Duration) *Reconciler {
	r := NewReconciler(h, ReconcilerOptions{Resync: resync})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// TestReconcilerRepairsIPv6: the reconciler hears of a deleted IPv6 route,
// IPv6 neighbour and IPv6 FDB remote by netlink events and puts them back.
func TestReconcilerRepairsIPv6(t *testing.T) {
	n := newNS(t)
	_, vx6 := n.dualUnderlay(t)
	h := n.open(t)
	r := runReconciler(t, h, time.Hour)

	p := dualVXLANPlan(1, 2)
	r.Set(p)
	waitFor(t, 3*time.Second, "first pass in sync", func() bool { return r.Status().InSync })
	var route6 plan.Route
	for _, rt := range p.Routes {
		if rt.Dst.Addr().Is6() {
			route6 = rt
		}
	}
	must(t, n.nl.RouteDel(toRoute(route6, vx6)))
	took := waitFor(t, 3*time.Second, "IPv6 route restored", func() bool {
		s, err := h.Read()
		return err == nil && len(Compare(p, s).MissingRoutes) == 0
	})
	t.Logf("IPv6 route restored after %s", took)
	must(t, n.nl.NeighDel(&netlink.Neigh{LinkIndex: vx6.Attrs().Index, Family: netlink.FAMILY_V6, IP: route6.Gateway.AsSlice()}))
	f := p.FDB[len(p.FDB)-1]
	must(t, n.nl.NeighDel(&netlink.Neigh{LinkIndex: vx6.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC}))
	took = waitFor(t, 3*time.Second, "IPv6 neighbour and fdb restored", func() bool {
		s, err := h.Read(OwnedDevices(p)...)
		return err == nil && Compare(p, s).InSync()
	})
	t.Logf("IPv6 neighbour and fdb remote restored after %s", took)
}

// TestApplyDualStack: a dual-stack vxlan plan (IPv4 on twill.1, IPv6 on
// twill-v6.1 over the IPv6 underlay) and IPv6 host-gw routes land in the
// kernel, read back equal, a second Apply changes nothing, and a deleted
// IPv6 neighbour and route come back.
func TestApplyDualStack(t *testing.T) {
	n := newNS(t)
	eth, vx6 := n.dualUnderlay(t)
	h := n.open(t)

	p := dualVXLANPlan(1, 2, 3)
	p.Routes = append(p.Routes, plan.Route{Dst: netip.MustParsePrefix("fd00:10:244:20::/64"), Gateway: netip.MustParseAddr("fd00:56::20"), Device: "eth0"})
	ch, err := h.Apply(p)
	must(t, err)
	if want := (Changes{RoutesAdded: 7, NeighborsAdded: 6, FDBAdded: 6}); ch != want {
		t.Errorf("first Apply: %v, want %v", ch, want)
	}
	assertState(t, h, p)

	// The kernel's own view of the IPv6 half.
	routes, err := n.nl.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: vx6.Attrs().Index}, netlink.RT_FILTER_OIF)
	must(t, err)
	var found []string
	for _, r := range routes {
		if r.Protocol == Protocol {
			found = append(found, r.Dst.String()+" via "+r.Gw.String())
		}
	}
	if want := "fd00:10:244:2::/64 via fd00:10:244:2::"; !slices.Contains(found, want) || len(found) != 3 {
		t.Errorf("twill's IPv6 routes on twill-v6.1 = %v, want 3 with %q", found, want)
	}
	neighs, err := n.nl.NeighList(vx6.Attrs().Index, unix.AF_INET6)
	must(t, err)
	var permanent []string
	for _, ne := range neighs {
		if ne.State&netlink.NUD_PERMANENT != 0 {
			permanent = append(permanent, ne.IP.String()+" "+ne.HardwareAddr.String())
		}
	}
	if want := "fd00:10:244:2:: 0a:58:00:00:00:66"; !slices.Contains(permanent, want) {
		t.Errorf("permanent IPv6 neighbours of twill-v6.1 = %v, want %q", permanent, want)
	}
	fdb, err := n.nl.NeighList(vx6.Attrs().Index, unix.AF_BRIDGE)
	must(t, err)
	var remotes []string
	for _, f := range fdb {
		remotes = append(remotes, f.HardwareAddr.String()+" "+f.IP.String())
	}
	if want := "0a:58:00:00:00:66 fd00:56::13"; !slices.Contains(remotes, want) {
		t.Errorf("fdb of twill-v6.1 = %v, want %q", remotes, want)
	}

	ch, err = h.Apply(p)
	must(t, err)
	if ch.Total() != 0 {
		t.Errorf("second Apply changed %v, want nothing", ch)
	}

	must(t, n.nl.NeighDel(&netlink.Neigh{LinkIndex: vx6.Attrs().Index, Family: netlink.FAMILY_V6, IP: net.ParseIP("fd00:10:244:2::")}))
	_, dst, _ := net.ParseCIDR("fd00:10:244:20::/64")
	must(t, n.nl.RouteDel(&netlink.Route{Dst: dst, Gw: net.ParseIP("fd00:56::20"), LinkIndex: eth.Attrs().Index, Protocol: Protocol}))
	ch, err = h.Apply(p)
	must(t, err)
	if want := (Changes{RoutesAdded: 1, NeighborsAdded: 1}); ch != want {
		t.Errorf("repair: %v, want %v", ch, want)
	}
	assertState(t, h, p)
}
