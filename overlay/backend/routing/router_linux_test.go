package routing_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

func network(t testing.TB, backendType string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"` + backendType + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t testing.TB, r *routing.Router) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		r.Close()
	})
}

// TestStatusReportsKernelTrouble: before the lease the Router says so; a
// plan the kernel refuses (the underlay device named does not exist) shows
// as a problem and not in sync, and is repaired once it is possible.
func TestStatusReportsKernelTrouble(t *testing.T) {
	lab := backendtest.New(t, "routing", 1)
	n := lab.Nodes[0]
	node := n.BackendNode(network(t, netconf.TypeHostGW))
	node.Iface = "eth9"
	r, err := routing.New(routing.Config{Node: node, Backend: node.Network.Backend})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	if st := r.Status(); st.InSync || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "no lease") {
		t.Errorf("before the lease: %+v", st)
	}
	peer := lease.Lease{Subnet: netip.MustParsePrefix("10.244.2.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.12"), BackendType: netconf.TypeHostGW}}
	if err := r.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: peer}}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetLease(context.Background(), n.Lease(netconf.TypeHostGW, nil)); err != nil {
		t.Fatal(err)
	}
	backendtest.Eventually(t, 10*time.Second, func() string {
		st := r.Status()
		if st.InSync || !strings.Contains(strings.Join(st.Problems, "\n"), "no device eth9") {
			return fmt.Sprintf("want the missing device reported: %+v", st)
		}
		return ""
	})
	// The device appears (renamed into place); the next pass routes the peer.
	n.IP(t, "link", "set", "eth0", "down")
	n.IP(t, "link", "set", "eth0", "name", "eth9")
	n.IP(t, "link", "set", "eth9", "up")
	backendtest.Eventually(t, 10*time.Second, func() string {
		if st := r.Status(); !st.InSync || len(st.Problems) != 0 || len(st.Peers) != 1 {
			return fmt.Sprintf("not repaired: %+v", st)
		}
		return ""
	})
	if got := n.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "via 192.168.56.12 dev eth9") {
		t.Errorf("route: %q", got)
	}
}

// BenchmarkStatus measures Status with 1000 vxlan peers: one nftables
// counter dump per direction, whatever the number of peers.
func BenchmarkStatus(b *testing.B) {
	lab := backendtest.New(b, "routing", 1)
	n := lab.Nodes[0]
	cfg, err := netconf.Parse([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		b.Fatal(err)
	}
	node := n.BackendNode(cfg)
	n.IP(b, "link", "add", "twill.1", "type", "vxlan", "id", "1", "local", n.PublicIP.String(), "dev", "eth0", "dstport", "8472", "nolearning")
	n.IP(b, "link", "set", "twill.1", "up")
	r, err := routing.New(routing.Config{Node: node, Backend: cfg.Backend, Device: plan.VXLANDevice(1)})
	if err != nil {
		b.Fatal(err)
	}
	run(b, r)
	const peers = 1000
	var evs []lease.Event
	for i := range peers {
		mac := net.HardwareAddr{0x0a, 0x58, 0, 0, byte(i >> 8), byte(i)}
		evs = append(evs, lease.Event{Type: lease.Added, Lease: lease.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100 + byte(i>>8), byte(i), 0}), 24),
			Attrs: lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}), BackendType: netconf.TypeVXLAN,
				BackendData: plan.VXLANData(1, mac)}}})
	}
	if err := r.Handle(context.Background(), evs); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := r.SetLease(context.Background(), lease.Lease{Subnet: netip.MustParsePrefix("10.1.1.0/24"),
		Attrs: lease.Attrs{PublicIP: n.PublicIP, BackendType: netconf.TypeVXLAN}}); err != nil {
		b.Fatal(err)
	}
	backendtest.Eventually(b, time.Minute, func() string {
		if st := r.Status(); !st.InSync || len(st.Peers) != peers {
			return fmt.Sprintf("%d peers, in sync %t, problems %q", len(st.Peers), st.InSync, st.Problems)
		}
		return ""
	})
	synced := time.Since(start)
	for b.Loop() {
		if st := r.Status(); len(st.Peers) != peers {
			b.Fatalf("%d peers", len(st.Peers))
		}
	}
	b.ReportMetric(float64(synced.Milliseconds()), "ms-to-sync")
}

