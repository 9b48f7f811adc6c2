package udp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// Backend is the udp backend. Create it with New.
type Backend struct {
	// Router keeps the cluster route to twill0, twill0's address and the
	// nftables table, and plans the peers; it gives the backend SetLease,
	// Handle, Resync and Close.
	*routing.Router

	node    backend.Node
	log     *slog.Logger
	port    int
	mtu     int
	offload bool
	// kernelPath is whether Prepare tries the eBPF fast path.
	kernelPath bool
	// nqueues is how many TUN queues and sockets Prepare makes.
	nqueues int

	mu sync.Mutex // guards the fields below; never held while calling the Router
	// up: Prepare made the data path and Cleanup has not taken it down;
	// ensureDevice keeps twill0 while it is set.
	up     bool
	queues []*tunQueue // the TUN's queues
	socks  []*udpConn  // one per queue (SO_REUSEPORT when several)
	// dead: the loops found the queues detached (twill0 deleted).
	dead bool
	// swapped is closed when the queues or the kernel path are replaced
	// (the loops then restart on the new ones); a fresh one comes with them.
	swapped chan struct{}
	kp      *kernelpath.Path // the kernel fast path; nil when not attached
	kpCfg   *kernelpath.Config
	kpWhy   string // why there is no kernel path
	// kpAttach is how the kernel path is attached: "" (auto: tcx where the
	// kernel has it, else classic tc), "tcx" or "tc". The environment
	// variable TWILL_UDP_ATTACH sets it, for tests and measurements.
	kpAttach string
	kpPeers  map[netip.Prefix]kernelpath.Peer
	// kpHold: the kernel path took over the peers an earlier twilld left
	// pinned, and keeps them until the peers' leases are known (the first
	// Handle, or adoptGrace after Prepare), so that traffic to them flows
	// while the lease watcher starts.
	kpHold bool
	// broken is the last failed repair ("" if none).
	broken  string
	running chan struct{} // non-nil while Run runs; closed when it returns

	// The packet loops read these without locks.
	table atomic.Pointer[peerTable]
	local atomic.Pointer[netip.Prefix]
	drops drops // node-wide drops
	// gso is whether sends may use UDP GSO (off with Offload false, or
	// once the kernel refused it).
	gso atomic.Bool
}

var _ backend.Backend = (*Backend)(nil)

