package lease

import (
	"context"
	"log/slog"
	"math/rand/v2"
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
	}
}

// Reachable reports whether the last attempt succeeded.
func (r *Reachability) Reachable() bool { return !r.failing.Load() }

// Backoff is an exponential backoff with jitter: 0.5 s doubling to 30 s.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Wait sleeps for the next interval, or until ctx ends (then it returns false).
func (b *Backoff) Wait(ctx context.Context) bool {
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
	}
}

// Reset starts the backoff again from Min.
func (b *Backoff) Reset() { b.next = 0 }
