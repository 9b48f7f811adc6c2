package lease

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
)

// Watcher follows every lease in a Registry and turns the store's changes
// into an ordered stream of Events. It lists the leases once (delivered as
// Added), then watches from the list's revision; when the store has compacted
// that revision away it lists again and delivers the difference, so no change
// is lost, and none is delivered twice.
type Watcher struct {
	Registry Registry
	Log      *slog.Logger
	// Reach is told whether the store answers; may be nil.
	Reach *Reachability

	mu    sync.Mutex
	known map[Subnets]Lease
	rev   int64
}

// Run delivers events to handle, one batch at a time and in order, until ctx
// ends. Run again after it returned, it resumes where it stopped. handle runs on Run's goroutine; while it runs no other batch comes.
func (w *Watcher) Run(ctx context.Context, handle func(context.Context, []Event)) error {
	log := w.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reach := w.Reach
	if reach == nil {
		reach = NewReachability(log, "lease store")
	}
	var backoff Backoff
	w.mu.Lock()
	needList := w.known == nil // a watcher run before resumes from its revision
	w.mu.Unlock()
	for ctx.Err() == nil {
		if needList {
			leases, rev, err := w.Registry.List(ctx)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				reach.Fail("list leases", err)
				backoff.WaitOr(ctx, reach.Back())
				continue
			}
			reach.OK()
			if evs := w.resync(leases, rev); len(evs) > 0 {
				handle(ctx, evs)
			}
			needList = false
		}

		err := w.follow(ctx, handle, reach, &backoff)
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, ErrCompacted):
			log.Info("lease watch fell behind a compaction; listing again", "revision", w.Revision())
			needList = true
		case err != nil:
			reach.Fail("watch leases", err)
			backoff.WaitOr(ctx, reach.Back())
		}
	}
	return nil
}

// follow watches from the current revision until the watch ends.
func (w *Watcher) follow(ctx context.Context, handle func(context.Context, []Event), reach *Reachability, backoff *Backoff) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for batch := range w.Registry.Watch(wctx, w.Revision()+1) {
		if batch.Err != nil {
			return batch.Err
		}
		reach.OK()
		backoff.Reset()
		if evs := w.apply(batch); len(evs) > 0 {
			handle(ctx, evs)
		}
	}
	return nil
}

// apply turns a batch of changes into events and updates what is known.
func (w *Watcher) apply(b WatchBatch) []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var evs []Event
	for _, c := range b.Changes {
		old, had := w.known[c.Lease.Subnets()]
		switch {
		case c.Deleted && had:
			delete(w.known, c.Lease.Subnets())
			evs = append(evs, Event{Type: Expired, Lease: old})
		case c.Deleted:
			// Removal of a lease we never saw: nothing to tell.
		case !had:
			w.known[c.Lease.Subnets()] = c.Lease
			evs = append(evs, Event{Type: Added, Lease: c.Lease})
		case old.Attrs.Equal(c.Lease.Attrs) && old.Reservation == c.Lease.Reservation:
			w.known[c.Lease.Subnets()] = c.Lease
			evs = append(evs, Event{Type: Renewed, Lease: c.Lease})
		default:
			w.known[c.Lease.Subnets()] = c.Lease
			evs = append(evs, Event{Type: Changed, Lease: c.Lease})
		}
	}
	if b.Revision > w.rev {
		w.rev = b.Revision
	}
	return evs
}

// resync replaces what is known with a fresh listing and returns the
// difference as events: removals first, then additions and changes, each in
// subnet order.
func (w *Watcher) resync(leases []Lease, rev int64) []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	listed := make(map[Subnets]Lease, len(leases))
	for _, l := range leases {
		listed[l.Subnets()] = l
	}
	var gone, rest []Event
	for s, old := range w.known {
		if _, ok := listed[s]; !ok {
			gone = append(gone, Event{Type: Expired, Lease: old})
		}
	}
	for s, l := range listed {
		old, had := w.known[s]
		switch {
		case !had:
			rest = append(rest, Event{Type: Added, Lease: l})
		case !old.Attrs.Equal(l.Attrs) || old.Reservation != l.Reservation:
			rest = append(rest, Event{Type: Changed, Lease: l})
		case old.Revision != l.Revision:
			rest = append(rest, Event{Type: Renewed, Lease: l})
		}
	}
	bySubnet := func(a, b Event) int { return a.Lease.Subnets().Compare(b.Lease.Subnets()) }
	slices.SortFunc(gone, bySubnet)
	slices.SortFunc(rest, bySubnet)
	w.known = listed
	w.rev = rev
	return append(gone, rest...)
}

// Revision is the store revision the watcher has seen up to.
func (w *Watcher) Revision() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev
}

// Leases returns every lease known, in subnet order.
func (w *Watcher) Leases() []Lease {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Lease, 0, len(w.known))
	for _, l := range w.known {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Subnets().Compare(b.Subnets()) })
	return out
}