// New returns a udp backend for node, working in node.NetNS. It changes
// nothing in the kernel until Prepare (or Cleanup). A nil log discards.
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("udp backend: no network config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := node.Network.Backend
	opts.Type = netconf.TypeUDP
	b := &Backend{node: node, log: log.With("backend", netconf.TypeUDP), port: netconf.DefaultUDPPort,
		mtu: routing.MTU(node, opts), offload: opts.Offload, kernelPath: opts.KernelPath && opts.Offload,
		nqueues: defaultQueues(), swapped: make(chan struct{}), kpAttach: os.Getenv("TWILL_UDP_ATTACH")}
	if opts.Port != 0 {
		b.port = opts.Port
	}
	b.table.Store(newPeerTable(nil, nil, b.port))
	r, err := routing.New(routing.Config{Node: node, Backend: opts, Device: plan.UDPDevice,
		EnsureDevice: b.ensureDevice, OnPlan: b.onPlan, OwnCounters: true, Log: log})
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

// Type is "udp".
func (b *Backend) Type() string { return netconf.TypeUDP }

// Prepare creates the TUN device twill0 (MTU: the config's, else the
// underlay's minus 28), up, and the UDP socket on the node's public IP,
// port Port, both in the node's namespace, and attaches the kernel path
// where it can. The device gets its address with the lease. udp publishes
// no BackendData, as flannel, unless the kernel path runs
// ({"KernelPath":true}).
func (b *Backend) Prepare(ctx context.Context) (backend.Prepared, error) {
	b.mu.Lock()
	if b.up {
		defer b.mu.Unlock()
		return b.prepared(), nil
	}
	bind, err := b.listen(ctx)
	if err != nil {
		b.mu.Unlock()
		return backend.Prepared{}, err
	}
	b.up = true
	b.mu.Unlock()
	// The Router's device hook makes the TUN queues (ensureDevice).
	if err := b.EnsureDevice(); err != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.takeDown(true)
		return backend.Prepared{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gso.Store(b.offload)
	gro := false
	for _, s := range b.socks {
		setSocketBuffers(s.UDPConn, b.log)
		if b.offload {
			gro = setGRO(s.UDPConn) == nil
		}
	}
	b.attachKernelPath(bind)
	if b.kp != nil && gro {
		// GRO would merge a peer's datagrams before the ingress program sees
		// them (on devices that do GRO), and merged ones take the slow path.
		for _, s := range b.socks {
			_ = setGROValue(s.UDPConn, 0)
		}
		gro = false
	}
	b.log.Info("TUN device ready", "device", plan.UDPDevice, "mtu", b.mtu, "listen", b.socks[0].LocalAddr(),
		"offload", b.offload, "queues", len(b.queues), "udp_gro", gro, "kernel_path", b.kpAttachment())
	return b.prepared(), nil
}

// ensureDevice is the Router's device hook, run by Prepare and before every
// reconcile pass: it makes twill0's TUN queues exist (recreating them when
// someone deleted the device: the old queues are dead then), with the MTU,
// up, and the own subnet's address, and attaches the kernel path again
// when it went with the device.
func (b *Backend) ensureDevice(nl *netlink.Handle, own netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return nil // before Prepare, after Cleanup
	}
	err := b.repairDevice(nl, own)
	if err != nil {
		b.broken = err.Error()
	} else {
		b.broken = ""
	}
	return err
}

// repairDevice does ensureDevice's work. Called with mu held.
func (b *Backend) repairDevice(nl *netlink.Handle, own netip.Prefix) error {
	link, err := nl.LinkByName(plan.UDPDevice)
	if err != nil && !routing.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", plan.UDPDevice, err)
	}
	if err != nil || b.queues == nil || b.dead {
		if err == nil && link.Type() != "tuntap" {
			// Someone else's device took the name: twill0 is twill's.
			b.log.Warn("replacing device", "device", plan.UDPDevice, "reason", "a "+link.Type()+" device, not a TUN")
			if err := nl.LinkDel(link); err != nil {
				return fmt.Errorf("delete %s (a %s device, not a TUN): %w", plan.UDPDevice, link.Type(), err)
			}
		}
		if err := b.openQueues(nl); err != nil {
			return err
		}
		if link, err = nl.LinkByName(plan.UDPDevice); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", plan.UDPDevice, err)
		}
	}
	if err := routing.SetUpDevice(nl, link, b.mtu, nil, own); err != nil {
		return err
	}
	if b.kpCfg == nil || b.kp != nil {
		return nil
	}
	// The kernel path was attached to the twill0 that went.
	kp, err := kernelpath.Attach(b.Namespace(), *b.kpCfg)
	if err == nil && own.IsValid() {
		err = errors.Join(kp.SetSubnet(own.Masked()), kp.SetPeers(b.kpPeers))
	}
	if err != nil {
		if kp != nil {
			err = errors.Join(err, kp.Close())
		}
		return fmt.Errorf("attach the kernel path to the new %s: %w", plan.UDPDevice, err)
	}
	b.kp = kp
	b.replaced()
	b.log.Info("kernel path attached again", "device", plan.UDPDevice)
	return nil
}

