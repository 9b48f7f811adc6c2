package routing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/kernel"
	"github.com/twillnet/twill/overlay/kernel/nft"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// Config describes the backend a Router works for.
type Config struct {
	// Node is the node; its NetNS names the namespace to work in.
	Node backend.Node
	// Backend is the backend's type and options, defaults applied (the plan
	// is built with them rather than with Node.Network.Backend).
	Backend netconf.Backend
	// Device is the backend's device ("" for none, as host-gw).
	Device string
	// Device6 is the backend's IPv6 device, if it has a second one
	// (vxlan's twill-v6.<VNI>); Status and Cleanup cover it too.
	Device6 string
	// EnsureDevice, if set, creates or repairs the device. It is called by
	// Prepare-time code through Router.EnsureDevice and before every
	// reconcile pass, with the own lease's subnet (invalid before the
	// lease is known).
	EnsureDevice func(nl *netlink.Handle, own netip.Prefix) error
	// OnPlan, if set, is handed every new plan, synchronously, before the
	// reconciler gets it: the backend's own data path learns the peers
	// here (udp's peer table and kernel path; a BGP speaker's routes to
	// announce, WireGuard's peers and keys, from the leases). It runs with
	// the Router's lock held, so it must not call the Router; plans reach
	// it in the order they were made. Its error is returned by the
	// SetLease or Handle that replanned; the plan stands all the same.
	OnPlan func(Planned) error
	// OwnCounters says the backend counts per-peer traffic itself (udp):
	// Status then reads no nftables counters and leaves the peers'
	// counters zero for the backend to fill in.
	OwnCounters bool
	// Log receives what the Router does; nil discards it.
	Log *slog.Logger
	// Resync is how often the kernel state is checked without a netlink
	// event saying it changed (the reconciler's default when 0).
	Resync time.Duration
}

// PeersGrace is how long Run waits for the first Handle before it plans
// without peers (a node alone). Until the peers' leases were handed in once,
// no plan goes to OnPlan or the reconciler: the daemon sets the own lease
// before its watcher has listed the peers, and a plan of the own lease alone
// would take the peers' routes (and a kernel device's peers) off a node that
// restarts, until the list came (a SIGKILLed host-gw twilld lost 9 pings at
// 10 ms that way on a qemu VM).
const PeersGrace = time.Second

// Planned is what one replan produced, for Config.OnPlan.
type Planned struct {
	// Own is the node's own lease.
	Own lease.Lease
	// Plan is the new plan: the peers that can be routed, the kernel
	// state, the problems.
	Plan plan.Plan
	// Peers are the peers' leases as handed in, by subnet (an IPv6-only
	// lease by its IPv6 subnet), those the plan refused included: a copy
	// the hook may keep.
	Peers map[netip.Prefix]lease.Lease
}

// Router keeps the peers' routes, neighbours, FDB entries and nftables
// rules of one backend in one network namespace.
type Router struct {
	cfg Config
	log *slog.Logger

	ns  netns.NsHandle
	nl  *netlink.Handle
	kh  *kernel.Handle
	rec *kernel.Reconciler
	nft *nft.Table
	// nft6 is the ip6 twill table, for the IPv6 pod network; nil when the
	// network has none.
	nft6 *nft.Table

	// ensureMu serialises device repair (Prepare against reconcile passes).
	ensureMu sync.Mutex

	mu     sync.Mutex
	own    lease.Lease
	hasOwn bool
	// peers are the peers' leases by their subnets (both halves: an
	// IPv6-only lease has no IPv4 subnet to be known by).
	peers    map[lease.Subnets]lease.Lease
	learned  []plan.Learned
	plan     *plan.Plan
	rules    *nft.Rules
	rules6   *nft.Rules
	problems []string
	// handled says the peers were handed in once (see PeersGrace);
	// handedIn is closed then.
	handled  bool
	handedIn chan struct{}
}

