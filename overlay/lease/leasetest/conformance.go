package leasetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Store is a registry under test, with the writes outside lease.Registry
// that the behaviour tests need.
type Store interface {
	lease.Registry
	PutNetworkConfig(ctx context.Context, data []byte) error
	// Compact drops the store's history up to its current revision.
	Compact(ctx context.Context) error
}

// Conformance runs the behaviour every lease.Registry must show, each test
// on a store of its own from newStore: allocation under a race,
// compare-and-swap writes, restarts and reservations, TTL expiry, watch
// events in order and across a compaction, the keeper's renewals and
// recovery, and the network config. It takes about 10 s (TTLs of 2 s run
// out).
func Conformance(t *testing.T, newStore func(testing.TB) Store) {
	for _, tc := range []struct {
		name string
		run  func(*testing.T, Store)
	}{
		{"RaceForSixteenSubnets", testRaceForSixteenSubnets},
		{"CompareAndSwap", testCompareAndSwap},
		{"RestartGetsSameSubnet", testRestartGetsSameSubnet},
		{"ReservationNeverAllocated", testReservationNeverAllocated},
		{"ShortLeaseExpiresAndWatchersSeeIt", testShortLeaseExpires},
		{"WatchEventsInOrder", testWatchEventsInOrder},
		{"WatchResumesAcrossCompaction", testWatchResumesAcrossCompaction},
		{"KeeperRenewsAndRecovers", testKeeperRenewsAndRecovers},
		{"NetworkConfigRoundTrip", testNetworkConfigRoundTrip},
		{"RaceForDualStackPairs", testRaceForDualStackPairs},
		{"CreateRefusesEitherHalf", testCreateRefusesEitherHalf},
		{"DualStackRestartAndPrevious", testDualStackRestartAndPrevious},
		{"IPv6Only", testIPv6Only},
		{"StaleLeaseBesideReservation", testStaleLeaseBesideReservation},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore(t)) })
	}
}

// MustConfig parses a network config or fails tb.
func MustConfig(tb testing.TB, s string) *netconf.Config {
	tb.Helper()
	c, err := netconf.Parse([]byte(s))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Attrs are what a node at ip of the alloc backend publishes.
func Attrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "alloc"}
}

