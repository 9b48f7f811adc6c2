package udp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twillnet/twill/overlay/namespace"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/kernel"
	"github.com/twillnet/twill/overlay/kernel/nft"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// maxPacket is the largest IPv4 packet.
const maxPacket = 65535

// socketBuffer is the UDP socket's send and receive buffer size.
const socketBuffer = 8 << 20

// icmpRate and icmpBurst limit ICMP net unreachable answers (per second).
const (
	icmpRate  = 10
	icmpBurst = 10
)

// Backend is the udp backend. Create it with New.
type Backend struct {
	node    backend.Node
	log     *slog.Logger
	port    int
	offload bool
	// kernelPath is whether Prepare tries the eBPF fast path.
	kernelPath bool

	mu       sync.Mutex // guards the control-path fields below
	ns       netns.NsHandle
	nl       *netlink.Handle
	kh       *kernel.Handle
	rec      *kernel.Reconciler
	nft      *nft.Table
	queues   []*tunQueue      // the TUN's queues; nil before Prepare
	socks    []*net.UDPConn   // one per queue (SO_REUSEPORT when several)
	kp       *kernelpath.Path // the kernel fast path; nil when not attached
	kpWhy    string           // why there is no kernel path
	mtu      int
	own      lease.Lease
	haveOwn  bool
	leases   map[netip.Prefix]lease.Lease
	problems []string
	applied  error         // the last synchronous apply's result
	running  chan struct{} // non-nil while Run runs; closed when it returns

	// The packet loops read these without locks.
	table atomic.Pointer[peerTable]
	local atomic.Pointer[netip.Prefix]
	drops drops // node-wide drops
	// gso is whether sends may use UDP GSO (off with Offload false, or
	// once the kernel refused it).
	gso atomic.Bool
	// nqueues is how many TUN queues and sockets Prepare makes.
	nqueues int
}

var _ backend.Backend = (*Backend)(nil)

// New returns a udp backend for node. It touches nothing until Prepare (or
// Cleanup). A nil log discards.
func New(node backend.Node, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{node: node, log: log.With("backend", netconf.TypeUDP), port: netconf.DefaultUDPPort,
		offload: true, ns: netns.None(), leases: map[netip.Prefix]lease.Lease{}, nqueues: defaultQueues()}
	if node.Network != nil {
		if node.Network.Backend.Port != 0 {
			b.port = node.Network.Backend.Port
		}
		b.offload = node.Network.Backend.Offload
		b.kernelPath = node.Network.Backend.KernelPath && b.offload
	}
	b.table.Store(newPeerTable(nil, nil, b.port))
	return b
}

// Type is "udp".
func (b *Backend) Type() string { return netconf.TypeUDP }

// open takes the handles Prepare and Cleanup need: the namespace, netlink,
// overlay/kernel and the nftables table. Called with mu held.
func (b *Backend) open() error {
	if b.nl != nil {
		return nil
	}
	var err error
	if b.node.NetNS != "" {
		b.ns, err = netns.GetFromPath(b.node.NetNS)
	} else {
		b.ns, err = currentNetNS()
	}
	if err != nil {
		return err
	}
	b.nl, err = netlink.NewHandleAt(b.ns, unix.NETLINK_ROUTE)
	if err != nil {
		b.ns.Close()
		return fmt.Errorf("netlink handle in network namespace: %w", err)
	}
	b.kh, err = kernel.Open(b.ns, b.log)
	if err != nil {
		b.nl.Close()
		b.ns.Close()
		b.nl = nil
		return err
	}
	b.rec = kernel.NewReconciler(b.kh, kernel.ReconcilerOptions{Log: b.log})
	b.nft = nft.New(b.log, nft.InNetNS(int(b.ns)))
	return nil
}