// TestOnPlan: the plan hook gets every plan, in order, with the own lease
// and all the peers' leases, those the plan refused included; its error
// is the replan's, and the plan stands.
func TestOnPlan(t *testing.T) {
	lab := backendtest.New(t, "routing", 1)
	n := lab.Nodes[0]
	node := n.BackendNode(network(t, netconf.TypeHostGW))
	var got []routing.Planned
	fail := false
	r, err := routing.New(routing.Config{Node: node, Backend: node.Network.Backend, OnPlan: func(p routing.Planned) error {
		got = append(got, p)
		if fail {
			return fmt.Errorf("hook refused")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	ctx := context.Background()
	near := lease.Lease{Subnet: netip.MustParsePrefix("10.244.2.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.12"), BackendType: netconf.TypeHostGW}}
	far := lease.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.9.13"), BackendType: netconf.TypeHostGW}}
	if err := r.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: near}}); err != nil || len(got) != 0 {
		t.Fatalf("before the own lease: %v, %d plans", err, len(got))
	}
	own := n.Lease(netconf.TypeHostGW, nil)
	if err := r.SetLease(ctx, own); err != nil {
		t.Fatal(err)
	}
	fail = true
	if err := r.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: far}}); err == nil || !strings.Contains(err.Error(), "hook refused") {
		t.Errorf("Handle returned %v, want the hook's error", err)
	}
	if len(got) != 2 {
		t.Fatalf("%d plans, want 2", len(got))
	}
	if got[0].Own.Subnet != own.Subnet || len(got[0].Plan.Peers) != 1 || len(got[0].Peers) != 1 {
		t.Errorf("first plan: own %s, %d peers planned, %d leases", got[0].Own.Subnet, len(got[0].Plan.Peers), len(got[0].Peers))
	}
	last := got[1]
	if len(last.Plan.Peers) != 1 || len(last.Plan.Problems) != 1 || last.Peers[far.Subnet].Attrs.PublicIP != far.Attrs.PublicIP {
		t.Errorf("second plan: %d peers, problems %v, leases %v; want the far peer refused but handed over", len(last.Plan.Peers), last.Plan.Problems, last.Peers)
	}
	if p, ok := r.Plan(); !ok || len(p.Problems) != 1 {
		t.Errorf("the plan did not stand after the hook's error: %v %v", ok, p.Problems)
	}
	if st := r.Status(); len(st.Peers) != 1 || len(st.PeerProblems) != 1 {
		t.Errorf("status: %d peers, peer problems %q", len(st.Peers), st.PeerProblems)
	}
	// The leases are the hook's copy to keep.
	delete(last.Peers, near.Subnet)
	fail = false
	if err := r.Handle(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := got[2].Peers[near.Subnet]; !ok || len(got[2].Peers) != 2 {
		t.Errorf("after the hook changed its copy: leases %v", got[2].Peers)
	}
}

