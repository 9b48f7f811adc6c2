// Package leasetest is an in-memory lease.Registry for tests: leases with
// compare-and-swap creation, updates and deletes as the etcd registry has
// them, TTLs that expire on their own, a watch with history and compaction,
// and a network config. It is safe for concurrent use, so that a daemon, its
// peers and a test can share one.
//
// It also holds the behaviour tests every lease.Registry must pass
// (Conformance), run against this registry and against etcd.
//
// It must not be used outside tests: nothing is persisted, and it knows no
// flannel key format.
package leasetest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/twillnet/twill/overlay/lease"
)

// Registry is an in-memory lease.Registry. The zero value is not usable;
// call New.
type Registry struct {
	mu        sync.Mutex
	rev       int64 // store revision: one per change
	nextID    int64
	config    []byte
	leases    map[lease.Subnets]*entry
	history   []record // changes in revision order, after compacted
	compacted int64    // revisions up to this one are gone from history
	changed   chan struct{}
	err       error // returned by every call while set (Fail)
	closed    bool
}

type entry struct {
	lease lease.Lease
	timer *time.Timer // the TTL; nil for a reservation
}

type record struct {
	rev    int64
	change lease.Change
}

var _ lease.Registry = (*Registry)(nil)

// New returns an empty registry.
func New() *Registry {
	return &Registry{leases: make(map[lease.Subnets]*entry), changed: make(chan struct{})}
}

// Close stops the TTL timers and ends every watch.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.leases {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	r.closed = true
	r.notifyLocked()
	return nil
}

// ConfigKey is where the network config lives, for messages.
func (r *Registry) ConfigKey() string { return "leasetest/config" }

// PutNetworkConfig sets the raw network config that NetworkConfig returns.
func (r *Registry) PutNetworkConfig(_ context.Context, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.config = slices.Clone(data)
	return nil
}

// Fail makes every call fail with err, as a store that cannot be reached,
// and ends the watches running with it; Fail(nil) brings the store back.
func (r *Registry) Fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
	if err != nil {
		r.notifyLocked()
	}
}

// Compact drops the history up to the current revision: a watch from an
// older revision ends with lease.ErrCompacted.
func (r *Registry) Compact(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.compacted = r.rev
	r.history = nil
	return nil
}

// Expire ends the lease that holds subnet (of either family) now, as if
// its TTL ran out; false if there is none or it is a reservation.
func (r *Registry) Expire(subnet netip.Prefix) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for s, e := range r.leases {
		if s.Shares(lease.Subnets{V4: subnet, V6: subnet}) && e.timer != nil {
			r.removeLocked(e)
			return true
		}
	}
	return false
}

// NetworkConfig returns the network config, or lease.ErrNoConfig.
func (r *Registry) NetworkConfig(context.Context) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, fmt.Errorf("get %s: %w", r.ConfigKey(), r.err)
	}
	if r.config == nil {
		return nil, fmt.Errorf("get %s: %w", r.ConfigKey(), lease.ErrNoConfig)
	}
	return slices.Clone(r.config), nil
}

// List returns every lease, in subnet order, and the current revision.
func (r *Registry) List(ctx context.Context) ([]lease.Lease, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return nil, 0, fmt.Errorf("list leases: %w", err)
	}
	out := make([]lease.Lease, 0, len(r.leases))
	for _, e := range r.leases {
		out = append(out, e.lease)
	}
	slices.SortFunc(out, func(a, b lease.Lease) int { return a.Subnets().Compare(b.Subnets()) })
	return out, r.rev, nil
}

// Create leases subnets for ttl (0 makes a reservation) if no lease holds
// either half.
func (r *Registry) Create(ctx context.Context, subnets lease.Subnets, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return lease.Lease{}, fmt.Errorf("create lease %s: %w", subnets, err)
	}
	if !subnets.IsValid() {
		return lease.Lease{}, fmt.Errorf("create lease: no subnet")
	}
	for s := range r.leases {
		if s.Shares(subnets) {
			return lease.Lease{}, fmt.Errorf("create lease %s: held by %s: %w", subnets, s, lease.ErrExists)
		}
	}
	return r.putLocked(subnets, attrs, ttl, 0), nil
}