// Prepare creates the TUN device twill0 (MTU: the config's, else the
// underlay's minus 28) and the UDP socket on the node's public IP, port
// Port, both in the node's namespace. The device stays without an address
// until SetLease. udp publishes no BackendData, as flannel, unless the
// kernel path runs ({"KernelPath":true}).
func (b *Backend) Prepare(ctx context.Context) (backend.Prepared, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queues != nil {
		return b.prepared(), nil
	}
	if b.node.Network == nil {
		return backend.Prepared{}, errors.New("udp backend: no network config")
	}
	if err := b.open(); err != nil {
		return backend.Prepared{}, err
	}
	b.mtu = plan.MTU(b.node.Network.Backend, b.node.IfaceMTU)
	if b.mtu <= 0 {
		b.mtu = 1500 - plan.Overhead(netconf.TypeUDP)
	}
	bind := netip.IPv4Unspecified()
	if b.node.PublicIP.Is4() {
		bind = b.node.PublicIP
	}
	var (
		queues []*tunQueue
		socks  []*net.UDPConn
		uso    bool
	)
	closeAll := func() {
		for _, q := range queues {
			q.f.Close()
		}
		for _, s := range socks {
			s.Close()
		}
	}
	err := namespace.Do(b.ns, func() error {
		var err error
		queues, uso, err = openTUNQueues(plan.UDPDevice, b.nqueues, b.offload)
		if err != nil {
			return err
		}
		for range b.nqueues {
			uc, err := listenUDP(ctx, bind, b.port, b.nqueues > 1)
			if errors.Is(err, unix.EADDRNOTAVAIL) && len(socks) == 0 {
				// The public IP is not on this host (a NAT's address): listen
				// on all addresses, as flannel does.
				b.log.Warn("public IP is not a local address; listening on all addresses", "public_ip", bind)
				bind = netip.IPv4Unspecified()
				uc, err = listenUDP(ctx, bind, b.port, b.nqueues > 1)
			}
			if err != nil {
				return fmt.Errorf("listen on udp %s:%d: %w", bind, b.port, err)
			}
			socks = append(socks, uc)
		}
		return nil
	})
	if err != nil {
		closeAll()
		return backend.Prepared{}, err
	}
	gro := false
	for _, uc := range socks {
		setSocketBuffers(uc, b.log)
		if b.offload {
			gro = setGRO(uc) == nil
		}
	}
	b.gso.Store(b.offload)
	link, err := b.nl.LinkByName(plan.UDPDevice)
	if err == nil {
		err = b.nl.LinkSetMTU(link, b.mtu)
	}
	if err == nil {
		err = b.nl.LinkSetUp(link)
	}
	if err != nil {
		closeAll()
		return backend.Prepared{}, fmt.Errorf("set MTU %d and bring up %s: %w", b.mtu, plan.UDPDevice, err)
	}
	b.queues, b.socks = queues, socks
	b.attachKernelPath(bind)
	if b.kp != nil && gro {
		// GRO would merge a peer's datagrams before the ingress program sees
		// them (on devices that do GRO), and merged ones take the slow path.
		for _, uc := range socks {
			_ = setGROValue(uc, 0)
		}
		gro = false
	}
	b.log.Info("TUN device ready", "device", plan.UDPDevice, "mtu", b.mtu, "listen", socks[0].LocalAddr(),
		"offload", b.offload, "queues", len(queues), "udp_gro", gro, "tun_uso", uso, "kernel_path", b.kp != nil)
	return b.prepared(), nil
}

// attachKernelPath attaches the eBPF fast path when the config allows it
// and the node can use it (its public IP is a local address on a known
// underlay device, the kernel has tcx); otherwise every packet takes the
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
		return
	}
	kp, err := kernelpath.Attach(b.ns, kernelpath.Config{TUN: plan.UDPDevice, Underlay: b.node.Iface,
		LocalIP: bind, Port: uint16(b.port)})
	if err != nil {
		b.kpWhy = err.Error()
		b.log.Info("kernel path unavailable; every packet takes the userspace path", "reason", err)
		return
	}
	b.kp = kp
}

// prepared is Prepare's result: the MTU, and the kernel path in the
// lease when it runs. Called with mu held.
func (b *Backend) prepared() backend.Prepared {
	p := backend.Prepared{MTU: b.mtu}
	if b.kp != nil {
		p.BackendData, _ = json.Marshal(backendData{KernelPath: true})
	}
	return p
}