// New opens the namespace named by cfg.Node.NetNS (the calling thread's
// when empty) and returns a Router for it. It changes nothing in the kernel.
func New(cfg Config) (*Router, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	recLog := log // the reconciler names the backend itself
	log = log.With("backend", cfg.Backend.Type)
	if cfg.Node.Network == nil {
		return nil, errors.New("routing: the node has no network config")
	}
	var ns netns.NsHandle
	var err error
	if cfg.Node.NetNS == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(cfg.Node.NetNS)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", cfg.Node.NetNS, err)
	}
	r := &Router{cfg: cfg, log: log, ns: ns, peers: map[lease.Subnets]lease.Lease{}, handedIn: make(chan struct{})}
	if r.nl, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink handle in network namespace %q: %w", cfg.Node.NetNS, err)
	}
	if r.kh, err = kernel.Open(ns, log); err != nil {
		r.nl.Close()
		ns.Close()
		return nil, err
	}
	r.nft = nft.New(log, nft.InNetNS(int(ns)))
	if cfg.Node.Network.EnableIPv6 {
		r.nft6 = nft.New(log, nft.InNetNS(int(ns)), nft.IPv6())
	}
	r.rec = kernel.NewReconciler(r.kh, kernel.ReconcilerOptions{Log: recLog, Resync: cfg.Resync, BeforePass: r.beforePass})
	return r, nil
}

// Close releases the namespace and the netlink sockets. The kernel state
// stays.
func (r *Router) Close() error {
	r.nl.Close()
	return errors.Join(r.kh.Close(), r.ns.Close())
}

// Netlink is the netlink handle into the Router's namespace, for the
// backend's device.
func (r *Router) Netlink() *netlink.Handle { return r.nl }

// Namespace is the Router's network namespace (the backend's to use, not
// to close), for the backend's own sockets and devices.
func (r *Router) Namespace() netns.NsHandle { return r.ns }

// EnsureDevice creates or repairs the backend's device now.
func (r *Router) EnsureDevice() error {
	if r.cfg.EnsureDevice == nil {
		return nil
	}
	r.mu.Lock()
	own := netip.Prefix{}
	if r.hasOwn {
		own = r.own.Subnet
	}
	r.mu.Unlock()
	r.ensureMu.Lock()
	defer r.ensureMu.Unlock()
	return r.cfg.EnsureDevice(r.nl, own)
}

// beforePass runs before each reconcile pass: the device first (routes
// through it need it), then the nftables table, which no netlink event
// watches and which is therefore repaired here too.
func (r *Router) beforePass() error {
	err := r.EnsureDevice()
	r.mu.Lock()
	rules, rules6 := r.rules, r.rules6
	r.mu.Unlock()
	if rules != nil {
		if nerr := r.nft.Apply(*rules); nerr != nil {
			err = errors.Join(err, fmt.Errorf("nftables: %w", nerr))
		}
	}
	if rules6 != nil && r.nft6 != nil {
		if nerr := r.nft6.Apply(*rules6); nerr != nil {
			err = errors.Join(err, fmt.Errorf("nftables ip6: %w", nerr))
		}
	}
	return err
}

// SetLease sets the node's own lease and replans.
func (r *Router) SetLease(_ context.Context, own lease.Lease) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.own, r.hasOwn = own, true
	delete(r.peers, own.Subnets())
	return r.replan()
}

// Handle applies peers' lease events and replans.
func (r *Router) Handle(_ context.Context, evs []lease.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.markHandled()
	for _, e := range evs {
		if r.hasOwn && e.Lease.Subnets() == r.own.Subnets() {
			continue
		}
		if e.Type == lease.Expired {
			delete(r.peers, e.Lease.Subnets())
			continue
		}
		r.peers[e.Lease.Subnets()] = e.Lease
	}
	if !r.hasOwn {
		return nil // planned once the own lease is known
	}
	return r.replan()
}

// SetLearned sets the routes the backend's routing protocol learned (bgp:
// its speaker's best paths), which the plan routes instead of the leases,
// and replans.
func (r *Router) SetLearned(routes []plan.Learned) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.learned = slices.Clone(routes)
	if !r.hasOwn {
		return nil
	}
	return r.replan()
}

// markHandled notes that the peers were handed in (or Run stopped waiting
// for them). r.mu is held.
func (r *Router) markHandled() {
	if !r.handled {
		r.handled = true
		close(r.handedIn)
	}
}

