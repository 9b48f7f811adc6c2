package leasetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
)

// dualStackConfig is a dual-stack network with v4 and v6 subnets to lease
// (the IPv6 half runs fd00:10:244:1::/64 onwards).
func dualStackConfig(v4, v6 int) string {
	return fmt.Sprintf(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.%d.0",`+
		`"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetMin":"fd00:10:244:1::","IPv6SubnetMax":"fd00:10:244:%x::","Backend":{"Type":"alloc"}}`, v4, v6)
}

// DualStackAttrs are what a dual-stack node of the alloc backend publishes.
func DualStackAttrs(ip, ip6 string) lease.Attrs {
	a := Attrs(ip)
	a.PublicIPv6 = netip.MustParseAddr(ip6)
	return a
}

// race has racers nodes acquire leases at once and returns what each got.
func race(ctx context.Context, reg Store, racers int, req func(i int) lease.Request) ([]lease.Lease, []error) {
	var wg sync.WaitGroup
	won := make([]lease.Lease, racers)
	errs := make([]error, racers)
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			won[i], errs[i] = lease.Acquire(ctx, reg, req(i))
		})
	}
	close(start)
	wg.Wait()
	return won, errs
}

// testRaceForDualStackPairs: 50 nodes race for 16 pairs of subnets (16 of
// each family), then for 16 IPv6 subnets among 64 IPv4 ones; each time 16
// win, no subnet of either family is held twice, and the rest hear the
// network is full.
func testRaceForDualStackPairs(t *testing.T, reg Store) {
	ctx := Context(t)
	for round, sizes := range [][2]int{{16, 16}, {64, 16}} {
		cfg := MustConfig(t, dualStackConfig(sizes[0], sizes[1]))
		const racers = 50
		won, errs := race(ctx, reg, racers, func(i int) lease.Request {
			return lease.Request{Config: cfg, TTL: time.Minute,
				Attrs: DualStackAttrs(fmt.Sprintf("127.0.%d.%d", 3+round, i+1), fmt.Sprintf("fd00:56::%d:%d", round, i+1))}
		})
		v4, v6 := map[netip.Prefix]int{}, map[netip.Prefix]int{}
		exhausted := 0
		for i := range racers {
			var full *lease.ExhaustedError
			switch {
			case errs[i] == nil:
				l := won[i]
				if !cfg.Leasable(l.Subnet) || !cfg.IPv6().Leasable(l.IPv6Subnet) {
					t.Errorf("racer %d got %s, outside the ranges", i, l.Subnets())
				}
				if prev, dup := v4[l.Subnet]; dup {
					t.Errorf("racers %d and %d both hold %s", prev, i, l.Subnet)
				}
				if prev, dup := v6[l.IPv6Subnet]; dup {
					t.Errorf("racers %d and %d both hold %s", prev, i, l.IPv6Subnet)
				}
				v4[l.Subnet], v6[l.IPv6Subnet] = i, i
			case errors.As(errs[i], &full):
				exhausted++
			default:
				t.Errorf("racer %d: %v", i, errs[i])
			}
		}
		if len(v6) != 16 || exhausted != racers-16 {
			t.Fatalf("round %d: %d won, %d exhausted; want 16 and %d", round, len(v6), exhausted, racers-16)
		}
		leases, _, err := reg.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) != 16 {
			t.Fatalf("round %d: store holds %d leases, want 16", round, len(leases))
		}
		for _, l := range leases {
			i, ok := v6[l.IPv6Subnet]
			if !ok || v4[l.Subnet] != i || !l.Attrs.Equal(won[i].Attrs) {
				t.Errorf("store lease %s %s does not match a winner", l.Subnets(), l.Attrs.PublicIPv6)
			}
			if err := reg.Delete(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// testCreateRefusesEitherHalf: a lease is refused when another holds its
// IPv4 half or its IPv6 half, in whatever combination.
func testCreateRefusesEitherHalf(t *testing.T, reg Store) {
	ctx := Context(t)
	a4, b4 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")
	a6, b6 := netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("fd00:10:244:2::/64")
	first, err := reg.Create(ctx, lease.Subnets{V4: a4, V6: a6}, DualStackAttrs("127.0.0.41", "fd00:56::41"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if first.Subnet != a4 || first.IPv6Subnet != a6 || first.Attrs.PublicIPv6.String() != "fd00:56::41" {
		t.Errorf("created %+v", first)
	}
	for _, s := range []lease.Subnets{{V4: a4}, {V6: a6}, {V4: a4, V6: b6}, {V4: b4, V6: a6}, {V4: a4, V6: a6}} {
		if _, err := reg.Create(ctx, s, Attrs("127.0.0.42"), time.Minute); !errors.Is(err, lease.ErrExists) {
			t.Errorf("create %s beside %s: %v, want ErrExists", s, first.Subnets(), err)
		}
	}
	if _, err := reg.Create(ctx, lease.Subnets{}, Attrs("127.0.0.42"), time.Minute); err == nil || errors.Is(err, lease.ErrExists) {
		t.Errorf("create with no subnet: %v, want an error", err)
	}
	v4only, err := reg.Create(ctx, lease.Subnets{V4: b4}, Attrs("127.0.0.43"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v6only, err := reg.Create(ctx, lease.Subnets{V6: b6}, lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00:56::44"), BackendType: "alloc"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if v6only.Subnet.IsValid() || v6only.IPv6Subnet != b6 {
		t.Errorf("IPv6-only lease %+v", v6only)
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) != 3 {
		t.Fatalf("list: %v %v", leases, err)
	}
	// Listed in order, IPv6-only first; each as written.
	if leases[0].Subnets() != v6only.Subnets() || leases[1].Subnets() != first.Subnets() || leases[2].Subnets() != v4only.Subnets() ||
		!leases[0].Attrs.Equal(v6only.Attrs) || leases[1].Attrs.PublicIPv6 != first.Attrs.PublicIPv6 {
		t.Errorf("listed %v %v %v", leases[0].Subnets(), leases[1].Subnets(), leases[2].Subnets())
	}
	// Renewal and deletion address the lease by both halves.
	renewed, err := reg.Update(ctx, leases[1], leases[1].Attrs, time.Minute)
	if err != nil || renewed.Subnets() != first.Subnets() {
		t.Fatalf("renew: %+v %v", renewed, err)
	}
	if err := reg.Delete(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, lease.Subnets{V4: a4, V6: a6}, Attrs("127.0.0.42"), time.Minute); err != nil {
		t.Errorf("create after the holder left: %v", err)
	}
}

// testDualStackRestartAndPrevious: a restart keeps both halves; a node
// with a new public IP gets both previous subnets back; a node whose IPv4
// lease predates the IPv6 network keeps its IPv4 subnet and gains an IPv6
// one; a reservation holds both halves for its node only.
func testDualStackRestartAndPrevious(t *testing.T, reg Store) {
	ctx := Context(t)
	v4cfg := MustConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.8.0","Backend":{"Type":"alloc"}}`)
	cfg := MustConfig(t, dualStackConfig(8, 8))
	reserved := lease.Subnets{V4: netip.MustParsePrefix("10.244.8.0/24"), V6: netip.MustParsePrefix("fd00:10:244:8::/64")}
	if _, err := reg.Create(ctx, reserved, DualStackAttrs("127.0.0.54", "fd00:56::54"), 0); err != nil {
		t.Fatal(err)
	}

	old, err := lease.Acquire(ctx, reg, lease.Request{Config: v4cfg, Attrs: Attrs("127.0.0.51"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	up, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.51", "fd00:56::51"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if up.Subnet != old.Subnet || !cfg.IPv6().Leasable(up.IPv6Subnet) {
		t.Errorf("after the network gained IPv6: %s, want %s and an IPv6 subnet", up.Subnets(), old.Subnet)
	}
	if leases, _, _ := reg.List(ctx); len(leases) != 2 {
		t.Errorf("the IPv4-only lease lingers: %d leases", len(leases))
	}

	again, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.51", "fd00:56::51"), TTL: time.Minute})
	if err != nil || again.Subnets() != up.Subnets() || again.Revision <= up.Revision {
		t.Fatalf("restart: %s (%v), want %s renewed", again.Subnets(), err, up.Subnets())
	}
	if err := reg.Delete(ctx, again); err != nil {
		t.Fatal(err)
	}
	moved, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.52", "fd00:56::52"), TTL: time.Minute,
		Previous: up.Subnet, PreviousIPv6: up.IPv6Subnet})
	if err != nil || moved.Subnets() != up.Subnets() {
		t.Fatalf("with both previous subnets free: %s (%v), want %s", moved.Subnets(), err, up.Subnets())
	}
	other, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.53", "fd00:56::53"), TTL: time.Minute,
		Previous: up.Subnet, PreviousIPv6: up.IPv6Subnet})
	if err != nil || other.Subnets().Shares(up.Subnets()) {
		t.Fatalf("previous subnets taken, yet %s (%v) handed out", other.Subnets(), err)
	}

	for i := range 5 {
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs(fmt.Sprintf("127.0.0.%d", 60+i), fmt.Sprintf("fd00:56::%d", 60+i)),
			TTL: time.Minute, Previous: reserved.V4, PreviousIPv6: reserved.V6})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnets().Shares(reserved) {
			t.Fatalf("reserved %s handed to %s as %s", reserved, l.Attrs.PublicIP, l.Subnets())
		}
	}
	_, err = lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.70", "fd00:56::70"), TTL: time.Minute})
	var full *lease.ExhaustedError
	if !errors.As(err, &full) || full.Leased != 7 || full.Reserved != 1 {
		t.Fatalf("want exhaustion with 7 leased, 1 reserved; got %v", err)
	}
	mine, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: DualStackAttrs("127.0.0.54", "fd00:56::54"), TTL: time.Minute})
	if err != nil || mine.Subnets() != reserved || !mine.Reservation {
		t.Fatalf("owner got %s reservation %v (%v), want reservation %s", mine.Subnets(), mine.Reservation, err, reserved)
	}
}

// testIPv6Only: with IPv4 disabled a node without a public IPv4 address
// leases an IPv6 subnet alone, gets it back on restart (known by its public
// IPv6 address), and the watch and the keeper carry it.
func testIPv6Only(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/60","Backend":{"Type":"alloc"}}`)
	attrs := func(ip6 string) lease.Attrs {
		return lease.Attrs{PublicIPv6: netip.MustParseAddr(ip6), BackendType: "alloc"}
	}
	if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: Attrs("127.0.0.81"), TTL: time.Minute}); err == nil {
		t.Error("an IPv6-only network leased to a node without a public IPv6 address")
	}
	c := startWatch(t, reg)

	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: cfg, Attrs: attrs("fd00:56::81"), TTL: 2 * time.Second}, RenewMargin: time.Second}
	first, err := k.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.Subnet.IsValid() || !cfg.IPv6().Leasable(first.IPv6Subnet) || first.Attrs.PublicIP.IsValid() {
		t.Fatalf("IPv6-only lease %s %+v", first.Subnets(), first.Attrs)
	}
	kctx, kstop := context.WithCancel(ctx)
	defer kstop()
	go k.Run(kctx)
	evs := c.Wait(t, 2, 10*time.Second) // added, renewed
	if evs[0].Type != lease.Added || evs[0].Lease.IPv6Subnet != first.IPv6Subnet || evs[0].Lease.Attrs.PublicIPv6 != first.Attrs.PublicIPv6 ||
		evs[1].Type != lease.Renewed || evs[1].Lease.Subnets() != first.Subnets() {
		t.Fatalf("events %s, want added and renewed %s", Describe(evs), first.Subnets())
	}
	kstop()
	again, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("fd00:56::81"), TTL: time.Minute})
	if err != nil || again.Subnets() != first.Subnets() {
		t.Fatalf("restart: %s (%v), want %s", again.Subnets(), err, first.Subnets())
	}
	other, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("fd00:56::82"), TTL: time.Minute})
	if err != nil || other.IPv6Subnet == first.IPv6Subnet || other.Subnet.IsValid() {
		t.Fatalf("second node: %s (%v)", other.Subnets(), err)
	}
}