// Context is a context that ends with tb, or after a minute.
func Context(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func testRaceForSixteenSubnets(t *testing.T, reg Store) {
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","Backend":{"Type":"alloc"}}`)
	ctx := Context(t)

	const racers = 50
	won, errs := race(ctx, reg, racers, func(i int) lease.Request {
		return lease.Request{Config: cfg, Attrs: Attrs(fmt.Sprintf("127.0.1.%d", i+1)), TTL: time.Minute}
	})

	subnets := map[netip.Prefix]int{}
	exhausted := 0
	for i := range racers {
		var full *lease.ExhaustedError
		switch {
		case errs[i] == nil:
			if prev, dup := subnets[won[i].Subnet]; dup {
				t.Errorf("racers %d and %d both hold %s", prev, i, won[i].Subnet)
			}
			subnets[won[i].Subnet] = i
			if !cfg.Leasable(won[i].Subnet) {
				t.Errorf("racer %d got %s, outside the range", i, won[i].Subnet)
			}
		case errors.As(errs[i], &full):
			exhausted++
			if full.Network.String() != "10.244.0.0/16" || full.Subnets != 16 || full.Leased != 16 {
				t.Errorf("exhaustion error %+v, want network 10.244.0.0/16, 16 subnets, 16 leased", full)
			}
			if msg := errs[i].Error(); !strings.Contains(msg, "10.244.0.0/16") || !strings.Contains(msg, "16 leasable subnets, 16 leased") {
				t.Errorf("exhaustion message %q does not say which network and how many", msg)
			}
		default:
			t.Errorf("racer %d: %v", i, errs[i])
		}
	}
	if len(subnets) != 16 || exhausted != racers-16 {
		t.Fatalf("%d won, %d exhausted; want 16 and %d", len(subnets), exhausted, racers-16)
	}
	// The store agrees: 16 leases, each with the winner's public IP.
	leases, _, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 16 {
		t.Fatalf("store holds %d leases, want 16", len(leases))
	}
	for _, l := range leases {
		i, ok := subnets[l.Subnet]
		if !ok || l.Attrs.PublicIP != won[i].Attrs.PublicIP {
			t.Errorf("store lease %s %s does not match a winner", l.Subnet, l.Attrs.PublicIP)
		}
	}
}

// testCompareAndSwap: a write at a stale revision, or to a subnet that is
// taken or gone, fails with the error the allocation logic relies on.
func testCompareAndSwap(t *testing.T, reg Store) {
	ctx := Context(t)
	s := netip.MustParsePrefix("10.244.3.0/24")
	a, err := reg.Create(ctx, lease.Subnets{V4: s}, Attrs("127.0.0.61"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a.Subnet != s || a.Reservation || a.Revision == 0 || time.Until(a.Expiration) <= 0 {
		t.Errorf("created %+v", a)
	}
	if _, err := reg.Create(ctx, lease.Subnets{V4: s}, Attrs("127.0.0.62"), time.Minute); !errors.Is(err, lease.ErrExists) {
		t.Errorf("create of a taken subnet: %v, want ErrExists", err)
	}
	b, err := reg.Update(ctx, a, a.Attrs, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.Revision <= a.Revision {
		t.Errorf("renewal at revision %d, not after %d", b.Revision, a.Revision)
	}
	if a.Created == 0 || b.Created != a.Created {
		t.Errorf("created at revision %d, after renewal %d: want one create revision, kept", a.Created, b.Created)
	}
	if listed, _, err := reg.List(ctx); err != nil || len(listed) != 1 || listed[0].Created != a.Created {
		t.Errorf("listed %+v (%v): want the create revision %d", listed, err, a.Created)
	}
	if _, err := reg.Update(ctx, a, Attrs("127.0.0.62"), time.Minute); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("update at a stale revision: %v, want ErrLeaseLost", err)
	}
	if err := reg.Delete(ctx, a); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("delete at a stale revision: %v, want ErrLeaseLost", err)
	}
	if err := reg.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, b, b.Attrs, time.Minute); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("update of a deleted lease: %v, want ErrNotFound", err)
	}
	if err := reg.Delete(ctx, b); !errors.Is(err, lease.ErrLeaseLost) && !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("delete of a deleted lease: %v, want ErrLeaseLost or ErrNotFound", err)
	}
	if leases, _, _ := reg.List(ctx); len(leases) != 0 {
		t.Errorf("after delete the store holds %v", leases)
	}
}

func testRestartGetsSameSubnet(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	first, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.11"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs(fmt.Sprintf("127.0.2.%d", i+1)), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// A restart: same public IP, new backend data.
	a := Attrs("127.0.0.11")
	a.BackendData = json.RawMessage(`{"VtepMAC":"02:00:00:00:00:01"}`)
	again, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: a, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet {
		t.Fatalf("restart got %s, want %s", again.Subnet, first.Subnet)
	}
	if !again.Attrs.Equal(a) || again.Revision <= first.Revision {
		t.Errorf("restart did not publish the new attributes: %+v", again)
	}
	// The previous subnet from a subnet file wins when the public IP changed
	// and the subnet is still free.
	if err := reg.Delete(ctx, again); err != nil {
		t.Fatal(err)
	}
	moved, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.99"), TTL: time.Minute, Previous: first.Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Subnet != first.Subnet {
		t.Errorf("with Previous %s free, got %s", first.Subnet, moved.Subnet)
	}
	// A Previous that is taken is not stolen.
	other, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.98"), TTL: time.Minute, Previous: first.Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if other.Subnet == first.Subnet {
		t.Errorf("Previous %s was taken but handed out again", first.Subnet)
	}
}

func testReservationNeverAllocated(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","Backend":{"Type":"alloc"}}`)
	reserved := netip.MustParsePrefix("10.244.2.0/24")
	if _, err := reg.Create(ctx, lease.Subnets{V4: reserved}, Attrs("127.0.0.50"), 0); err != nil {
		t.Fatal(err)
	}
	// Three others fill the rest; the fourth finds the network full.
	for i := range 3 {
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs(fmt.Sprintf("127.0.0.%d", 60+i)), TTL: time.Minute, Previous: reserved})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet == reserved {
			t.Fatalf("reserved subnet %s handed to %s", reserved, l.Attrs.PublicIP)
		}
	}
	_, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.70"), TTL: time.Minute})
	var full *lease.ExhaustedError
	if !errors.As(err, &full) || full.Leased != 3 || full.Reserved != 1 {
		t.Fatalf("want exhaustion with 3 leased, 1 reserved; got %v", err)
	}
	// The node the reservation names gets it, and it stays a reservation.
	a := Attrs("127.0.0.50")
	a.BackendType = "vxlan"
	l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: a, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != reserved || !l.Reservation {
		t.Fatalf("owner got %+v, want reservation %s", l, reserved)
	}
	leases, _, _ := reg.List(ctx)
	for _, x := range leases {
		if x.Subnet == reserved && (!x.Reservation || x.ID != 0 || x.Attrs.BackendType != "vxlan") {
			t.Errorf("reservation after owner took it: %+v", x)
		}
	}
}

