package leasetest_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

// assigned is a registry that assigns subnets (as Kubernetes does): none
// until assign is called, then that one.
type assigned struct {
	*leasetest.Registry
	mu     sync.Mutex
	subnet netip.Prefix
	err    error
	wake   chan struct{}
	claims int
}

func (a *assigned) assign(s netip.Prefix, err error) {
	a.mu.Lock()
	a.subnet, a.err = s, err
	close(a.wake)
	a.wake = make(chan struct{})
	a.mu.Unlock()
}

func (a *assigned) Claim(ctx context.Context, req lease.Request) (lease.Lease, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.claims++
	if a.err != nil {
		return lease.Lease{}, a.err
	}
	if !a.subnet.IsValid() {
		return lease.Lease{}, &lease.PendingError{Reason: "node pod cidr not assigned", Wake: a.wake}
	}
	return lease.Lease{Subnet: a.subnet, Attrs: req.Attrs, Expiration: time.Now().Add(req.TTL)}, nil
}

// A keeper on an Assigner waits while nothing is assigned, saying why, and
// takes the subnet as soon as it is assigned (woken, not by its backoff).
func TestKeeperWaitsForAssignment(t *testing.T) {
	reg := &assigned{Registry: leasetest.New(), wake: make(chan struct{})}
	defer reg.Close()
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: leasetest.MustConfig(t, `{"Network":"10.244.0.0/16"}`),
		Attrs: leasetest.Attrs("127.0.0.9"), TTL: time.Hour}}
	type result struct {
		l   lease.Lease
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := k.Acquire(leasetest.Context(t))
		got <- result{l, err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for k.Pending() == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(k.Pending(), "pod cidr not assigned") {
		t.Fatalf("while waiting, Pending() = %q", k.Pending())
	}
	time.Sleep(3 * time.Second) // the backoff grows past a second
	s := netip.MustParsePrefix("10.244.9.0/24")
	assignedAt := time.Now()
	reg.assign(s, nil)
	select {
	case r := <-got:
		if r.err != nil || r.l.Subnet != s {
			t.Fatalf("acquired %v, %v; want %s", r.l.Subnet, r.err, s)
		}
		if d := time.Since(assignedAt); d > 500*time.Millisecond {
			t.Errorf("took %v after the assignment: not woken", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("keeper did not take the assigned subnet")
	}
	if k.Pending() != "" {
		t.Errorf("after acquiring, Pending() = %q", k.Pending())
	}
}

// An error marked Permanent ends Acquire instead of being retried.
func TestKeeperReturnsPermanentError(t *testing.T) {
	reg := &assigned{Registry: leasetest.New(), wake: make(chan struct{})}
	defer reg.Close()
	bad := errors.New("pod cidr 10.99.0.0/24 outside Network 10.244.0.0/16")
	reg.assign(netip.Prefix{}, lease.Permanent(bad))
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: leasetest.MustConfig(t, `{"Network":"10.244.0.0/16"}`),
		Attrs: leasetest.Attrs("127.0.0.9"), TTL: time.Hour}}
	_, err := k.Acquire(leasetest.Context(t))
	if !errors.Is(err, bad) || !lease.IsPermanent(err) || reg.claims != 1 {
		t.Errorf("Acquire: %v after %d claims; want the permanent error after one", err, reg.claims)
	}
}