// Update renews l for ttl with attrs if it is still at l.Revision.
func (r *Registry) Update(ctx context.Context, l lease.Lease, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), err)
	}
	e, ok := r.leases[l.Subnets()]
	switch {
	case !ok:
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), lease.ErrNotFound)
	case e.lease.Revision != l.Revision:
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), lease.ErrLeaseLost)
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	return r.putLocked(l.Subnets(), attrs, ttl, e.lease.Created), nil
}

// Delete releases l if it is still at l.Revision. As in etcd, a lease that
// is gone is lease.ErrLeaseLost too.
func (r *Registry) Delete(ctx context.Context, l lease.Lease) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return fmt.Errorf("delete lease %s: %w", l.Subnets(), err)
	}
	e, ok := r.leases[l.Subnets()]
	if !ok || e.lease.Revision != l.Revision {
		return fmt.Errorf("delete lease %s: %w", l.Subnets(), lease.ErrLeaseLost)
	}
	r.removeLocked(e)
	return nil
}

// Watch delivers the changes after fromRev, then live ones, until ctx ends
// or the registry is closed.
func (r *Registry) Watch(ctx context.Context, fromRev int64) <-chan lease.WatchBatch {
	out := make(chan lease.WatchBatch)
	go func() {
		defer close(out)
		next := fromRev
		for {
			r.mu.Lock()
			var end error
			switch {
			case r.closed:
				r.mu.Unlock()
				return
			case r.err != nil:
				end = fmt.Errorf("watch leases: %w", r.err)
			case next <= r.compacted:
				end = fmt.Errorf("watch from revision %d (compacted up to %d): %w", fromRev, r.compacted, lease.ErrCompacted)
			}
			if end != nil {
				r.mu.Unlock()
				select {
				case out <- lease.WatchBatch{Err: end}:
				case <-ctx.Done():
				}
				return
			}
			var b lease.WatchBatch
			for _, rec := range r.history {
				if rec.rev >= next {
					b.Changes = append(b.Changes, rec.change)
					b.Revision = rec.rev
				}
			}
			changed := r.changed
			r.mu.Unlock()
			if len(b.Changes) > 0 {
				select {
				case out <- b:
					next = b.Revision + 1
				case <-ctx.Done():
					return
				}
				continue
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// usable says why a call cannot be served now.
func (r *Registry) usable(ctx context.Context) error {
	switch {
	case r.closed:
		return fmt.Errorf("leasetest: registry closed")
	case r.err != nil:
		return r.err
	}
	return ctx.Err()
}

// putLocked writes a lease at a new revision, with a TTL timer unless ttl is
// 0 (a reservation). created is the revision the lease was created at; 0
// for a new lease (then it is this revision, as etcd's create revision).
func (r *Registry) putLocked(subnets lease.Subnets, attrs lease.Attrs, ttl time.Duration, created int64) lease.Lease {
	r.rev++
	if created == 0 {
		created = r.rev
	}
	l := lease.Lease{Subnet: subnets.V4, IPv6Subnet: subnets.V6, Attrs: attrs, Revision: r.rev, Created: created, Reservation: ttl <= 0}
	e := &entry{}
	if ttl > 0 {
		r.nextID++
		l.ID, l.Expiration = r.nextID, time.Now().Add(ttl)
		id := l.ID
		e.timer = time.AfterFunc(ttl, func() { r.expire(subnets, id) })
	}
	e.lease = l
	r.leases[subnets] = e
	r.recordLocked(lease.Change{Lease: l})
	return l
}

// expire removes the lease of subnets when its TTL id runs out, unless it
// was renewed or removed meanwhile.
func (r *Registry) expire(subnets lease.Subnets, id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.leases[subnets]; ok && e.lease.ID == id && !r.closed {
		r.removeLocked(e)
	}
}

func (r *Registry) removeLocked(e *entry) {
	if e.timer != nil {
		e.timer.Stop()
	}
	delete(r.leases, e.lease.Subnets())
	r.rev++
	r.recordLocked(lease.Change{Lease: e.lease, Deleted: true})
}

func (r *Registry) recordLocked(c lease.Change) {
	r.history = append(r.history, record{rev: r.rev, change: c})
	r.notifyLocked()
}

// notifyLocked wakes every watch.
func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}
