package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/daemon"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/leasetest"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// These tests run the daemon on an in-memory registry and a fake backend:
// no root, no etcd, no interfaces looked at.

var publicIP = netip.MustParseAddr("192.168.56.11")

// fakeBackend records what the daemon hands it. Its Run ends when ctx does,
// or returns what the test sends on stop.
type fakeBackend struct {
	stop   chan error
	setErr error

	mu           sync.Mutex
	leases       []lease.Lease
	events       []lease.Event
	cleanups     int
	peerProblems []plan.Problem
}

func newFakeBackend() *fakeBackend { return &fakeBackend{stop: make(chan error, 1)} }

func (b *fakeBackend) Type() string { return "alloc" }

func (b *fakeBackend) Prepare(context.Context) (backend.Prepared, error) {
	return backend.Prepared{BackendData: json.RawMessage(`{"Fake":1}`), MTU: 1400}, nil
}

func (b *fakeBackend) SetLease(_ context.Context, own lease.Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases = append(b.leases, own)
	return b.setErr
}

func (b *fakeBackend) Handle(_ context.Context, evs []lease.Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, evs...)
	return nil
}

func (b *fakeBackend) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-b.stop:
		return err
	}
}

func (b *fakeBackend) Status() backend.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return backend.Status{InSync: true, PeerProblems: slices.Clone(b.peerProblems)}
}

func (b *fakeBackend) setPeerProblems(ps ...plan.Problem) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.peerProblems = ps
}

func (b *fakeBackend) Cleanup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups++
	return nil
}

func (b *fakeBackend) record() (leases []lease.Lease, events []lease.Event, cleanups int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]lease.Lease(nil), b.leases...), append([]lease.Event(nil), b.events...), b.cleanups
}

// peerEvent reports whether the backend was handed an event of type t for
// subnet s.
func (b *fakeBackend) peerEvent(t lease.EventType, s netip.Prefix) bool {
	_, evs, _ := b.record()
	for _, e := range evs {
		if e.Type == t && e.Lease.Subnet == s {
			return true
		}
	}
	return false
}

// logRecords keeps what the daemon logs, as one line per record with its
// attributes, to look for what it said.
type logRecords struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecords) WithGroup(string) slog.Handler            { return l }

func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}

func (l *logRecords) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// node is a daemon under test.
type node struct {
	t    *testing.T
	d    *daemon.Daemon
	reg  *leasetest.Registry
	be   *fakeBackend
	cfg  daemon.Config
	log  *logRecords
	stop context.CancelFunc
	done chan error
}

func newRegistry(t *testing.T) *leasetest.Registry {
	reg := leasetest.New()
	t.Cleanup(func() { reg.Close() })
	if err := reg.PutNetworkConfig(context.Background(), []byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.8.0","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Fatal(err)
	}
	return reg
}

func newNode(t *testing.T, reg *leasetest.Registry, change func(*daemon.Config)) *node {
	t.Helper()
	n := &node{t: t, reg: reg, be: newFakeBackend(), log: &logRecords{}}
	n.cfg = daemon.Config{
		Registry:   reg,
		NewBackend: func(backend.Node, *slog.Logger) (backend.Backend, error) { return n.be, nil },
		FindUplink: func() (backend.Node, error) {
			return backend.Node{PublicIP: publicIP, Iface: "eth0", IfaceIndex: 2, IfaceMTU: 1500,
				IfacePrefix: netip.MustParsePrefix("192.168.56.0/24")}, nil
		},
		NodeName:       "n1",
		SubnetFile:     filepath.Join(t.TempDir(), "subnet.env"),
		SubnetLeaseTTL: time.Hour,
		RenewMargin:    time.Minute,
	}
	if change != nil {
		change(&n.cfg)
	}
	d, err := daemon.New(n.cfg, slog.New(n.log))
	if err != nil {
		t.Fatal(err)
	}
	n.d = d
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", n.log.String())
		}
	})
	return n
}

// start runs the daemon; the test's end stops it.
func (n *node) start() {
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan error, 1)
	go func() { n.done <- n.d.Run(ctx) }()
	n.t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			n.t.Error("Run did not return within 5 s of the end of its context")
		}
	})
}