// Collector gathers the events a lease.Watcher delivers, for tests.
type Collector struct {
	mu  sync.Mutex
	evs []lease.Event
}

// Handle is the Watcher's handler.
func (c *Collector) Handle(_ context.Context, evs []lease.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, evs...)
	c.mu.Unlock()
}

// Wait returns the events once there are at least n, or fails tb after
// timeout.
func (c *Collector) Wait(tb testing.TB, n int, timeout time.Duration) []lease.Event {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		got := slices.Clone(c.evs)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("got %d events within %v, want %d: %v", len(got), timeout, n, Describe(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startWatch runs a lease.Watcher on reg until t ends, and gives it time to
// list before anything changes.
func startWatch(t *testing.T, reg Store) *Collector {
	var c Collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(Context(t))
	t.Cleanup(stop)
	go w.Run(wctx, c.Handle)
	time.Sleep(200 * time.Millisecond)
	return &c
}

// Describe writes events as "added 10.244.1.0/24 127.0.0.1; ...".
func Describe(evs []lease.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%s %s %s; ", e.Type, e.Lease.Subnets(), e.Lease.Attrs.NodeName())
	}
	return b.String()
}

func testShortLeaseExpires(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	short, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.21"), TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(short.Expiration); d <= 0 || d > 3*time.Second {
		t.Errorf("2 s lease expires in %v", d)
	}
	var c Collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.Handle)
	evs := c.Wait(t, 2, 15*time.Second)
	if evs[0].Type != lease.Added || evs[0].Lease.Subnet != short.Subnet {
		t.Fatalf("first event %s %s, want added %s", evs[0].Type, evs[0].Lease.Subnet, short.Subnet)
	}
	if evs[1].Type != lease.Expired || evs[1].Lease.Subnet != short.Subnet || evs[1].Lease.Attrs.PublicIP != short.Attrs.PublicIP {
		t.Fatalf("second event %s %s, want expired %s", evs[1].Type, evs[1].Lease.Subnet, short.Subnet)
	}
	leases, _, _ := reg.List(ctx)
	if len(leases) != 0 {
		t.Errorf("store still holds %d leases", len(leases))
	}
}

func testWatchEventsInOrder(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	c := startWatch(t, reg)

	a, _ := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.31"), TTL: time.Minute})
	a2, err := reg.Update(ctx, a, a.Attrs, time.Minute) // renewed
	if err != nil {
		t.Fatal(err)
	}
	changed := a.Attrs
	changed.BackendData = json.RawMessage(`{"x":1}`)
	a3, err := reg.Update(ctx, a2, changed, time.Minute) // changed
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, a2, changed, time.Minute); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("update at a stale revision: %v, want ErrLeaseLost", err)
	}
	if err := reg.Delete(ctx, a3); err != nil { // expired
		t.Fatal(err)
	}
	evs := c.Wait(t, 4, 10*time.Second)
	want := []lease.EventType{lease.Added, lease.Renewed, lease.Changed, lease.Expired}
	for i, e := range evs[:4] {
		if e.Type != want[i] || e.Lease.Subnet != a.Subnet {
			t.Fatalf("events %s, want added, renewed, changed, expired of %s", Describe(evs), a.Subnet)
		}
	}
	if string(evs[2].Lease.Attrs.BackendData) != `{"x":1}` {
		t.Errorf("changed event carries %s", evs[2].Lease.Attrs.BackendData)
	}
	if evs[1].Lease.Expiration.IsZero() {
		t.Errorf("renewed event has no expiration")
	}
}

