package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/plan"
)

// ReconcilerOptions tune a Reconciler; zero values take the defaults.
type ReconcilerOptions struct {
	// Resync is how often the plan is applied even when no event said the
	// kernel changed (default 30 s).
	Resync time.Duration
	// Settle is how long the Reconciler waits after a netlink event for more
	// of them before applying, so a burst causes one pass (default 50 ms).
	Settle time.Duration
	// Log receives a line per pass that changed something or failed.
	Log *slog.Logger
	// BeforePass, if set, runs before each pass: the backend makes sure its
	// device exists (a deleted device comes back before the routes through
	// it are applied) and brings its other state up to date. Its error is
	// the pass's error (retried as any failed pass) but does not stop the
	// pass.
	BeforePass func() error
}

// Status is a snapshot of a Reconciler, for the dashboard.
type Status struct {
	// Desired is the plan last Set; nil before the first Set.
	Desired *plan.Plan
	// Actual is what the kernel held after the last pass.
	Actual State
	// Drift is Desired against Actual after the last pass.
	Drift Drift
	// InSync: the last pass succeeded and left no drift.
	InSync bool
	// LastPass is when the last pass ended; LastChanges what it did.
	LastPass    time.Time
	LastChanges Changes
	// LastError is the last pass's error; nil if it succeeded.
	LastError error
	// Passes counts passes; Repairs those that changed the kernel although
	// the plan had not changed since the previous pass (drift repaired);
	// TotalChanges sums all changes.
	Passes, Repairs int
	TotalChanges    Changes
}

// Reconciler keeps a namespace's kernel state equal to a plan: it applies
// the plan when Set, when netlink reports a change to twill's routes,
// neighbours or devices, and every Resync.
type Reconciler struct {
	h    *Handle
	opts ReconcilerOptions
	log  *slog.Logger
	kick chan struct{}

	mu      sync.Mutex
	desired *plan.Plan
	fresh   bool // desired changed since the last pass
	devices []string
	status  Status
}

// NewReconciler returns a Reconciler working through h. It does nothing
// until Run.
func NewReconciler(h *Handle, opts ReconcilerOptions) *Reconciler {
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.Settle <= 0 {
		opts.Settle = 50 * time.Millisecond
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{h: h, opts: opts, log: log, kick: make(chan struct{}, 1)}
}

// Set replaces the desired state; Run applies it promptly.
func (r *Reconciler) Set(p plan.Plan) {
	r.mu.Lock()
	r.desired = &p
	r.fresh = true
	r.devices = OwnedDevices(p)
	r.mu.Unlock()
	r.poke()
}

// Kick asks for a pass now, as if netlink had reported a change.
func (r *Reconciler) Kick() { r.poke() }

func (r *Reconciler) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Status returns a snapshot of the last pass.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Desired = r.desired
	return s
}

// Tables returns copies of the desired plan's and the kernel's routes,
// neighbours and FDB entries, which the caller may keep.
func (s Status) Tables() (desired, actual State) {
	if s.Desired != nil {
		desired = State{Routes: slices.Clone(s.Desired.Routes), Neighbors: slices.Clone(s.Desired.Neighbors), FDB: slices.Clone(s.Desired.FDB)}
	}
	actual = State{Routes: slices.Clone(s.Actual.Routes), Neighbors: slices.Clone(s.Actual.Neighbors), FDB: slices.Clone(s.Actual.FDB)}
	return desired, actual
}

// Run applies the plan until ctx ends, and returns ctx's error.
func (r *Reconciler) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.watch(ctx) })

	resync := time.NewTimer(r.opts.Resync)
	defer resync.Stop()
	retry := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.kick:
			// Let a burst of events settle into one pass.
			select {
			case <-time.After(r.opts.Settle):
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case <-r.kick:
			default:
			}
		case <-resync.C:
		}
		err := r.pass()
		// A failed pass is retried sooner than the next resync, backing off.
		next := r.opts.Resync
		if err != nil {
			retry = min(max(2*retry, 500*time.Millisecond), r.opts.Resync)
			next = retry
		} else {
			retry = 0
		}
		resync.Reset(next)
	}
}

