package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/kernel"
	"github.com/twillnet/twill/overlay/kernel/nft"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// tunOffset is the room left in front of each packet buffer: the TUN
// writes its virtio-net header there when offloads are on.
const tunOffset = 16

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

	mu       sync.Mutex // guards the control-path fields below
	ns       netns.NsHandle
	nl       *netlink.Handle
	kh       *kernel.Handle
	rec      *kernel.Reconciler
	nft      *nft.Table
	dev      tun.Device
	conn     *net.UDPConn
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
}

var _ backend.Backend = (*Backend)(nil)

// New returns a udp backend for node. It touches nothing until Prepare (or
// Cleanup). A nil log discards.
func New(node backend.Node, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{node: node, log: log.With("backend", netconf.TypeUDP), port: netconf.DefaultUDPPort,
		offload: true, ns: netns.None(), leases: map[netip.Prefix]lease.Lease{}}
	if node.Network != nil {
		if node.Network.Backend.Port != 0 {
			b.port = node.Network.Backend.Port
		}
		b.offload = node.Network.Backend.Offload
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
	b.nl, err = netlink.NewHandleAt(b.ns)
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
// until SetLease. udp publishes no BackendData.
func (b *Backend) Prepare(ctx context.Context) (backend.Prepared, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dev != nil {
		return backend.Prepared{MTU: b.mtu}, nil
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
		tunFD = -1
		uc    *net.UDPConn
	)
	err := inNetNS(b.ns, func() error {
		var err error
		tunFD, err = openTUN(plan.UDPDevice, b.offload)
		if err != nil {
			return err
		}
		uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(bind, uint16(b.port))))
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			// The public IP is not on this host (a NAT's address): listen
			// on all addresses, as flannel does.
			b.log.Warn("public IP is not a local address; listening on all addresses", "public_ip", bind)
			bind = netip.IPv4Unspecified()
			uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(bind, uint16(b.port))))
		}
		if err != nil {
			unix.Close(tunFD)
			return fmt.Errorf("listen on udp %s:%d: %w", bind, b.port, err)
		}
		return nil
	})
	if err != nil {
		return backend.Prepared{}, err
	}
	setSocketBuffers(uc, b.log)
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(tunFD)
	if err != nil {
		uc.Close()
		unix.Close(tunFD)
		return backend.Prepared{}, fmt.Errorf("set up TUN %s: %w", plan.UDPDevice, err)
	}
	link, err := b.nl.LinkByName(plan.UDPDevice)
	if err == nil {
		err = b.nl.LinkSetMTU(link, b.mtu)
	}
	if err == nil {
		err = b.nl.LinkSetUp(link)
	}
	if err != nil {
		dev.Close()
		uc.Close()
		return backend.Prepared{}, fmt.Errorf("set MTU %d and bring up %s: %w", b.mtu, plan.UDPDevice, err)
	}
	b.dev, b.conn = dev, uc
	b.log.Info("TUN device ready", "device", plan.UDPDevice, "mtu", b.mtu, "listen", uc.LocalAddr(),
		"offload", b.offload, "batch", dev.BatchSize())
	return backend.Prepared{MTU: b.mtu}, nil
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
	if b.dev == nil {
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
		Network: b.node.Network.Network,
		Backend: b.node.Network.Backend,
		Own:     b.own,
		Peers:   peers,
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
	b.problems = b.problems[:0]
	for _, pr := range p.Problems {
		b.problems = append(b.problems, pr.String())
	}
	var errs []error
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

// Run moves packets between twill0 and the UDP socket, and keeps the route
// in place, until ctx ends. The device and socket stay open afterwards (pods
// keep their routes; the device goes when the process ends or on Cleanup).
func (b *Backend) Run(ctx context.Context) error {
	b.mu.Lock()
	dev, uc, rec := b.dev, b.conn, b.rec
	if dev == nil {
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
	_ = uc.SetReadDeadline(time.Time{})
	_ = dev.File().SetReadDeadline(time.Time{})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() {
		if err := rec.Run(ctx); err != nil && ctx.Err() == nil {
			errc <- err
		}
	})
	// A loop ends with nil when Cleanup closed the device or the socket;
	// Run then stops as if ctx had ended.
	loop := func(f func(context.Context, tun.Device, *net.UDPConn) error) {
		err := f(ctx, dev, uc)
		if err != nil && ctx.Err() == nil {
			errc <- err
		}
		cancel()
	}
	wg.Go(func() { loop(b.tunLoop) })
	wg.Go(func() { loop(b.udpLoop) })
	<-ctx.Done()
	now := time.Now()
	_ = uc.SetReadDeadline(now)
	_ = dev.File().SetReadDeadline(now)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tunLoop reads packets from twill0 and sends each to the peer whose subnet
// holds its destination; a packet for a subnet nobody holds is answered
// with ICMP net unreachable.
func (b *Backend) tunLoop(ctx context.Context, dev tun.Device, uc *net.UDPConn) error {
	batch := dev.BatchSize()
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	msgs := make([]ipv4.Message, batch)
	dst := make([]*peer, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+maxPacket)
		msgs[i].Buffers = make([][]byte, 1)
	}
	pc := ipv4.NewPacketConn(uc)
	icmp := make([]byte, tunOffset+576)
	limit := tokenBucket{rate: icmpRate, burst: icmpBurst}
	for {
		n, err := dev.Read(bufs, sizes, tunOffset)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				b.drops.add(DropMalformed, 1)
				continue
			}
			return fmt.Errorf("read from %s: %w", plan.UDPDevice, err)
		}
		t := b.table.Load()
		k := 0
		for i := range n {
			pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
			if len(pkt) > 0 && pkt[0]>>4 != 4 {
				b.drops.add(DropNotIPv4, 1)
				continue
			}
			if !validIPv4(pkt) {
				b.drops.add(DropMalformed, 1)
				continue
			}
			p := t.lookup(pkt[16:20])
			if p == nil {
				b.drops.add(DropNoRoute, 1)
				if limit.allow(time.Now()) {
					b.answerUnreachable(dev, icmp, pkt)
				}
				continue
			}
			msgs[k].Buffers[0] = pkt
			msgs[k].Addr = p.addr
			dst[k] = p
			k++
		}
		for off := 0; off < k; {
			m, err := pc.WriteBatch(msgs[off:k], 0)
			for j := off; j < off+m; j++ {
				dst[j].c.txPackets.Add(1)
				dst[j].c.txBytes.Add(uint64(len(msgs[j].Buffers[0])))
			}
			off += m
			if err != nil || m == 0 {
				if errors.Is(err, net.ErrClosed) {
					return nil
				}
				// The first unsent datagram failed; skip it.
				if off < k {
					dst[off].c.drops.add(DropUDPSend, 1)
					off++
				}
			}
		}
	}
}