// replan builds the plan and the nftables rules from the own lease and the
// peers and hands them to the reconciler. r.mu is held.
func (r *Router) replan() error {
	n := r.cfg.Node
	in := plan.Input{
		Backend: r.cfg.Backend,
		Own:     r.own,
		Peers:   make([]lease.Lease, 0, len(r.peers)),
		Underlay: plan.Underlay{
			Device:   n.Iface,
			PublicIP: n.PublicIP,
			Prefix:   n.IfacePrefix,
			MTU:      n.IfaceMTU,
			// IPv6: the node's IPv6 underlay address and prefix.
			PublicIPv6: n.PublicIPv6,
			Prefix6:    n.IfacePrefix6,
		},
		Device:  r.cfg.Device,
		Learned: r.learned,
	}
	in.Network, in.SubnetLen = n.Network.Network, n.Network.SubnetLen
	in.Network6, in.SubnetLen6 = n.Network.IPv6Network, n.Network.IPv6SubnetLen
	for _, l := range r.peers {
		in.Peers = append(in.Peers, l)
	}
	p, err := plan.Build(in)
	if err != nil {
		return fmt.Errorf("plan routes for %s: %w", r.own.Subnet, err)
	}
	r.plan, r.rules, r.rules6 = &p, nil, nil
	if r.own.Subnet.IsValid() {
		r.rules = nftRules(r.cfg.Backend, n, in.Network, r.own.Subnet, p.Peers, netip.Addr.Is4)
	}
	if r.own.IPv6Subnet.IsValid() && r.nft6 != nil {
		r.rules6 = nftRules(r.cfg.Backend, n, in.Network6, r.own.IPv6Subnet, p.Peers, func(a netip.Addr) bool { return !a.Is4() })
	}
	r.logProblems(p.Problems)
	if !r.handled {
		return nil // handed on once the peers are known
	}
	if r.cfg.OnPlan != nil {
		byKey := make(map[netip.Prefix]lease.Lease, len(r.peers))
		for k, l := range r.peers {
			byKey[cmp.Or(k.V4, k.V6)] = l
		}
		err = r.cfg.OnPlan(Planned{Own: r.own, Plan: p, Peers: byKey})
	}
	r.rec.Set(p)
	return err
}

// nftRules are the nftables rules of one family: the family's cluster
// network and own subnet, the peers whose subnets are of the family
// (inFamily says which addresses are), and the tunnel guard's sources:
// the peers' tunnel endpoints of the family (IPv6 over an IPv4 underlay
// has IPv4 endpoints, which the ip table's guard admits).
func nftRules(b netconf.Backend, n backend.Node, network, own netip.Prefix, peers []plan.Peer, inFamily func(netip.Addr) bool) *nft.Rules {
	rules := &nft.Rules{ClusterNetwork: network, NodeSubnet: own, Masquerade: n.IPMasq, Tunnel: tunnelGuard(b)}
	for _, peer := range peers {
		if inFamily(peer.Subnet.Addr()) {
			rules.Peers = append(rules.Peers, peer.Subnet)
		}
		if rules.Tunnel != nil && inFamily(peer.PublicIP) {
			rules.Tunnel.Sources = append(rules.Tunnel.Sources, peer.PublicIP)
		}
	}
	return rules
}

// tunnelGuard is the nftables guard of a backend whose kernel decapsulates
// what arrives (vxlan on its UDP port, ipip): only the peers' public IPs may
// send it; nil for the others (udp checks every datagram's source itself).
func tunnelGuard(b netconf.Backend) *nft.Tunnel {
	switch b.Type {
	case netconf.TypeVXLAN:
		port := b.Port
		if port == 0 {
			port = netconf.DefaultVXLANPort
		}
		return &nft.Tunnel{Proto: nft.ProtoUDP, Port: uint16(port)}
	case netconf.TypeIPIP:
		return &nft.Tunnel{Proto: nft.ProtoIPIP}
	case netconf.TypeBGP:
		if plan.BGPUsesIPIP(b) {
			return &nft.Tunnel{Proto: nft.ProtoIPIP}
		}
	}
	return nil
}