// TestPeerProblemsByType covers the refusals of the backends whose own
// netns tests cannot run them here (ipip, ipvlan: this kernel has neither
// device): the Router planning
// for each reports every refused lease with its subnet, public IP and
// reason, and routes or accepts the good peer.
func TestPeerProblemsByType(t *testing.T) {
	mk := func(subnet, ip, typ string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ}}
	}
	for _, tc := range []struct {
		typ, network, own string
		good              lease.Lease
		bad               map[string]lease.Lease // reason -> lease
	}{
		{netconf.TypeIPIP, `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"ipip"}}`, "10.244.1.0/24",
			mk("10.244.2.0/24", "192.168.56.12", netconf.TypeIPIP), map[string]lease.Lease{
				`backend type "vxlan"`: mk("10.244.3.0/24", "192.168.56.13", netconf.TypeVXLAN),
				"prefix length /19":    mk("10.244.96.0/19", "192.168.56.14", netconf.TypeIPIP),
				"outside the cluster":  mk("10.99.7.0/24", "192.168.56.15", netconf.TypeIPIP),
			}},
		// ipvlan in l3 mode routes its peers' slices (macvlan and ipvlan l2
		// keep no per-peer state, so they skip no peer).
		{netconf.TypeIPvlan, `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"ipvlan","Mode":"l3"}}`, "192.168.56.144/28",
			mk("192.168.56.160/28", "192.168.56.12", netconf.TypeIPvlan), map[string]lease.Lease{
				`backend type "macvlan"`: mk("192.168.56.176/28", "192.168.56.13", netconf.TypeMacvlan),
				"prefix length /27":      mk("192.168.56.192/27", "192.168.56.14", netconf.TypeIPvlan),
				"outside the cluster":    mk("10.244.7.0/28", "192.168.56.15", netconf.TypeIPvlan),
			}},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			lab := backendtest.New(t, "routing", 1)
			n := lab.Nodes[0]
			cfg, err := netconf.Parse([]byte(tc.network))
			if err != nil {
				t.Fatal(err)
			}
			node := n.BackendNode(cfg)
			r, err := routing.New(routing.Config{Node: node, Backend: node.Network.Backend})
			if err != nil {
				t.Fatal(err)
			}
			run(t, r)
			ctx := context.Background()
			own := n.Lease(tc.typ, nil)
			own.Subnet = netip.MustParsePrefix(tc.own)
			if err := r.SetLease(ctx, own); err != nil {
				t.Fatal(err)
			}
			evs := []lease.Event{{Type: lease.Added, Lease: tc.good}}
			for _, l := range tc.bad {
				evs = append(evs, lease.Event{Type: lease.Added, Lease: l})
			}
			if err := r.Handle(ctx, evs); err != nil {
				t.Fatal(err)
			}
			st := r.Status()
			if len(st.Peers) != 1 || st.Peers[0].Subnet != tc.good.Subnet {
				t.Errorf("peers %v, want only %s", st.Peers, tc.good.Subnet)
			}
			if len(st.PeerProblems) != len(tc.bad) {
				t.Errorf("peer problems %v, want %d", st.PeerProblems, len(tc.bad))
			}
			for reason, l := range tc.bad {
				i := slices.IndexFunc(st.PeerProblems, func(p plan.Problem) bool { return p.Subnet == l.Subnet })
				if i < 0 {
					t.Errorf("%s (%s) not among the peer problems %v", l.Subnet, reason, st.PeerProblems)
				} else if p := st.PeerProblems[i]; p.PublicIP != l.Attrs.PublicIP || !strings.Contains(p.Reason, reason) {
					t.Errorf("problem %v, want public IP %s and a reason with %q", p, l.Attrs.PublicIP, reason)
				}
			}
		})
	}
}

// TestWaitForPeers: the own lease alone plans nothing
// for the hook (a restarted node would drop its peers until the list
// came); the first Handle plans with the peers, and a Router never handed
// any plans without them after PeersGrace.
func TestWaitForPeers(t *testing.T) {
	lab := backendtest.New(t, "routing", 1)
	n := lab.Nodes[0]
	node := n.BackendNode(network(t, netconf.TypeHostGW))
	var mu sync.Mutex
	var got []routing.Planned
	newRouter := func() *routing.Router {
		r, err := routing.New(routing.Config{Node: node, Backend: node.Network.Backend, OnPlan: func(p routing.Planned) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, p)
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	plans := func() []routing.Planned {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	ctx := context.Background()
	own := n.Lease(netconf.TypeHostGW, nil)
	peer := lease.Lease{Subnet: netip.MustParsePrefix("10.244.2.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.12"), BackendType: netconf.TypeHostGW}}

	r := newRouter()
	run(t, r)
	if err := r.SetLease(ctx, own); err != nil {
		t.Fatal(err)
	}
	if p := plans(); len(p) != 0 {
		t.Fatalf("the own lease alone gave %d plans to the hook, want none before the peers", len(p))
	}
	if err := r.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: peer}}); err != nil {
		t.Fatal(err)
	}
	if p := plans(); len(p) != 1 || len(p[0].Plan.Peers) != 1 {
		t.Fatalf("after the first Handle: %d plans (%v), want one with the peer", len(p), p)
	}

	mu.Lock()
	got = nil
	mu.Unlock()
	alone := newRouter()
	start := time.Now()
	run(t, alone)
	if err := alone.SetLease(ctx, own); err != nil {
		t.Fatal(err)
	}
	backendtest.Eventually(t, 5*time.Second, func() string {
		if len(plans()) == 0 {
			return "no plan without peers after the grace"
		}
		return ""
	})
	if took := time.Since(start); took < routing.PeersGrace/2 {
		t.Errorf("planned without peers after %v, before the grace", took)
	}
	if p := plans(); len(p) != 1 || len(p[0].Plan.Peers) != 0 {
		t.Errorf("a Router never handed peers: %d plans %v, want one without peers", len(p), p)
	}
}
