package leasetest_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

func TestConformance(t *testing.T) {
	leasetest.Conformance(t, func(tb testing.TB) leasetest.Store {
		r := leasetest.New()
		tb.Cleanup(func() { r.Close() })
		return r
	})
}

func TestExpireAndFail(t *testing.T) {
	r := leasetest.New()
	defer r.Close()
	ctx := context.Background()
	s := netip.MustParsePrefix("10.244.5.0/24")
	a := lease.Attrs{PublicIP: netip.MustParseAddr("127.0.0.5"), BackendType: "alloc"}
	l, err := r.Create(ctx, lease.Subnets{V4: s}, a, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var c leasetest.Collector
	w := &lease.Watcher{Registry: r}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.Handle)
	c.Wait(t, 1, 5*time.Second)
	if !r.Expire(s) || r.Expire(s) {
		t.Fatal("Expire: want true once, then false")
	}
	if evs := c.Wait(t, 2, 5*time.Second); evs[1].Type != lease.Expired || evs[1].Lease.Subnet != s {
		t.Errorf("after Expire: %s", leasetest.Describe(evs))
	}
	if _, err := r.Update(ctx, l, a, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("renew of an expired lease: %v, want ErrNotFound", err)
	}

	down := errors.New("connection refused")
	r.Fail(down)
	if _, _, err := r.List(ctx); !errors.Is(err, down) {
		t.Errorf("List while failing: %v", err)
	}
	if _, err := r.Create(ctx, lease.Subnets{V4: s}, a, time.Hour); !errors.Is(err, down) {
		t.Errorf("Create while failing: %v", err)
	}
	r.Fail(nil)
	if _, err := r.Create(ctx, lease.Subnets{V4: s}, a, time.Hour); err != nil {
		t.Fatal(err)
	}
	// The watcher goes on after the outage and sees the new lease.
	if evs := c.Wait(t, 3, 10*time.Second); evs[2].Type != lease.Added || evs[2].Lease.Subnet != s {
		t.Errorf("after the store came back: %s", leasetest.Describe(evs))
	}
}