// testStaleLeaseBesideReservation: a node that holds an IPv4-only lease
// from before the network gained IPv6, and a dual-stack reservation, gets
// the reservation, and its old lease is released.
func testStaleLeaseBesideReservation(t *testing.T, reg Store) {
	ctx := Context(t)
	cfg := MustConfig(t, dualStackConfig(8, 8))
	a := DualStackAttrs("127.0.0.91", "fd00:56::91")
	old, err := reg.Create(ctx, lease.Subnets{V4: netip.MustParsePrefix("10.244.1.0/24")}, Attrs("127.0.0.91"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	reserved := lease.Subnets{V4: netip.MustParsePrefix("10.244.5.0/24"), V6: netip.MustParsePrefix("fd00:10:244:5::/64")}
	if _, err := reg.Create(ctx, reserved, a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Create(ctx, lease.Subnets{V4: netip.MustParsePrefix("10.244.7.0/24"), V6: netip.MustParsePrefix("fd00:10:244:7::/64")}, DualStackAttrs("127.0.0.92", "fd00:56::92"), time.Minute); err != nil {
		t.Fatal(err)
	}
	l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: a, TTL: time.Minute})
	if err != nil || l.Subnets() != reserved || !l.Reservation {
		t.Fatalf("got %s reservation %v (%v), want the reservation %s", l.Subnets(), l.Reservation, err, reserved)
	}
	for _, x := range mustList(t, reg) {
		if x.Subnets() == old.Subnets() {
			t.Errorf("the stale lease %s lingers", old.Subnets())
		}
		if x.Attrs.PublicIP.String() == "127.0.0.92" && x.Attrs.BackendType != "alloc" {
			t.Errorf("another node's lease changed: %+v", x)
		}
	}
}

func mustList(t *testing.T, reg lease.Registry) []lease.Lease {
	t.Helper()
	ls, _, err := reg.List(Context(t))
	if err != nil {
		t.Fatal(err)
	}
	return ls
}
