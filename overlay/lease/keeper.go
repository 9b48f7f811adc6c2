package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Keeper holds a node's own lease: it acquires it, renews it RenewMargin
// before it expires, and acquires it again (preferring the same subnet) when
// it was lost, for instance because it expired while the store was
// unreachable. While the store is unreachable the lease it holds stays
// current: the data path goes on.
type Keeper struct {
	Registry    Registry
	Request     Request
	RenewMargin time.Duration
	Log         *slog.Logger
	// Reach is told whether the store answers; may be nil.
	Reach *Reachability
	// OnChange, if set, is called on Run's goroutine when the lease was
	// replaced by another one (a different subnet or a new acquisition).
	OnChange func(old, new Lease)

	mu      sync.Mutex
	cur     Lease
	created bool
	pending string // why Acquire waits (a *PendingError's reason), or ""
	kick    chan struct{}
}

func (k *Keeper) init() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kick == nil {
		k.kick = make(chan struct{}, 1)
	}
	if k.Log == nil {
		k.Log = slog.New(slog.DiscardHandler)
	}
	if k.Reach == nil {
		k.Reach = NewReachability(k.Log, "lease store")
	}
}

// Acquire gets the first lease, retrying with backoff until it has one or ctx
// ends. A full network is retried too (a node may leave), and logged once; so
// is a subnet not assigned yet (a *PendingError, said by Pending meanwhile).
// An error marked Permanent is returned.
func (k *Keeper) Acquire(ctx context.Context) (Lease, error) {
	k.init()
	var backoff Backoff
	var lastErr string
	for {
		l, created, err := acquire(ctx, k.Registry, k.Request)
		if err == nil {
			k.Reach.OK()
			k.set(l, created)
			k.setPending("")
			return l, nil
		}
		if ctx.Err() != nil {
			return Lease{}, fmt.Errorf("acquire lease: %w", ctx.Err())
		}
		if IsPermanent(err) {
			return Lease{}, err
		}
		var pending *PendingError
		if errors.As(err, &pending) {
			k.Reach.OK()
			if err.Error() != lastErr {
				k.Log.Error("no subnet for this node yet; waiting", "reason", pending.Reason)
			}
			lastErr = err.Error()
			k.setPending(pending.Reason)
			backoff.WaitOr(ctx, pending.Wake)
			continue
		}
		var full *ExhaustedError
		if errors.As(err, &full) {
			k.Reach.OK()
			if err.Error() != lastErr {
				k.Log.Error("cannot acquire a lease; waiting for a subnet to become free", "err", err)
			}
			lastErr = err.Error()
			backoff.Wait(ctx)
			continue
		}
		k.Reach.Fail("acquire lease", err)
		backoff.WaitOr(ctx, k.Reach.Back())
	}
}

// Current is the lease held now.
func (k *Keeper) Current() Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Pending says why Acquire is waiting for a subnet (the node has no podCIDR
// yet, and what sets it), or "" when it is not.
func (k *Keeper) Pending() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.pending
}

func (k *Keeper) setPending(reason string) {
	k.mu.Lock()
	k.pending = reason
	k.mu.Unlock()
}

// Created reports whether the lease held now was created by this keeper,
// rather than taken over from the node's earlier run (a lease or reservation
// that carries its public IP). A start that fails may give back a lease it
// created; one it took over is what peers already route to.
func (k *Keeper) Created() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.created
}

func (k *Keeper) set(l Lease, created bool) {
	k.mu.Lock()
	k.cur, k.created = l, created
	k.mu.Unlock()
}

func (k *Keeper) renewed(l Lease) {
	k.mu.Lock()
	k.cur = l
	k.mu.Unlock()
}

// Check asks Run to renew now, for instance because a watch saw the node's
// own lease change or vanish.
func (k *Keeper) Check() {
	k.init()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// renewIn is how long to wait before renewing l.
func (k *Keeper) renewIn(l Lease) time.Duration {
	margin := k.RenewMargin
	if ttl := k.Request.TTL; margin <= 0 || margin >= ttl {
		margin = ttl / 2
	}
	return max(0, time.Until(l.Expiration.Add(-margin)))
}

// Run keeps the lease until ctx ends. Acquire must have succeeded first.
func (k *Keeper) Run(ctx context.Context) error {
	k.init()
	var backoff Backoff
	retrying := false
	for {
		cur := k.Current()
		if !cur.Subnets().IsValid() {
			return errors.New("keep lease: no lease acquired")
		}
		if !retrying {
			var timer <-chan time.Time
			stop := func() bool { return false }
			if !cur.Reservation {
				t := time.NewTimer(k.renewIn(cur))
				timer, stop = t.C, t.Stop
			}
			select {
			case <-ctx.Done():
				stop()
				return nil
			case <-timer:
			case <-k.kick:
				stop()
			}
		} else if !backoff.WaitOr(ctx, k.Reach.Back()) {
			// The store answering again (the probe, the watch) cuts the
			// backoff short: a lease that expired meanwhile is taken back at
			// once, before peers drop its routes for long.
			return nil
		}

		ttl := k.Request.TTL
		if cur.Reservation {
			ttl = 0
		}
		l, err := k.Registry.Update(ctx, cur, k.Request.Attrs, ttl)
		switch {
		case err == nil:
			k.Reach.OK()
			k.renewed(l)
			retrying = false
			backoff.Reset()
			k.Log.Debug("lease renewed", "subnet", l.Subnets(), "expires", l.Expiration)
		case errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrNotFound):
			k.Reach.OK()
			k.Log.Warn("lease lost; acquiring again", "subnet", cur.Subnets(), "err", err)
			req := k.Request
			req.Previous, req.PreviousIPv6 = cur.Subnet, cur.IPv6Subnet
			l, created, err := acquire(ctx, k.Registry, req)
			var pending *PendingError
			if errors.As(err, &pending) {
				// No subnet assigned now (the node object went): wait for
				// one, saying why.
				l, err = k.Acquire(ctx)
				created = k.Created()
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if IsPermanent(err) {
					return err
				}
				k.Reach.Fail("acquire lease", err)
				retrying = true
				continue
			}
			k.set(l, created)
			retrying = false
			backoff.Reset()
			k.Log.Info("lease acquired again", "subnet", l.Subnets(), "previous", cur.Subnets())
			if k.OnChange != nil {
				k.OnChange(cur, l)
			}
		default:
			if ctx.Err() != nil {
				return nil
			}
			k.Reach.Fail("renew lease", err)
			retrying = true
		}
	}
}

// Release gives the lease back (a reservation is left in place).
func (k *Keeper) Release(ctx context.Context) error {
	cur := k.Current()
	if !cur.Subnets().IsValid() || cur.Reservation {
		return nil
	}
	if err := k.Registry.Delete(ctx, cur); err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("release lease %s: %w", cur.Subnets(), err)
	}
	return nil
}