// listenUDP opens the UDP socket on bind:port, with SO_REUSEPORT when
// several sockets share the port (one per TUN queue).
func listenUDP(ctx context.Context, bind netip.Addr, port int, reuse bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{}
	if reuse {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	pc, err := lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(bind, uint16(port)).String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// setGRO turns on UDP GRO on the socket: the kernel then hands over runs
// of datagrams of one flow in one message (older kernels refuse it;
// single datagrams then).
func setGRO(uc *net.UDPConn) error { return setGROValue(uc, 1) }

func setGROValue(uc *net.UDPConn, v int) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, v)
	})
	return errors.Join(err, serr)
}

// defaultQueues is how many TUN queues (and sockets, and loop pairs) a
// backend uses: one per two CPUs, at most four; the environment variable
// TWILL_UDP_QUEUES overrides it (for measurements). Datagrams from one peer
// all carry the same ports, so SO_REUSEPORT hands them to one socket: more
// queues spread the sending side (the TUN hashes flows to queues) and
// several peers, not one peer's receiving side.
func defaultQueues() int {
	if v, err := strconv.Atoi(os.Getenv("TWILL_UDP_QUEUES")); err == nil && v > 0 && v <= 16 {
		return v
	}
	return max(1, min(runtime.NumCPU()/2, 4))
}

// setSocketBuffers makes the socket's buffers big enough for bursts of a
// TCP window, beyond net.core.[rw]mem_max if the process may (root).
func setSocketBuffers(uc *net.UDPConn, log *slog.Logger) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer); err != nil {
					log.Warn("set UDP socket buffer", "err", err)
				}
			}
		}
	})
}

// SetLease gives twill0 this node's subnet address (the subnet's .0 as a
// /32, so the kernel adds no prefix route of its own), routes the cluster
// network to twill0 and rebuilds the peer table and nftables rules.
func (b *Backend) SetLease(ctx context.Context, own lease.Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queues == nil {
		return errors.New("udp backend: SetLease before Prepare")
	}
	s := own.Subnet.Masked()
	if !s.Addr().Is4() {
		return fmt.Errorf("udp backend: own subnet %v is not IPv4", own.Subnet)
	}
	b.own, b.haveOwn = own, true
	b.local.Store(&s)
	if err := b.setAddress(netip.PrefixFrom(s.Addr(), 32)); err != nil {
		return err
	}
	if b.kp != nil {
		if err := b.kp.SetSubnet(s); err != nil {
			return err
		}
	}
	return b.rebuild(true)
}

// setAddress makes addr twill0's only IPv4 address.
func (b *Backend) setAddress(addr netip.Prefix) error {
	link, err := b.nl.LinkByName(plan.UDPDevice)
	if err != nil {
		return fmt.Errorf("find %s: %w", plan.UDPDevice, err)
	}
	have, err := b.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", plan.UDPDevice, err)
	}
	var errs []error
	found := false
	for _, a := range have {
		ones, _ := a.Mask.Size()
		ip, _ := netip.AddrFromSlice(a.IP)
		if netip.PrefixFrom(ip.Unmap(), ones) == addr {
			found = true
			continue
		}
		if err := b.nl.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("remove old address %s from %s: %w", a.IPNet, plan.UDPDevice, err))
		}
	}
	if !found {
		na := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
		if err := b.nl.AddrAdd(link, na); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", addr, plan.UDPDevice, err))
		}
	}
	return errors.Join(errs...)
}

// Handle records peers' lease events and rebuilds the peer table (a new
// peer can be reached as soon as Handle returns; an expired one no longer,
// and its counters go) and the nftables rules.
func (b *Backend) Handle(ctx context.Context, events []lease.Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range events {
		if e.Type == lease.Expired {
			delete(b.leases, e.Lease.Subnet)
			continue
		}
		b.leases[e.Lease.Subnet] = e.Lease
	}
	if !b.haveOwn {
		return nil
	}
	return b.rebuild(false)
}