// logProblems logs the problems that are new since the last plan and those
// that went away, once each. r.mu is held.
func (r *Router) logProblems(ps []plan.Problem) {
	now := make([]string, len(ps))
	for i, p := range ps {
		now[i] = p.String()
		if !slices.Contains(r.problems, now[i]) {
			r.log.Warn("peer not routed", "peer", p.Subnet, "public_ip", p.PublicIP, "reason", p.Reason)
		}
	}
	for _, old := range r.problems {
		if !slices.Contains(now, old) {
			r.log.Info("peer problem resolved", "problem", old)
		}
	}
	r.problems = now
}

// Resync asks for a reconcile pass now.
func (r *Router) Resync() { r.rec.Kick() }

// Run keeps the kernel equal to the plan until ctx ends; it returns nil
// then (the reconciler retries what fails, so it has no error of its own).
func (r *Router) Run(ctx context.Context) error {
	select { // see PeersGrace
	case <-r.handedIn:
	case <-time.After(PeersGrace):
	case <-ctx.Done():
		return nil
	}
	r.mu.Lock()
	if !r.handled {
		r.markHandled()
		if r.hasOwn {
			if err := r.replan(); err != nil {
				r.log.Warn("plan without peers", "err", err)
			}
		}
	}
	r.mu.Unlock()
	// No routing event tells of a deleted nftables table or rule: the
	// nftables monitor does, and a pass repairs it at once.
	wctx, stop := context.WithCancel(ctx)
	var watched sync.WaitGroup
	for _, t := range []*nft.Table{r.nft, r.nft6} {
		if t == nil {
			continue
		}
		watched.Go(func() {
			if err := t.Watch(wctx, r.rec.Kick); err != nil && wctx.Err() == nil {
				r.log.Warn("nftables monitor stopped; a deleted twill table is repaired at the next resync", "err", err)
			}
		})
	}
	defer func() { stop(); watched.Wait() }()
	err := r.rec.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Status reports the peers of the current plan with their nftables
// counters (read now), the plan's problems, and whether the last reconcile
// pass left the kernel as planned.
func (r *Router) Status() backend.Status {
	r.mu.Lock()
	p := r.plan
	r.mu.Unlock()
	var st backend.Status
	if r.cfg.Device != "" {
		st.Device = r.cfg.Device
		if l, err := r.nl.LinkByName(r.cfg.Device); err == nil {
			st.DeviceUp = l.Attrs().Flags&net.FlagUp != 0
		}
	}
	if r.cfg.Device6 != "" && p != nil && p.Device6 != "" {
		if l, err := r.nl.LinkByName(r.cfg.Device6); err != nil || l.Attrs().Flags&net.FlagUp == 0 {
			st.Problems = append(st.Problems, "IPv6 device "+r.cfg.Device6+" is missing or down")
		}
	}
	if p == nil {
		st.Problems = []string{"no lease yet: nothing planned"}
		return st
	}
	var counters map[netip.Prefix]nft.PeerCounters
	var tunnel nft.TunnelCounters
	var cerr error
	if !r.cfg.OwnCounters {
		counters, tunnel, cerr = r.readCounters()
		if tunnelGuard(r.cfg.Backend) != nil {
			st.Drops = map[string]uint64{"unknown-peer": tunnel.Dropped.Packets}
		}
	}
	for _, peer := range p.Peers {
		c := counters[peer.Subnet]
		rx := c.Rx
		// (Not for IPv6 over an IPv4 underlay: that source carries both
		// families, and the IPv4 row has it.)
		if in, ok := tunnel.Sources[peer.PublicIP]; ok && !peer.Direct && peer.PublicIP.Is4() == peer.Subnet.Addr().Is4() {
			// What came through the tunnel, by its outer source: a host
			// that sends inner packets with this peer's pod addresses is
			// not counted as the peer (nor let in). Bytes are inner
			// lengths, as tx's: the encapsulation's fixed overhead off each.
			rx = in
			overhead := plan.Overhead(r.cfg.Backend.Type)
			if peer.PublicIP.Is6() {
				overhead += plan.IPv6UnderlayExtra
			}
			rx.Bytes -= min(rx.Bytes, rx.Packets*uint64(overhead))
		}
		st.Peers = append(st.Peers, backend.PeerStatus{
			Subnet: peer.Subnet, PublicIP: peer.PublicIP,
			TxPackets: c.Tx.Packets, TxBytes: c.Tx.Bytes,
			RxPackets: rx.Packets, RxBytes: rx.Bytes,
		})
	}
	for _, pr := range p.Problems {
		st.Problems = append(st.Problems, pr.String())
		st.PeerProblems = append(st.PeerProblems, pr)
	}
	if cerr != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("read counters: %v", cerr))
	}
	ks := r.rec.Status()
	if ks.LastError != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("kernel state not fully applied: %v", ks.LastError))
	}
	st.InSync = ks.InSync
	st.Kernel = kernelState(ks)
	return st
}