// openQueues creates twill0's TUN queues, in place of the old ones (which
// are closed; the loops on them end). twill0 is persistent: a twill0 an
// earlier twilld left (its address and routes with it) is taken over, or,
// if it cannot be (another number of queues), made again. Called with mu
// held.
func (b *Backend) openQueues(nl *netlink.Handle) error {
	var queues []*tunQueue
	var uso bool
	open := func() error {
		return namespace.Do(b.Namespace(), func() error {
			var err error
			queues, uso, err = openTUNQueues(plan.UDPDevice, b.nqueues, b.offload, true)
			return err
		})
	}
	err := open()
	if errors.Is(err, unix.EINVAL) {
		if link, lerr := nl.LinkByName(plan.UDPDevice); lerr == nil && link.Type() == "tuntap" {
			b.log.Warn("replacing device", "device", plan.UDPDevice, "reason", "a TUN left with other flags", "err", err)
			if derr := nl.LinkDel(link); derr != nil {
				return errors.Join(err, fmt.Errorf("delete %s: %w", plan.UDPDevice, derr))
			}
			err = open()
		}
	}
	if err != nil {
		return err
	}
	old := b.queues
	b.queues, b.dead = queues, false
	for _, q := range old {
		_ = q.close()
	}
	if b.kp != nil {
		// Its egress program went with the old device; the maps stay
		// pinned for the kernel path attached to the new one.
		_ = b.kp.Release()
		b.kp = nil
	}
	b.replaced()
	if old != nil {
		b.log.Warn("TUN device recreated", "device", plan.UDPDevice, "queues", len(queues), "tun_uso", uso)
	} else {
		b.log.Debug("TUN device opened", "device", plan.UDPDevice, "queues", len(queues), "tun_uso", uso)
	}
	return nil
}

// replaced tells the running loops that the queues or the kernel path
// changed. Called with mu held.
func (b *Backend) replaced() {
	close(b.swapped)
	b.swapped = make(chan struct{})
}

// attachKernelPath attaches the eBPF fast path when the config allows it
// and the node can use it (its public IP is a local address on a known
// underlay device, the kernel has what the programs need); otherwise every packet takes the
// userspace path and kpWhy says why. Called with mu held.
func (b *Backend) attachKernelPath(bind netip.Addr) {
	switch {
	case !b.kernelPath && !b.offload:
		b.kpWhy = "off (Offload is false)"
	case !b.kernelPath:
		b.kpWhy = "off (KernelPath is false)"
	case bind.IsUnspecified():
		b.kpWhy = "public IP is not a local address"
	case b.node.Iface == "":
		b.kpWhy = "no underlay device"
	}
	if b.kpWhy != "" {
		// A kernel path an earlier twilld left (pinned links, tc filters)
		// would go on taking the datagrams.
		b.removeKernelPath()
		return
	}
	cfg := kernelpath.Config{TUN: plan.UDPDevice, Underlay: b.node.Iface, LocalIP: bind, Port: uint16(b.port), Attach: b.kpAttach}
	if dir, err := kernelpath.PinDir(b.Namespace()); err != nil {
		b.log.Warn("kernel path: nothing pinned, so it will not outlive twilld", "err", err)
	} else {
		cfg.PinDir = dir
	}
	start := time.Now()
	kp, err := kernelpath.Attach(b.Namespace(), cfg)
	if err != nil {
		b.kpWhy = err.Error()
		b.log.Info("kernel path unavailable; every packet takes the userspace path", "reason", err)
		b.removeKernelPath()
		return
	}
	b.kp, b.kpCfg = kp, &cfg
	if kp.Adopted() {
		b.kpHold = true
		b.log.Info("kernel path taken over from the earlier twilld", "attachment", kp.Attachment(),
			"peers", len(kp.Peers()), "pods", len(kp.Pods()), "took", time.Since(start).Round(time.Microsecond))
		time.AfterFunc(adoptGrace, b.releaseHeldPeers)
	}
	if s := b.local.Load(); s != nil {
		if err := errors.Join(kp.SetSubnet(*s), kp.SetPeers(b.kpPeers)); err != nil {
			b.log.Warn("kernel path: program the peers", "err", err)
		}
	}
	b.replaced()
}

// adoptGrace is how long the kernel path keeps the peers an earlier
// twilld left when no peer's lease comes (a node without peers).
const adoptGrace = 30 * time.Second