// result waits for Run to return.
func (n *node) result() error {
	n.t.Helper()
	select {
	case err := <-n.done:
		n.done <- err // for the cleanup
		return err
	case <-time.After(5 * time.Second):
		n.t.Fatal("Run did not return within 5 s")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReady waits until the daemon is ready and its watcher follows the
// node's own lease (from then on, a change to it is noticed at once).
func (n *node) waitReady() status.Snapshot {
	n.t.Helper()
	waitFor(n.t, "daemon ready, watching its lease", func() bool {
		s := n.d.Snapshot()
		return s.Ready && slices.ContainsFunc(s.Leases, func(l lease.Lease) bool { return l.Subnets() == s.Lease.Subnets() })
	})
	return n.d.Snapshot()
}

func peerAttrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "alloc"}
}

func (n *node) leases() []lease.Lease {
	n.t.Helper()
	ls, _, err := n.reg.List(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return ls
}

func TestLifecycle(t *testing.T) {
	reg := newRegistry(t)
	ctx := context.Background()
	early, err := reg.Create(ctx, lease.Subnets{V4: netip.MustParsePrefix("10.244.7.0/24")}, peerAttrs("192.168.56.12"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, reg, nil)
	n.start()
	snap := n.waitReady()

	// The lease is in the store, in the backend and in the subnet file.
	own := snap.Lease
	if !own.Subnet.IsValid() || own.Subnet == early.Subnet {
		t.Fatalf("own lease %v", own.Subnet)
	}
	var stored *lease.Lease
	for _, l := range n.leases() {
		if l.Subnet == own.Subnet {
			stored = &l
		}
	}
	if stored == nil || stored.Attrs.PublicIP != publicIP || stored.Attrs.Twill == nil || stored.Attrs.Twill.Node != "n1" ||
		string(stored.Attrs.BackendData) != `{"Fake":1}` {
		t.Fatalf("store holds %+v for %s", stored, own.Subnet)
	}
	set, _, _ := n.be.record()
	if len(set) != 1 || set[0].Subnet != own.Subnet {
		t.Errorf("backend was given leases %v, want %s once", set, own.Subnet)
	}
	f, err := subnetfile.Read(n.cfg.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	if f.NodeSubnet() != own.Subnet || f.MTU != 1400 || f.Network.String() != "10.244.0.0/16" {
		t.Errorf("subnet file %+v, want %s with MTU 1400", f, own.Subnet)
	}
	if snap.Node.PublicIP != publicIP || snap.Node.Iface != "eth0" || snap.Node.MTU != 1400 || snap.Node.BackendType != "alloc" || snap.Node.Name != "n1" {
		t.Errorf("snapshot node %+v", snap.Node)
	}
	for _, c := range snap.Checks {
		if !c.OK {
			t.Errorf("check %s failed: %s", c.Name, c.Detail)
		}
	}

	// Peers' events reach the backend: the one listed at start, one that
	// joins, one that leaves.
	waitFor(t, "the early peer reaches the backend", func() bool { return n.be.peerEvent(lease.Added, early.Subnet) })
	join := netip.MustParsePrefix("10.244.8.0/24")
	if own.Subnet == join {
		join = netip.MustParsePrefix("10.244.6.0/24")
	}
	joined, err := reg.Create(ctx, lease.Subnets{V4: join}, peerAttrs("192.168.56.13"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a joining peer reaches the backend", func() bool { return n.be.peerEvent(lease.Added, joined.Subnet) })
	reg.Expire(early.Subnet)
	waitFor(t, "a leaving peer reaches the backend", func() bool { return n.be.peerEvent(lease.Expired, early.Subnet) })
	if _, evs, _ := n.be.record(); len(evs) != 3 {
		t.Errorf("backend got %s, want 3 events", leasetest.Describe(evs))
	}

	// A stop by the context is clean, keeps the lease and the kernel state.
	n.stop()
	if err := n.result(); err != nil {
		t.Errorf("Run after a stop: %v, want nil", err)
	}
	if n.d.Snapshot().Ready {
		t.Error("ready after Run returned")
	}
	if ls := n.leases(); len(ls) != 2 {
		t.Errorf("after the stop the store holds %v, want the node's lease and the peer's", ls)
	}
	if _, _, cleanups := n.be.record(); cleanups != 0 {
		t.Errorf("a stop cleaned up the backend %d times", cleanups)
	}
}

func TestBackendFailureStopsDaemon(t *testing.T) {
	n := newNode(t, newRegistry(t), nil)
	n.start()
	n.waitReady()
	dead := errors.New("twill0 is gone and cannot be made again")
	n.be.stop <- dead
	waitFor(t, "readiness fails", func() bool { return !n.d.Snapshot().Ready })
	err := n.result()
	if !errors.Is(err, dead) || !strings.Contains(err.Error(), "alloc backend") {
		t.Fatalf("Run returned %v, want the backend's error, naming the backend", err)
	}
	if log := n.log.String(); !strings.Contains(log, "ERROR alloc backend failed; stopping err="+dead.Error()) {
		t.Errorf("the failure was not logged:\n%s", log)
	}
	// The lease stays for the restart that systemd makes.
	if ls := n.leases(); len(ls) != 1 {
		t.Errorf("after the failure the store holds %v, want the lease", ls)
	}
}

func TestPartEndingEarlyStopsDaemon(t *testing.T) {
	n := newNode(t, newRegistry(t), nil)
	n.start()
	n.waitReady()
	n.be.stop <- nil // Run returns nil while the daemon runs: the data path is gone
	err := n.result()
	if err == nil || !strings.Contains(err.Error(), "alloc backend") || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("Run returned %v, want an error saying the backend stopped", err)
	}
	if n.d.Snapshot().Ready {
		t.Error("ready after the backend stopped")
	}
}

// TestStoreOutageNoticed: a store that stops answering is noticed by the
// probe though nothing else asks it anything (a 1 h lease), logged once,
// and fails etcd-reachable while the daemon keeps running; its return is
// logged once and clears the check.
func TestStoreOutageNoticed(t *testing.T) {
	reg := newRegistry(t)
	n := newNode(t, reg, func(c *daemon.Config) { c.ProbeInterval = 20 * time.Millisecond })
	n.start()
	n.waitReady()
	check := func() status.Check {
		for _, c := range n.d.Snapshot().Checks {
			if c.Name == "etcd-reachable" {
				return c
			}
		}
		t.Fatal("no etcd-reachable check")
		return status.Check{}
	}
	reg.Fail(errors.New("connection refused"))
	waitFor(t, "etcd-reachable failing", func() bool { return !check().OK })
	if d := check().Detail; !strings.Contains(d, "has not answered since") {
		t.Errorf("etcd-reachable says %q", d)
	}
	time.Sleep(200 * time.Millisecond) // many failed probes: still one log line
	reg.Fail(nil)
	waitFor(t, "etcd-reachable again", func() bool { return check().OK })
	if got := strings.Count(n.log.String(), "etcd unreachable"); got != 1 {
		t.Errorf("%d 'unreachable' lines, want 1:\n%s", got, n.log.String())
	}
	if got := strings.Count(n.log.String(), "etcd reachable again"); got != 1 {
		t.Errorf("%d 'reachable again' lines, want 1:\n%s", got, n.log.String())
	}
	select {
	case err := <-n.done:
		t.Fatalf("the daemon stopped during the outage: %v", err)
	default:
	}
}

func TestReleaseOnExit(t *testing.T) {
	n := newNode(t, newRegistry(t), func(c *daemon.Config) { c.ReleaseOnExit = true })
	n.start()
	n.waitReady()
	if ls := n.leases(); len(ls) != 1 {
		t.Fatalf("store holds %v, want 1 lease", ls)
	}
	n.stop()
	if err := n.result(); err != nil {
		t.Fatal(err)
	}
	if ls := n.leases(); len(ls) != 0 {
		t.Errorf("after --release-on-exit the store holds %v", ls)
	}
}

func TestLeaseLostAndReacquired(t *testing.T) {
	reg := newRegistry(t)
	n := newNode(t, reg, nil)
	n.start()
	first := n.waitReady().Lease
	ctx := context.Background()

	// The lease expires (the store was away longer than the TTL): the
	// keeper takes the same subnet again; the backend and the file follow.
	reg.Expire(first.Subnet)
	waitFor(t, "the expired lease is taken again", func() bool {
		set, _, _ := n.be.record()
		return len(set) == 2 && set[1].Subnet == first.Subnet && set[1].Revision != first.Revision
	})

	// Another node overwrites the node's subnet: the node moves to a free
	// one, and the node now at the old subnet is a peer.
	var cur lease.Lease
	for _, l := range n.leases() {
		if l.Subnet == first.Subnet {
			cur = l
		}
	}
	if _, err := reg.Update(ctx, cur, peerAttrs("192.168.56.14"), time.Hour); err != nil {
		t.Fatal(err)
	}
	var moved lease.Lease
	waitFor(t, "the node moves to another subnet", func() bool {
		set, _, _ := n.be.record()
		if len(set) < 3 {
			return false
		}
		moved = set[len(set)-1]
		return moved.Subnet != first.Subnet
	})
	waitFor(t, "the subnet file names the new subnet", func() bool {
		f, err := subnetfile.Read(n.cfg.SubnetFile)
		return err == nil && f.NodeSubnet() == moved.Subnet
	})
	if got := n.d.Snapshot().Lease.Subnet; got != moved.Subnet {
		t.Errorf("snapshot lease %s, want %s", got, moved.Subnet)
	}
	waitFor(t, "the node at the old subnet reaches the backend as a peer", func() bool {
		_, evs, _ := n.be.record()
		for _, e := range evs {
			if e.Lease.Subnet == first.Subnet && e.Lease.Attrs.PublicIP.String() == "192.168.56.14" && e.Type != lease.Expired {
				return true
			}
		}
		return false
	})
	_, evs, _ := n.be.record()
	for _, e := range evs {
		if e.Lease.Attrs.PublicIP == publicIP {
			t.Errorf("the backend was handed the node's own lease as a peer's: %s", leasetest.Describe([]lease.Event{e}))
		}
	}
}

// unwritable is a subnet file path whose directory cannot be made, even by
// root: its parent is a regular file.
func unwritable(t *testing.T) string {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(file, "subnet.env")
}

func TestFailedStartGivesBackNewLease(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*daemon.Config)
		setErr error
		want   string
	}{
		{"unwritable subnet file", func(c *daemon.Config) { c.SubnetFile = unwritable(t) }, nil, "subnet file"},
		{"backend refuses the lease", nil, errors.New("no room for routes"), "no room for routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, newRegistry(t), tc.change)
			n.be.setErr = tc.setErr
			n.start()
			err := n.result()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run returned %v, want an error naming %q", err, tc.want)
			}
			if ls := n.leases(); len(ls) != 0 {
				t.Errorf("a failed start left %v in the store", ls)
			}
			if set, _, cleanups := n.be.record(); len(set) != 1 || cleanups != 1 {
				t.Errorf("backend given %d leases and cleaned up %d times, want 1 and 1", len(set), cleanups)
			}
			if _, err := os.Stat(n.cfg.SubnetFile); err == nil {
				t.Error("a failed start left a subnet file")
			}
			if n.d.Snapshot().Ready {
				t.Error("ready after a failed start")
			}
		})
	}
}