// readCounters reads the per-peer and tunnel counters of the ip table and,
// with IPv6, of the ip6 table, merged: subnets and sources of the two
// families never collide.
func (r *Router) readCounters() (map[netip.Prefix]nft.PeerCounters, nft.TunnelCounters, error) {
	counters := map[netip.Prefix]nft.PeerCounters{}
	tunnel := nft.TunnelCounters{Sources: map[netip.Addr]nft.Counter{}}
	var errs []error
	for _, t := range []*nft.Table{r.nft, r.nft6} {
		if t == nil {
			continue
		}
		c, err := t.Counters()
		errs = append(errs, err)
		maps.Copy(counters, c)
		if tunnelGuard(r.cfg.Backend) != nil {
			tc, err := t.Tunnel()
			errs = append(errs, err)
			maps.Copy(tunnel.Sources, tc.Sources)
			tunnel.Dropped.Packets += tc.Dropped.Packets
			tunnel.Dropped.Bytes += tc.Dropped.Bytes
		}
	}
	return counters, tunnel, errors.Join(errs...)
}

// kernelState copies a reconciler's status for backend.Status.
func kernelState(ks kernel.Status) *backend.KernelState {
	desired, actual := ks.Tables()
	k := &backend.KernelState{
		Desired:  backend.KernelTables{Routes: desired.Routes, Neighbors: desired.Neighbors, FDB: desired.FDB},
		Actual:   backend.KernelTables{Routes: actual.Routes, Neighbors: actual.Neighbors, FDB: actual.FDB},
		LastPass: ks.LastPass,
	}
	if ks.LastError != nil {
		k.LastError = ks.LastError.Error()
	}
	return k
}

// OwnLease returns the node's own lease; false before it is known. (A
// device's EnsureDevice may call it: it is called without the lock.)
func (r *Router) OwnLease() (lease.Lease, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.own, r.hasOwn
}

// Plan returns the current plan; false before the own lease is known.
func (r *Router) Plan() (plan.Plan, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.plan == nil {
		return plan.Plan{}, false
	}
	return *r.plan, true
}

// Cleanup removes twill's routes, the permanent neighbour and FDB entries of
// the device, the device itself and the nftables table. Run must have
// ended (else its reconciler puts them back).
func (r *Router) Cleanup(context.Context) error {
	var errs []error
	if _, err := r.kh.Apply(plan.Plan{Backend: r.cfg.Backend.Type, Device: r.cfg.Device, Device6: r.cfg.Device6}); err != nil {
		errs = append(errs, fmt.Errorf("remove twill's routes and neighbours: %w", err))
	}
	for _, dev := range []string{r.cfg.Device, r.cfg.Device6} {
		if dev == "" {
			continue
		}
		r.ensureMu.Lock()
		link, err := r.nl.LinkByName(dev)
		if err == nil {
			if err := r.nl.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("delete device %s: %w", dev, err))
			} else {
				r.log.Info("device deleted", "device", dev)
			}
		} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
			errs = append(errs, fmt.Errorf("look up device %s: %w", dev, err))
		}
		r.ensureMu.Unlock()
	}
	// The ip6 table goes even if this node no longer has IPv6 on.
	for _, t := range []*nft.Table{r.nft, nft.New(r.log, nft.InNetNS(int(r.ns)), nft.IPv6())} {
		if err := t.Cleanup(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