// Handle hands the peers' lease events to the Router. The first one ends
// the hold on the peers the kernel path took over.
func (b *Backend) Handle(ctx context.Context, evs []lease.Event) error {
	b.mu.Lock()
	b.kpHold = false
	b.mu.Unlock()
	return b.Router.Handle(ctx, evs)
}

// releaseHeldPeers ends the hold on the taken-over peers: the kernel
// path's peers are the plan's from now on.
func (b *Backend) releaseHeldPeers() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.kpHold {
		return
	}
	b.kpHold = false
	if b.kp != nil && b.local.Load() != nil {
		if err := b.kp.SetPeers(b.kpPeers); err != nil {
			b.log.Warn("kernel path: program the peers", "err", err)
		}
	}
}

// removeKernelPath removes a kernel path an earlier twilld left in the
// namespace (pins, tc filters on the underlay). Called with mu held.
func (b *Backend) removeKernelPath() {
	var devs []string
	if b.node.Iface != "" {
		devs = append(devs, b.node.Iface)
	}
	if err := kernelpath.Cleanup(b.Namespace(), devs...); err != nil {
		b.log.Warn("remove the kernel path an earlier twilld left", "err", err)
	}
}

// kpAttachment is how the kernel path is attached ("tcx", "tc"), or
// "none". Called with mu held.
func (b *Backend) kpAttachment() string {
	if b.kp == nil {
		return "none"
	}
	return b.kp.Attachment()
}

// prepared is Prepare's result: the MTU, and the kernel path in the
// lease when it runs. Called with mu held.
func (b *Backend) prepared() backend.Prepared {
	p := backend.Prepared{MTU: b.mtu}
	if b.kpCfg != nil {
		p.BackendData, _ = json.Marshal(backendData{KernelPath: true})
	}
	return p
}

// onPlan is the Router's plan hook: it swaps in the new peer table (a new
// peer can be reached as soon as Handle returns; an expired one no longer,
// and its counters go) and programs the kernel path's peers.
func (b *Backend) onPlan(p routing.Planned) error {
	s := p.Own.Subnet.Masked()
	b.local.Store(&s)
	entries := make([]peerEntry, 0, len(p.Plan.Peers))
	kpPeers := make(map[netip.Prefix]kernelpath.Peer, len(p.Plan.Peers))
	for _, pe := range p.Plan.Peers {
		entries = append(entries, peerEntry{Subnet: pe.Subnet, PublicIP: pe.PublicIP})
		kpPeers[pe.Subnet] = kernelpath.Peer{PublicIP: pe.PublicIP, Send: advertisesKernelPath(p.Peers[pe.Subnet])}
	}
	b.table.Store(newPeerTable(b.table.Load(), entries, b.port))
	b.mu.Lock()
	defer b.mu.Unlock()
	b.kpPeers = kpPeers
	if b.kp == nil {
		return nil
	}
	if b.kpHold {
		// Until the peers' leases are known, the taken-over peers stay.
		held := b.kp.Peers()
		maps.Copy(held, kpPeers)
		kpPeers = held
	}
	return errors.Join(b.kp.SetSubnet(s), b.kp.SetPeers(kpPeers))
}