// answerUnreachable writes ICMP net unreachable for pkt into twill0. Its
// source is the network address of the unreachable subnet (SubnetLen bits of
// the destination): nobody holds that subnet, the kernel routes it to
// twill0, so the answer passes reverse-path checks, and it is not one of the
// node's own addresses (which the kernel would drop as a martian).
func (b *Backend) answerUnreachable(dev tun.Device, buf, pkt []byte) {
	bits := b.node.Network.SubnetLen
	if bits <= 0 || bits > 32 {
		bits = 24
	}
	from := netip.PrefixFrom(netip.AddrFrom4([4]byte(pkt[16:20])), bits).Masked().Addr()
	out := netUnreachable(buf[tunOffset:], pkt, from)
	if out == nil {
		return
	}
	if _, err := dev.Write([][]byte{buf[:tunOffset+len(out)]}, tunOffset); err != nil {
		b.drops.add(DropTUNWrite, 1)
	}
}

// udpLoop receives datagrams, checks them (decap) and writes the packets
// that pass into twill0.
func (b *Backend) udpLoop(ctx context.Context, dev tun.Device, uc *net.UDPConn) error {
	batch := conn.IdealBatchSize
	bufs := make([][]byte, batch)
	msgs := make([]ipv4.Message, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+maxPacket)
		msgs[i].Buffers = [][]byte{bufs[i][tunOffset:]}
	}
	out := make([][]byte, 0, batch)
	pc := ipv4.NewPacketConn(uc)
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("receive from udp %s: %w", uc.LocalAddr(), err)
		}
		t := b.table.Load()
		var local netip.Prefix
		if l := b.local.Load(); l != nil {
			local = *l
		}
		now := time.Now().UnixNano()
		out = out[:0]
		for i := range n {
			m := &msgs[i]
			var from netip.Addr
			if ua, ok := m.Addr.(*net.UDPAddr); ok {
				from, _ = netip.AddrFromSlice(ua.IP)
			}
			dg := bufs[i][tunOffset : tunOffset+m.N]
			if m.Flags&unix.MSG_TRUNC != 0 {
				dg = nil // cannot be whole; decap calls it malformed if from a peer
			}
			r := decap(t, local, from, dg)
			if r.drop != "" {
				if r.peer != nil {
					r.peer.c.drops.add(r.drop, 1)
				} else {
					b.drops.add(r.drop, 1)
				}
				continue
			}
			c := r.peer.c
			c.rxPackets.Add(1)
			c.rxBytes.Add(uint64(len(dg)))
			c.lastSeen.Store(now)
			out = append(out, bufs[i][:tunOffset+len(dg)])
		}
		if len(out) == 0 {
			continue
		}
		if _, err := dev.Write(out, tunOffset); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			b.drops.add(DropTUNWrite, uint64(countErrors(err)))
		}
	}
}

// countErrors counts the leaves of a tree of joined errors: the TUN's Write
// joins one error per packet it could not write.
func countErrors(err error) int {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		n := 0
		for _, e := range j.Unwrap() {
			n += countErrors(e)
		}
		return n
	}
	if err == nil {
		return 0
	}
	return 1
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
	nl := b.nl
	b.mu.Unlock()
	if nl != nil {
		if l, err := nl.LinkByName(plan.UDPDevice); err == nil {
			st.DeviceUp = l.Attrs().Flags&net.FlagUp != 0
		}
	}
	st.Peers = b.table.Load().status()
	return st
}

// Cleanup closes and removes twill0, removes twill's routes and the
// nftables table from the node's namespace. A running Run stops (it returns
// nil) before the routes are removed, so that its reconciler cannot put
// them back.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	var errs []error
	if b.dev != nil {
		if err := b.dev.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", plan.UDPDevice, err))
		}
		if err := b.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close udp socket: %w", err))
		}
		b.dev, b.conn = nil, nil
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