// rebuild computes the plan from the leases, swaps in the new peer table,
// hands the routes to the reconciler (applying them at once when apply is
// set) and applies the nftables rules. Called with mu held.
func (b *Backend) rebuild(apply bool) error {
	peers := make([]lease.Lease, 0, len(b.leases))
	for _, l := range b.leases {
		peers = append(peers, l)
	}
	p, err := plan.Build(plan.Input{
		Network:   b.node.Network.Network,
		SubnetLen: b.node.Network.SubnetLen,
		Backend:   b.node.Network.Backend,
		Own:       b.own,
		Peers:     peers,
		Underlay: plan.Underlay{Device: b.node.Iface, PublicIP: b.node.PublicIP,
			Prefix: b.node.IfacePrefix, MTU: b.node.IfaceMTU},
		Device: plan.UDPDevice,
	})
	if err != nil {
		return fmt.Errorf("plan udp data path: %w", err)
	}
	p.MTU = b.mtu
	entries := make([]peerEntry, 0, len(p.Peers))
	subnets := make([]netip.Prefix, 0, len(p.Peers))
	for _, pe := range p.Peers {
		entries = append(entries, peerEntry{Subnet: pe.Subnet, PublicIP: pe.PublicIP})
		subnets = append(subnets, pe.Subnet)
	}
	b.table.Store(newPeerTable(b.table.Load(), entries, b.port))
	var errs []error
	if b.kp != nil {
		m := make(map[netip.Prefix]kernelpath.Peer, len(entries))
		for _, e := range entries {
			m[e.Subnet] = kernelpath.Peer{PublicIP: e.PublicIP, Send: advertisesKernelPath(b.leases[e.Subnet])}
		}
		if err := b.kp.SetPeers(m); err != nil {
			errs = append(errs, err)
		}
	}
	b.problems = b.problems[:0]
	for _, pr := range p.Problems {
		b.problems = append(b.problems, pr.String())
	}
	if apply {
		if _, err := b.kh.Apply(p); err != nil {
			errs = append(errs, fmt.Errorf("route %s to %s: %w", b.node.Network.Network, plan.UDPDevice, err))
		}
		b.applied = errors.Join(errs...)
	}
	b.rec.Set(p)
	err = b.nft.Apply(nft.Rules{ClusterNetwork: b.node.Network.Network, NodeSubnet: b.own.Subnet.Masked(),
		Masquerade: b.node.IPMasq, Peers: subnets})
	if err != nil {
		errs = append(errs, fmt.Errorf("apply nftables rules: %w", err))
	}
	return errors.Join(errs...)
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

// Run moves packets between twill0 and the UDP socket, and keeps the route
// in place, until ctx ends. The device and socket stay open afterwards (pods
// keep their routes; the device goes when the process ends or on Cleanup).
func (b *Backend) Run(ctx context.Context) error {
	b.mu.Lock()
	queues, socks, rec, kp, ns := b.queues, b.socks, b.rec, b.kp, b.ns
	if queues == nil {
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

	// Deadlines in the past are how the loops are stopped; clear any from
	// an earlier Run.
	for i := range queues {
		_ = socks[i].SetReadDeadline(time.Time{})
		_ = queues[i].f.SetReadDeadline(time.Time{})
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1+2*len(queues))
	wg.Go(func() {
		if err := rec.Run(ctx); err != nil && ctx.Err() == nil {
			errc <- err
		}
	})
	if kp != nil {
		wg.Go(func() {
			subnet := func() (netip.Prefix, bool) {
				s := b.local.Load()
				if s == nil {
					return netip.Prefix{}, false
				}
				return *s, true
			}
			if err := kp.WatchPods(ctx, ns, subnet, b.log); err != nil && ctx.Err() == nil {
				b.log.Warn("kernel path: no direct delivery to pods", "err", err)
			}
		})
	}
	// A loop ends with nil when Cleanup closed the device or the socket;
	// Run then stops as if ctx had ended.
	loop := func(f func() error) {
		err := f()
		if err != nil && ctx.Err() == nil {
			errc <- err
		}
		cancel()
	}
	for i, q := range queues {
		uc := socks[i]
		rc, err := uc.SyscallConn()
		if err != nil {
			cancel()
			break
		}
		wg.Go(func() { loop(func() error { return b.txLoop(ctx, q, rc) }) })
		wg.Go(func() { loop(func() error { return b.rxLoop(ctx, q, uc) }) })
	}
	<-ctx.Done()
	now := time.Now()
	for i := range queues {
		_ = socks[i].SetReadDeadline(now)
		_ = queues[i].f.SetReadDeadline(now)
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tokenBucket is a rate limiter for one goroutine.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (t *tokenBucket) allow(now time.Time) bool {
	if t.last.IsZero() {
		t.tokens = t.burst
	} else {
		t.tokens = min(t.burst, t.tokens+now.Sub(t.last).Seconds()*t.rate)
	}
	t.last = now
	if t.tokens < 1 {
		return false
	}
	t.tokens--
	return true
}

// Resync compares and repairs the route now.
func (b *Backend) Resync() {
	b.mu.Lock()
	rec := b.rec
	b.mu.Unlock()
	if rec != nil {
		rec.Kick()
	}
}

// Status reports the per-peer counters, node-wide drops, the peers the plan
// left out, and whether the route is in place.
func (b *Backend) Status() backend.Status {
	b.mu.Lock()
	st := backend.Status{Problems: slices.Clone(b.problems), Drops: b.drops.snapshot(), Device: plan.UDPDevice}
	if rec := b.rec; rec != nil && rec.Status().Passes > 0 {
		ks := rec.Status()
		st.InSync = ks.InSync
		desired, actual := ks.Tables()
		st.Kernel = &backend.KernelState{
			Desired:  backend.KernelTables{Routes: desired.Routes, Neighbors: desired.Neighbors, FDB: desired.FDB},
			Actual:   backend.KernelTables{Routes: actual.Routes, Neighbors: actual.Neighbors, FDB: actual.FDB},
			LastPass: ks.LastPass,
		}
		if ks.LastError != nil {
			st.Kernel.LastError = ks.LastError.Error()
		}
	} else {
		st.InSync = b.haveOwn && b.applied == nil
	}
	nl, kp := b.nl, b.kp
	st.Mode = "userspace"
	if kp != nil {
		st.Mode = "kernel path"
	} else if b.kpWhy != "" {
		st.Mode = "userspace (kernel path: " + b.kpWhy + ")"
	}
	b.mu.Unlock()
	if nl != nil {
		if l, err := nl.LinkByName(plan.UDPDevice); err == nil {
			st.DeviceUp = l.Attrs().Flags&net.FlagUp != 0
		}
	}
	st.Peers = b.table.Load().status()
	if kp != nil {
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
	}
	return st
}

// Cleanup closes and removes twill0, removes twill's routes and the
// nftables table from the node's namespace. A running Run stops (it returns
// nil) before the routes are removed, so that its reconciler cannot put
// them back.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	var errs []error
	if b.queues != nil {
		for _, q := range b.queues {
			if err := q.close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", plan.UDPDevice, err))
			}
		}
		for _, uc := range b.socks {
			if err := uc.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close udp socket: %w", err))
			}
		}
		b.queues, b.socks = nil, nil
	}
	if b.kp != nil {
		if err := b.kp.Close(); err != nil {
			errs = append(errs, err)
		}
		b.kp = nil
	}
	running := b.running
	b.mu.Unlock()
	if running != nil {
		select {
		case <-running:
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("wait for the packet loops to stop: %w", ctx.Err()))...)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.open(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	// A persistent twill0 (left by a tool, not by twill) is deleted too.
	if link, err := b.nl.LinkByName(plan.UDPDevice); err == nil {
		if err := b.nl.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", plan.UDPDevice, err))
		}
	}
	if _, err := b.kh.Apply(plan.Plan{Backend: netconf.TypeUDP, Device: plan.UDPDevice}); err != nil {
		errs = append(errs, fmt.Errorf("remove twill's routes: %w", err))
	}
	if err := b.nft.Cleanup(); err != nil {
		errs = append(errs, fmt.Errorf("remove nftables table: %w", err))
	}
	b.table.Store(newPeerTable(nil, nil, b.port))
	b.haveOwn = false
	b.closeHandles()
	return errors.Join(errs...)
}

// closeHandles releases what open took. Called with mu held.
func (b *Backend) closeHandles() {
	if b.nl == nil {
		return
	}
	b.kh.Close()
	b.nl.Close()
	b.ns.Close()
	b.nl, b.kh, b.rec, b.nft, b.ns = nil, nil, nil, nil, netns.None()
}
