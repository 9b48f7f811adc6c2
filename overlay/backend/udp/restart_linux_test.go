package udp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/lease"
)

// TestRestartUnderTraffic: pod A pings pod B every 10 ms while node A's
// backend stops (as a stopping twilld does: Run ends, Close lets go of the
// data path and leaves it in the kernel; or, as SIGKILL, the files closed
// under the running loops), no backend runs for 2 s, and a new Backend
// takes over what the old one left. On the kernel path (tcx and classic
// tc) not one ping may be lost; the userspace path loses what is sent
// while no backend runs, and no more. The counters never go backwards on
// the kernel path. Cleanup then removes all of it: twill0, the pins, the
// filters.
func TestRestartUnderTraffic(t *testing.T) {
	for _, m := range []struct{ name, options, attach string }{
		{"kernel-path", ``, ""},
		{"kernel-path-tc", ``, "tc"},
		{"userspace", `,"KernelPath":false`, ""},
	} {
		for _, kill := range []bool{false, true} {
			name := m.name + "/stop"
			if kill {
				name = m.name + "/kill"
			}
			t.Run(name, func(t *testing.T) {
				if m.attach != "" {
					t.Setenv("TWILL_UDP_ATTACH", m.attach)
				}
				kernelPath := strings.HasPrefix(m.name, "kernel-path")
				if kernelPath {
					if err := kernelpath.Supported(); err != nil {
						t.Skipf("no kernel path here: %v", err)
					}
				}
				testRestart(t, m.options, kernelPath, kill)
			})
		}
	}
}

