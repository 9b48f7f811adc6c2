package lease

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Reachability tracks whether the store answers, and logs only when that
// changes: once when it stops answering, once when it is back. Retries in
// between are silent.
type Reachability struct {
	log     *slog.Logger
	what    string
	failing atomic.Bool
	since   atomic.Int64 // unix nanos of the last change

	mu   sync.Mutex
	back chan struct{} // closed when the store answers again
}

// NewReachability returns a tracker that logs about what (e.g. "etcd").
func NewReachability(log *slog.Logger, what string) *Reachability {
	r := &Reachability{log: log, what: what}
	r.since.Store(time.Now().UnixNano())
	return r
}

// Fail records a failed attempt at op.
func (r *Reachability) Fail(op string, err error) {
	if !r.failing.Swap(true) {
		r.since.Store(time.Now().UnixNano())
		r.log.Warn(r.what+" unreachable; keeping the current lease and data path, retrying with backoff", "op", op, "err", err)
	}
}

// OK records a successful attempt.
func (r *Reachability) OK() {
	if r.failing.Swap(false) {
		down := time.Since(time.Unix(0, r.since.Swap(time.Now().UnixNano())))
		r.log.Info(r.what+" reachable again", "down_for", down.Round(time.Millisecond))
		r.mu.Lock()
		if r.back != nil {
			close(r.back)
			r.back = nil
		}
		r.mu.Unlock()
	}
}

// Reachable reports whether the last attempt succeeded.
func (r *Reachability) Reachable() bool { return !r.failing.Load() }

// Since is when reachability last changed (or the tracker was made).
func (r *Reachability) Since() time.Time { return time.Unix(0, r.since.Load()) }

// Back returns a channel that is closed when the store answers again after
// failing; while the store answers, one that is already closed. Loops that
// back off wait on it too, so that they retry as soon as the store is back
// rather than when their backoff runs out.
func (r *Reachability) Back() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.failing.Load() {
		c := make(chan struct{})
		close(c)
		return c
	}
	if r.back == nil {
		r.back = make(chan struct{})
	}
	return r.back
}

// Probe asks the store for the network config every interval (every
// second while it does not answer) and reports the outcome to reach, so
// that a store that went away is noticed within interval plus the request
// timeout even when nothing else asks it anything: with a 24 h lease TTL
// the keeper talks to it once a day, and a watch waits silently while it is
// gone. A missing config is an answer. Probe returns nil when ctx ends.
func Probe(ctx context.Context, reg Registry, reach *Reachability, interval time.Duration) error {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, err := reg.NetworkConfig(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil || errors.Is(err, ErrNoConfig):
			reach.OK()
			t.Reset(interval)
		default:
			reach.Fail("probe", err)
			t.Reset(min(interval, time.Second))
		}
	}
}

// Backoff is an exponential backoff with jitter: 0.5 s doubling to 30 s.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Wait sleeps for the next interval, or until ctx ends (then it returns false).
func (b *Backoff) Wait(ctx context.Context) bool { return b.WaitOr(ctx, nil) }

// WaitOr is Wait that also ends early, returning true, when wake is closed
// (Reachability.Back: the store answers again).
func (b *Backoff) WaitOr(ctx context.Context, wake <-chan struct{}) bool {
	if b.Min == 0 {
		b.Min = 500 * time.Millisecond
	}
	if b.Max == 0 {
		b.Max = 30 * time.Second
	}
	if b.next < b.Min {
		b.next = b.Min
	}
	d := b.next/2 + rand.N(b.next/2+1)
	b.next = min(2*b.next, b.Max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return true
	}
}

// Reset starts the backoff again from Min.
func (b *Backoff) Reset() { b.next = 0 }