// pass applies the desired plan once and records the outcome.
func (r *Reconciler) pass() error {
	r.mu.Lock()
	p, fresh, devices := r.desired, r.fresh, r.devices
	r.fresh = false
	r.mu.Unlock()
	if p == nil {
		return nil
	}
	var berr error
	if r.opts.BeforePass != nil {
		berr = r.opts.BeforePass()
	}
	ch, err := r.h.Apply(*p)
	actual, rerr := r.h.Read(devices...)
	err = errors.Join(berr, err, rerr)
	drift := Compare(*p, actual)

	r.mu.Lock()
	st := &r.status
	st.Actual, st.Drift, st.InSync = actual, drift, err == nil && drift.InSync()
	st.LastPass, st.LastChanges, st.LastError = time.Now(), ch, err
	st.Passes++
	st.TotalChanges = st.TotalChanges.Add(ch)
	if !fresh && ch.Total() > 0 {
		st.Repairs++
	}
	r.mu.Unlock()

	switch {
	case err != nil:
		r.log.Warn("kernel state not fully applied", "backend", p.Backend, "changes", ch, "err", err)
	case ch.Total() > 0 && !fresh:
		r.log.Info("kernel state drifted; repaired", "backend", p.Backend, "changes", ch)
	case ch.Total() > 0:
		r.log.Info("kernel state applied", "backend", p.Backend, "changes", ch)
	}
	return err
}

// watch subscribes to route, neighbour and link events in the namespace and
// pokes the loop when one may concern twill's state. A subscription that
// fails is renewed after a pause.
func (r *Reconciler) watch(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.subscribe(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("netlink subscription ended; renewing", "err", err)
		r.poke() // events may have been missed
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *Reconciler) subscribe(ctx context.Context) error {
	done := make(chan struct{})
	defer close(done)
	ns := r.h.ns
	errc := make(chan error, 3)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	routes := make(chan netlink.RouteUpdate, 256)
	neighs := make(chan netlink.NeighUpdate, 256)
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to routes: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to neighbours: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to links: %w", err)
	}
	// Subscribing may have raced with a change: look once more.
	r.poke()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case u, ok := <-routes:
			if !ok {
				return errors.New("route subscription closed")
			}
			// Deleted twill routes. (Twill's own writes add and replace; a
			// foreign route replacing one of twill's is caught by the resync.)
			if u.Type == unix.RTM_DELROUTE && u.Protocol == Protocol {
				r.poke()
			}
		case u, ok := <-neighs:
			if !ok {
				return errors.New("neighbour subscription closed")
			}
			if u.Type == unix.RTM_DELNEIGH && r.ownsIndex(u.LinkIndex) {
				r.poke()
			}
		case u, ok := <-links:
			if !ok {
				return errors.New("link subscription closed")
			}
			if r.ownsDevice(u.Attrs().Name) || u.Header.Type == unix.RTM_DELLINK {
				r.poke()
			}
		}
	}
}

// ownsIndex reports whether a link index is one of the plan's devices. The
// index is looked up by name each time: devices come and go.
func (r *Reconciler) ownsIndex(index int) bool {
	r.mu.Lock()
	devices := r.devices
	r.mu.Unlock()
	for _, d := range devices {
		if l, err := r.h.linkByName(d); err == nil && l.Attrs().Index == index {
			return true
		}
	}
	return false
}

func (r *Reconciler) ownsDevice(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Contains(r.devices, name) {
		return true
	}
	if r.desired != nil {
		return slices.ContainsFunc(r.desired.Routes, func(rt plan.Route) bool { return rt.Device == name })
	}
	return false
}

func (h *Handle) linkByName(name string) (netlink.Link, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nl.LinkByName(name)
}