func testRestart(t *testing.T, options string, kernelPath, kill bool) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun: ", err)
	}
	lab := backendtest.New(t, "udp", 2)
	cfg := udpConfig(t, options)
	for _, ln := range lab.Nodes {
		ln.IP(t, "link", "set", "veth0", "mtu", "1472")
		run(t, "ip", "-n", ln.Pod, "link", "set", "eth0", "mtu", "1472")
	}
	newBackend := func(bn backend.Node, log *slog.Logger) (*Backend, error) {
		bn.IPMasq = true
		return New(bn, log)
	}
	var started []*Backend
	t.Cleanup(func() {
		for _, b := range started {
			if err := b.Cleanup(context.Background()); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			b.Close()
		}
	})
	rs := lab.Start(t, cfg, func(bn backend.Node, log *slog.Logger) (backend.Backend, error) {
		b, err := newBackend(bn, log)
		if err == nil && bn.PublicIP != lab.Nodes[0].PublicIP {
			started = append(started, b) // node A's is cleaned up below
		}
		return b, err
	})
	a, b := rs[0], rs[1]
	old := a.Backend.(*Backend)
	t.Cleanup(func() { // node A's pins, should the test end before its Cleanup
		if err := RemoveLeftovers(lab.Nodes[0].BackendNode(cfg), nil); err != nil {
			t.Errorf("remove node A's leftovers: %v", err)
		}
	})
	if out, ok := ping(t, lab.Nodes[0].Pod, lab.Nodes[1].PodIP, 2); !ok {
		t.Fatalf("no ping before the restart:\n%s", out)
	}
	dir, err := kernelpath.PinDir(old.Namespace())
	if err != nil {
		t.Fatal(err)
	}
	before, _ := a.Peer(b.Lease.Subnet)

	// 500 echoes, one per 10 ms: 0.5 s before the stop, 2 s without a
	// backend, the take-over, and the rest after it.
	const count = 500
	pings := backendtest.StartPings(t, lab.Nodes[0], lab.Nodes[1].PodIP, count)
	time.Sleep(500 * time.Millisecond)

	if kill {
		// As the kernel does for a killed process: the files close under
		// the running loops, nothing is taken down.
		old.mu.Lock()
		errs := old.takeDown(false)
		old.mu.Unlock()
		a.Stop()
		if err := errors.Join(append(errs, old.Router.Close())...); err != nil {
			t.Errorf("close: %v", err)
		}
	} else {
		a.Stop()
		if err := old.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
	stopped := time.Now()
	// What stays while no backend runs: twill0, its route, the pins.
	if link := run(t, "ip", "-n", lab.Nodes[0].Name, "-d", "link", "show", "twill0"); !strings.Contains(link, "tun type tun") {
		t.Errorf("twill0 went with the backend: %s", link)
	}
	if routes := run(t, "ip", "-n", lab.Nodes[0].Name, "route", "show", "proto", "126"); !strings.Contains(routes, "10.244.0.0/16 dev twill0") {
		t.Errorf("the cluster route went with the backend: %s", routes)
	}
	if _, err := os.Stat(filepath.Join(dir, "twill_peers")); kernelPath && err != nil {
		t.Errorf("the peer table is not pinned: %v", err)
	}
	time.Sleep(2*time.Second - time.Since(stopped))

	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", "A2")
	ctx := context.Background()
	t0 := time.Now()
	nb, err := newBackend(lab.Nodes[0].BackendNode(cfg), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nb.Cleanup(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		nb.Close()
	})
	p, err := nb.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tPrepared := time.Since(t0)
	own := lab.Nodes[0].Lease(nb.Type(), p.BackendData)
	if err := nb.SetLease(ctx, own); err != nil {
		t.Fatal(err)
	}
	if err := nb.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: b.Lease}}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- nb.Run(rctx) }()
	tAdopted := time.Since(t0)
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	defer stop()
	if kernelPath && (nb.kp == nil || !nb.kp.Adopted()) {
		t.Errorf("the new backend did not take over the kernel path (mode %q)", nb.Status().Mode)
	}

	r := pings.Wait()
	lost := r.Lost()
	t.Logf("%d of %d pings lost (%d in a row), longest gap between replies %v; the new backend was prepared in %v, had the lease and peers in %v (mode %s)",
		lost, r.Sent, r.LongestLoss, r.Gap.Round(time.Millisecond), tPrepared.Round(time.Millisecond),
		tAdopted.Round(time.Millisecond), nb.Status().Mode)
	switch {
	case kernelPath && lost != 0:
		t.Errorf("%d pings lost on the kernel path, want 0", lost)
	case !kernelPath && r.Gap > 2600*time.Millisecond:
		// The userspace path loses what is sent while no backend runs (2 s)
		// and the take-over, no more.
		t.Errorf("the userspace path had no reply for %v, more than the 2 s without a backend", r.Gap)
	}
	if r.Received < r.Sent-r.LongestLoss {
		t.Errorf("pings lost outside the restart: %d received of %d, longest gap %d", r.Received, r.Sent, r.LongestLoss)
	}

	after := func() backend.PeerStatus {
		for _, ps := range nb.Status().Peers {
			if ps.Subnet == b.Lease.Subnet {
				return ps
			}
		}
		return backend.PeerStatus{}
	}()
	t.Logf("A's counters for B: before tx %d rx %d, after tx %d rx %d", before.TxPackets, before.RxPackets, after.TxPackets, after.RxPackets)
	if kernelPath && (after.TxPackets < before.TxPackets+count || after.RxPackets < before.RxPackets+count) {
		t.Errorf("counters went backwards or missed the pings: before %+v, after %+v", before, after)
	}
	if out, ok := ping(t, lab.Nodes[1].Pod, lab.Nodes[0].PodIP, 2); !ok {
		t.Errorf("pod B cannot ping pod A after the restart:\n%s", out)
	}

	// Cleanup removes everything the two backends left.
	stop()
	if err := nb.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", lab.Nodes[0].Name, "link", "show", "twill0").CombinedOutput(); err == nil {
		t.Errorf("twill0 is still there after Cleanup: %s", out)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s is still there after Cleanup", dir)
	}
	for _, hook := range []string{"ingress", "egress"} {
		if f := run(t, "tc", "-n", lab.Nodes[0].Name, "filter", "show", "dev", "eth0", hook); strings.Contains(f, "twill") {
			t.Errorf("a twill filter is left on eth0 %s: %s", hook, f)
		}
	}
	inNS(t, nsHandle(t, lab.Nodes[0].Name), func() error {
		for _, dev := range []string{"eth0", "twill0"} {
			ifi, err := net.InterfaceByName(dev)
			if err != nil {
				continue // twill0 is gone
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				q, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: at})
				if err != nil {
					continue // no tcx on this kernel
				}
				if len(q.Programs) != 0 {
					t.Errorf("%d tcx programs still on %s (%v) after Cleanup", len(q.Programs), dev, at)
				}
			}
		}
		return nil
	})
}