func testWatchResumesAcrossCompaction(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	get := func(ip string) lease.Lease {
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs(ip), TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	stay, change, leave := get("127.0.0.41"), get("127.0.0.42"), get("127.0.0.43")

	var c Collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(wctx, c.Handle); close(done) }()
	c.Wait(t, 3, 10*time.Second)
	stop()
	<-done

	// While the watcher is away: one joins, one changes, one leaves, one renews;
	// then the store compacts the history the watcher would need.
	join := get("127.0.0.44")
	ch := change.Attrs
	ch.BackendData = json.RawMessage(`{"VtepMAC":"02:00:00:00:00:42"}`)
	if _, err := reg.Update(ctx, change, ch, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, leave); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, stay, stay.Attrs, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := reg.Compact(ctx); err != nil {
		t.Fatal(err)
	}

	wctx, stop = context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.Handle)
	evs := c.Wait(t, 7, 10*time.Second)[3:]
	got := Describe(evs)
	want := fmt.Sprintf("expired %s 127.0.0.43; ", leave.Subnet)
	if !strings.HasPrefix(got, want) {
		t.Fatalf("after compaction: %s; want first %s", got, want)
	}
	for _, w := range []string{
		fmt.Sprintf("added %s 127.0.0.44", join.Subnet),
		fmt.Sprintf("changed %s 127.0.0.42", change.Subnet),
		fmt.Sprintf("renewed %s 127.0.0.41", stay.Subnet),
	} {
		if !strings.Contains(got, w) {
			t.Errorf("after compaction: %s; missing %q", got, w)
		}
	}
	// And the watch goes on live after the resync.
	late := get("127.0.0.45")
	evs = c.Wait(t, 8, 10*time.Second)
	if e := evs[7]; e.Type != lease.Added || e.Lease.Subnet != late.Subnet {
		t.Errorf("after resync: %s, want added %s", Describe(evs[7:]), late.Subnet)
	}
	if n := len(w.Leases()); n != 4 {
		t.Errorf("watcher knows %d leases, want 4", n)
	}
}

func testKeeperRenewsAndRecovers(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	changes := make(chan lease.Lease, 1)
	k := &lease.Keeper{
		Registry:    reg,
		Request:     lease.Request{Config: cfg, Attrs: Attrs("127.0.0.51"), TTL: 2 * time.Second},
		RenewMargin: 1 * time.Second,
		OnChange:    func(_, l lease.Lease) { changes <- l },
	}
	first, err := k.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Created() {
		t.Error("a first lease does not count as created by the keeper")
	}
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	go k.Run(kctx)

	// Outlive the TTL twice over: the keeper must have renewed it.
	time.Sleep(4500 * time.Millisecond)
	leases, _, _ := reg.List(ctx)
	if len(leases) != 1 || leases[0].Subnet != first.Subnet || leases[0].Revision == first.Revision {
		t.Fatalf("after 4.5 s with a 2 s TTL: %+v, want %s renewed", leases, first.Subnet)
	}
	// Someone deletes the lease: the keeper gets it back, the same subnet.
	if err := reg.Delete(ctx, leases[0]); err != nil {
		t.Fatal(err)
	}
	k.Check()
	select {
	case l := <-changes:
		if l.Subnet != first.Subnet {
			t.Errorf("reacquired %s, want %s", l.Subnet, first.Subnet)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("keeper did not reacquire a deleted lease")
	}
	stop()
	// A second keeper for the same node (a restart) takes the lease over.
	k2 := &lease.Keeper{Registry: reg, Request: k.Request}
	if l, err := k2.Acquire(ctx); err != nil || l.Subnet != first.Subnet {
		t.Fatalf("restarted keeper got %v, %v; want %s", l.Subnet, err, first.Subnet)
	}
	if k2.Created() {
		t.Error("a lease taken over from the node's earlier run counts as created")
	}
	if err := k2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if leases, _, _ := reg.List(ctx); len(leases) != 0 {
		t.Errorf("after release the store holds %v", leases)
	}
}

func testNetworkConfigRoundTrip(t *testing.T, reg Store) {
	ctx := Context(t)
	if _, err := reg.NetworkConfig(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("empty store: %v, want ErrNoConfig", err)
	}
	in := `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	if err := reg.PutNetworkConfig(ctx, []byte(in)); err != nil {
		t.Fatal(err)
	}
	got, err := reg.NetworkConfig(ctx)
	if err != nil || string(got) != in {
		t.Fatalf("got %q, %v", got, err)
	}
}