// Status is the Router's (the route in sync, the peers the plan left out)
// with udp's own: node-wide drops, the mode, per-peer counters from the
// loops' atomics and the kernel path's.
func (b *Backend) Status() backend.Status {
	st := b.Router.Status()
	st.Drops = b.drops.snapshot()
	g, _ := b.current()
	b.mu.Lock()
	kp, why := b.kp, b.kpWhy
	b.mu.Unlock()
	st.Mode = "userspace"
	if kp != nil {
		st.Mode = "kernel path (" + kp.Attachment() + ")"
	} else if why != "" {
		st.Mode = "userspace (kernel path: " + why + ")"
	}
	if g.lost != "" {
		st.InSync = false
		st.Problems = append(st.Problems, "data path broken: "+g.lost)
	}
	st.Peers = b.table.Load().status()
	for i := range st.Peers {
		st.Peers[i].UserspaceTxBytes, st.Peers[i].UserspaceRxBytes = st.Peers[i].TxBytes, st.Peers[i].RxBytes
	}
	if kp == nil {
		return st
	}
	kc, err := kp.Counters()
	if err != nil {
		st.Problems = append(st.Problems, err.Error())
	}
	for i := range st.Peers {
		c, ok := kc[st.Peers[i].Subnet]
		if !ok {
			continue
		}
		ps := &st.Peers[i]
		ps.TxPackets += c.TxPackets
		ps.TxBytes += c.TxBytes
		ps.RxPackets += c.RxPackets
		ps.RxBytes += c.RxBytes
		if c.LastReceived.After(ps.LastSeen) {
			ps.LastSeen = c.LastReceived
		}
	}
	return st
}

// Cleanup closes twill0's queues, the sockets and the kernel path, waits
// for Run to stop (it returns nil), so that its reconciler cannot put
// anything back, and has the Router remove twill0 (also a persistent one,
// left by a tool), twill's routes and the nftables table.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	errs := b.takeDown(true)
	running := b.running
	b.mu.Unlock()
	if running != nil {
		select {
		case <-running:
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("wait for the packet loops to stop: %w", ctx.Err()))...)
		}
	}
	// The kernel path a stopped twilld left: its pins (tcx links and maps)
	// and tc filters on the underlay (those on twill0 go with it).
	var devs []string
	if b.node.Iface != "" {
		devs = append(devs, b.node.Iface)
	}
	if err := kernelpath.Cleanup(b.Namespace(), devs...); err != nil {
		errs = append(errs, fmt.Errorf("remove the kernel path: %w", err))
	}
	errs = append(errs, b.Router.Cleanup(ctx))
	b.table.Store(newPeerTable(nil, nil, b.port))
	return errors.Join(errs...)
}

// Close lets go of the data path as a stopping twilld does, and leaves it
// in the kernel for the next one: twill0 (persistent) with its address and
// routes, the kernel path attached with its maps pinned, the nftables
// table. It closes the queues, the sockets and the Router's handles; Run
// must have ended. Cleanup removes what Close leaves.
func (b *Backend) Close() error {
	b.mu.Lock()
	errs := b.takeDown(false)
	b.mu.Unlock()
	return errors.Join(append(errs, b.Router.Close())...)
}

// takeDown closes the queues, the sockets and the kernel path (detached
// with detach, else left attached and pinned), and wakes the loops.
// Called with mu held.
func (b *Backend) takeDown(detach bool) []error {
	var errs []error
	b.up = false
	for _, q := range b.queues {
		if err := q.close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", plan.UDPDevice, err))
		}
	}
	for _, s := range b.socks {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close udp socket: %w", err))
		}
	}
	b.queues, b.socks, b.dead = nil, nil, false
	if b.kp != nil {
		var err error
		if detach {
			err = b.kp.Close()
		} else {
			err = b.kp.Release()
		}
		if err != nil {
			errs = append(errs, err)
		}
		b.kp = nil
	}
	b.kpCfg, b.kpWhy, b.kpHold = nil, "", false
	b.replaced()
	return errs
}

// backendData is what a udp node publishes in its lease: nothing, as
// flannel, unless the kernel path runs; then peers on the kernel path send
// to it from the kernel too.
type backendData struct {
	KernelPath bool `json:",omitempty"`
}

// advertisesKernelPath reports whether the peer's lease says it runs the
// kernel path (and so takes datagrams whose inner checksum the kernel left
// partial).
func advertisesKernelPath(l lease.Lease) bool {
	var d backendData
	return len(l.Attrs.BackendData) > 0 && json.Unmarshal(l.Attrs.BackendData, &d) == nil && d.KernelPath
}