func TestFailedStartKeepsTakenOverLease(t *testing.T) {
	reg := newRegistry(t)
	// The node's lease from before its restart.
	before, err := reg.Create(context.Background(), lease.Subnets{V4: netip.MustParsePrefix("10.244.3.0/24")}, lease.Attrs{PublicIP: publicIP, BackendType: "alloc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, reg, func(c *daemon.Config) { c.SubnetFile = unwritable(t) })
	n.start()
	if err := n.result(); err == nil || !strings.Contains(err.Error(), "subnet file") {
		t.Fatalf("Run returned %v, want the subnet file's error", err)
	}
	ls := n.leases()
	if len(ls) != 1 || ls[0].Subnet != before.Subnet || ls[0].Attrs.PublicIP != publicIP {
		t.Errorf("store holds %v, want the node's lease %s kept", ls, before.Subnet)
	}
	if _, _, cleanups := n.be.record(); cleanups != 0 {
		t.Errorf("backend cleaned up %d times; its state carries the kept lease", cleanups)
	}
}

func TestStoreUnreachableAtStart(t *testing.T) {
	reg := newRegistry(t)
	reg.Fail(errors.New("connection refused"))
	n := newNode(t, reg, nil)
	n.start()
	time.Sleep(300 * time.Millisecond)
	snap := n.d.Snapshot()
	if snap.Ready {
		t.Fatal("ready while the store is unreachable")
	}
	for _, c := range snap.Checks {
		if c.Name == "etcd-reachable" && c.OK {
			t.Errorf("check %s ok while the store is unreachable", c.Name)
		}
	}
	reg.Fail(nil)
	n.waitReady()
}

func TestStopBeforeReady(t *testing.T) {
	reg := leasetest.New() // no network config: the daemon waits for it
	t.Cleanup(func() { reg.Close() })
	n := newNode(t, reg, nil)
	n.start()
	time.Sleep(100 * time.Millisecond)
	n.stop()
	if err := n.result(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run stopped while waiting for the config: %v, want context.Canceled", err)
	}
	if ls := n.leases(); len(ls) != 0 {
		t.Errorf("store holds %v", ls)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	_, err := daemon.New(daemon.Config{SubnetFile: "x", SubnetLeaseTTL: time.Hour, RenewMargin: time.Minute}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "registry") || !strings.Contains(err.Error(), "backend") {
		t.Errorf("New without a registry and a backend: %v", err)
	}
}

func TestOwnLeasesAreNoPeers(t *testing.T) {
	reg := newRegistry(t)
	n := newNode(t, reg, nil)
	n.start()
	first := n.waitReady().Lease
	ctx := context.Background()
	free := func() netip.Prefix {
		leases := n.leases()
		for i := 1; ; i++ {
			s := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
			if !slices.ContainsFunc(leases, func(l lease.Lease) bool { return l.Subnet == s }) {
				return s
			}
		}
	}

	// A peer's lease is rewritten to carry this node's public IP: it is no
	// peer's any more.
	peer, err := reg.Create(ctx, lease.Subnets{V4: free()}, peerAttrs("192.168.56.12"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the peer reaches the backend", func() bool { return n.be.peerEvent(lease.Added, peer.Subnet) })
	if _, err := reg.Update(ctx, peer, lease.Attrs{PublicIP: publicIP, BackendType: "alloc"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backend drops the peer", func() bool { return n.be.peerEvent(lease.Expired, peer.Subnet) })

	// An operator reserves a subnet for the node while it runs; when its
	// lease is lost, the node takes the reservation.
	reserved, err := reg.Create(ctx, lease.Subnets{V4: free()}, lease.Attrs{PublicIP: publicIP, BackendType: "alloc"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	reg.Expire(first.Subnet)
	waitFor(t, "the node moves to its reservation", func() bool {
		set, _, _ := n.be.record()
		return set[len(set)-1].Subnet == reserved.Subnet
	})
	if s := n.d.Snapshot().Lease; s.Subnet != reserved.Subnet || !s.Reservation {
		t.Errorf("snapshot lease %+v, want the reservation %s", s, reserved.Subnet)
	}
	_, evs, _ := n.be.record()
	for _, e := range evs {
		if e.Lease.Attrs.PublicIP == publicIP {
			t.Errorf("the backend was handed a lease of the node's own as a peer's: %s", leasetest.Describe([]lease.Event{e}))
		}
	}
}

// TestPeersRoutable: while the backend skips a peer's lease the node is not
// ready, and peers-routable names each skipped subnet, its public IP and the
// reason; once none is skipped it is ready again.
func TestPeersRoutable(t *testing.T) {
	reg := newRegistry(t)
	n := newNode(t, reg, nil)
	n.start()
	n.waitReady()
	check := func() status.Check {
		for _, c := range n.d.Snapshot().Checks {
			if c.Name == "peers-routable" {
				return c
			}
		}
		t.Fatal("no peers-routable check")
		return status.Check{}
	}
	if c := check(); !c.OK {
		t.Errorf("peers-routable failed with no peer skipped: %s", c.Detail)
	}
	a := plan.Problem{Subnet: netip.MustParsePrefix("10.244.96.0/19"), PublicIP: netip.MustParseAddr("192.168.56.77"), Reason: "prefix length /19, the network's SubnetLen is 24; refused"}
	b := plan.Problem{Subnet: netip.MustParsePrefix("10.244.5.0/24"), PublicIP: netip.MustParseAddr("192.168.56.15"), Reason: `backend type "host-gw", this node runs "alloc"; skipped`}
	n.be.setPeerProblems(a, b)
	c := check()
	if c.OK || c.Detail != a.String()+"; "+b.String() {
		t.Errorf("peers-routable with two peers skipped: ok %v, %q", c.OK, c.Detail)
	}
	n.be.setPeerProblems()
	if c := check(); !c.OK {
		t.Errorf("peers-routable still failing after the problems went: %s", c.Detail)
	}
}
