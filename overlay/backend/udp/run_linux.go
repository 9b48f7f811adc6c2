package udp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/plan"
)

// repairTimeout is how long the data path may stay broken (twill0 deleted
// and not yet recreated, the kernel path not attached again) before Run
// gives up and returns the error (a variable for the tests).
var repairTimeout = 10 * time.Second

// Run moves packets between twill0 and the UDP sockets and has the Router
// keep the route, the address and the nftables table in place, until ctx
// ends; it returns nil then. When twill0 is deleted, the device hook
// recreates it (new TUN queues, the address, MTU, the route, the kernel
// path) and the loops restart on it; Run returns an error only when that
// repair has not succeeded within 10 s, or when a socket fails. The device
// and sockets stay open after Run; twill0 (persistent), its routes and the
// kernel path stay in the kernel after Close and the process's end, until
// Cleanup.
func (b *Backend) Run(ctx context.Context) error {
	b.mu.Lock()
	if !b.up {
		b.mu.Unlock()
		return errors.New("udp backend: Run before Prepare")
	}
	if b.running != nil {
		b.mu.Unlock()
		return errors.New("udp backend: already running")
	}
	b.running = make(chan struct{})
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		close(b.running)
		b.running = nil
		b.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var rerr error
	wg.Go(func() { rerr = b.Router.Run(ctx) })
	err := b.runLoops(ctx)
	cancel()
	wg.Wait()
	return errors.Join(err, rerr)
}

// generation is the data path the loops run on, until it is replaced.
type generation struct {
	queues  []*tunQueue
	socks   []*udpConn
	kp      *kernelpath.Path
	swapped chan struct{}
	// lost says what of the data path is missing ("" if nothing).
	lost string
}

// current returns the data path to run the loops on; false after Cleanup.
func (b *Backend) current() (generation, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := generation{queues: b.queues, socks: b.socks, kp: b.kp, swapped: b.swapped}
	switch {
	case b.dead || len(b.queues) == 0:
		g.queues, g.lost = nil, plan.UDPDevice+" was deleted"
	case b.kpCfg != nil && b.kp == nil:
		g.lost = "the kernel path went with " + plan.UDPDevice
	}
	if g.lost != "" && b.broken != "" {
		g.lost += "; repair: " + b.broken
	}
	return g, b.up
}

// runLoops runs the packet loops, a generation at a time, until ctx ends
// or Cleanup took the data path down (nil), or the data path stays broken
// for repairTimeout (its error).
func (b *Backend) runLoops(ctx context.Context) error {
	var brokenSince time.Time
	for {
		g, up := b.current()
		if !up || ctx.Err() != nil {
			return nil
		}
		var giveUp <-chan time.Time
		if g.lost != "" {
			if brokenSince.IsZero() {
				brokenSince = time.Now()
				b.log.Warn("data path broken; repairing", "problem", g.lost)
				b.Resync()
			}
			left := repairTimeout - time.Since(brokenSince)
			if left <= 0 {
				return fmt.Errorf("udp data path dead: %s, not repaired within %v", g.lost, repairTimeout)
			}
			giveUp = time.After(left)
		} else if !brokenSince.IsZero() {
			b.log.Info("data path repaired", "after", time.Since(brokenSince).Round(time.Millisecond))
			brokenSince = time.Time{}
		}
		err := b.runGeneration(ctx, g, giveUp)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.EBADFD):
			// The queues are detached: twill0 was deleted. The device hook
			// makes new ones on the next pass, which this asks for.
			b.markDead(g)
		case err != nil:
			return err
		}
	}
}

// runGeneration runs a TX and an RX loop per queue of g (and the kernel
// path's pod watch) until ctx ends, g is replaced, giveUp fires or a loop
// ends; it stops them all and returns the error of the loop that ended.
func (b *Backend) runGeneration(ctx context.Context, g generation, giveUp <-chan time.Time) error {
	if len(g.queues) == 0 {
		select {
		case <-ctx.Done():
		case <-g.swapped:
		case <-giveUp:
		}
		return nil
	}
	gctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	ended := make(chan error, 2*len(g.queues))
	if g.kp != nil {
		wg.Go(func() {
			subnet := func() (netip.Prefix, bool) {
				s := b.local.Load()
				if s == nil {
					return netip.Prefix{}, false
				}
				return *s, true
			}
			if err := g.kp.WatchPods(gctx, b.Namespace(), subnet, b.log); err != nil && gctx.Err() == nil {
				b.log.Warn("kernel path: no direct delivery to pods", "err", err)
			}
		})
	}
	for i, q := range g.queues {
		s := g.socks[i]
		wg.Go(func() { ended <- b.txLoop(gctx, q, s) })
		wg.Go(func() { ended <- b.rxLoop(gctx, q, s) })
	}
	var err error
	select {
	case <-ctx.Done():
	case <-g.swapped:
	case <-giveUp:
	case err = <-ended:
	}
	stop()
	// Deadlines in the past wake the loops' reads; the sockets serve the
	// next generation, so theirs are cleared again.
	now := time.Now()
	for i, q := range g.queues {
		_ = q.SetReadDeadline(now)
		_ = g.socks[i].SetReadDeadline(now)
	}
	wg.Wait()
	for _, s := range g.socks {
		_ = s.SetReadDeadline(time.Time{})
	}
	return err
}

// markDead records that g's queues are detached, unless they were
// replaced already, and asks the Router for a pass (which recreates them).
func (b *Backend) markDead(g generation) {
	b.mu.Lock()
	if len(b.queues) > 0 && len(g.queues) > 0 && b.queues[0] == g.queues[0] {
		b.dead = true
	}
	b.mu.Unlock()
	b.Resync()
}
