package wireguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// StaleHandshake is the age past which a peer's last handshake says the
// peer is not handshaking (WireGuard rekeys a session in use every 2
// minutes), and how long a peer may be known without any handshake.
const StaleHandshake = 3 * time.Minute

// Backend is the wireguard backend.
type Backend struct {
	node backend.Node
	opts netconf.Backend
	mtu  int
	log  *slog.Logger
	psk  *wgtypes.Key
	// Router keeps the routes and nftables rules; it gives the backend
	// SetLease, Handle, Resync and Plan.
	*routing.Router

	// tunnels are the devices, fixed by New: twill-wg, and in Mode
	// separate with IPv6 twill-wg-v6 (in an IPv6-only network that one
	// alone).
	tunnels []*tunnel

	// mu guards what follows and the tunnels' state. The Router's lock
	// may be held when it is taken (OnPlan), never the other way round.
	mu  sync.Mutex
	key wgtypes.Key
	// impl is kernel or userspace; why says why userspace was chosen.
	impl, why string
	// keys are the peers' public keys by subnet, for Status; since is
	// when each key was first wanted (a peer never handshaken with is
	// not handshaking once it has been known for staleAfter).
	keys       map[netip.Prefix]wgtypes.Key
	since      map[wgtypes.Key]time.Time
	staleAfter time.Duration
	closed     bool
}

// tunnel is one WireGuard device of the backend and its peers.
type tunnel struct {
	name string
	port int
	// v6 says the device carries the IPv6 subnets alone (twill-wg-v6 in
	// Mode separate); the other device carries the rest.
	v6  bool
	dev wgDevice
	// want are the peers the leases name, by key; applied what was last
	// configured of them (nil: configure them all on the next sync).
	want    map[wgtypes.Key]wgtypes.PeerConfig
	applied map[wgtypes.Key]string
}

// New returns the wireguard backend for node, working in node.NetNS. It
// changes nothing yet.
//
// Its devices follow Backend.Mode, as flannel's: separate (the default)
// has twill-wg on ListenPort for the IPv4 subnets and, with EnableIPv6,
// twill-wg-v6 on ListenPortV6 for the IPv6 subnets, reached at the
// peers' PublicIPv6; auto, ipv4 and ipv6 have twill-wg alone, on
// ListenPort, one peer per node with both subnets (see plan).
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("wireguard: the node has no network config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := node.Network.Backend
	opts.Type = netconf.TypeWireGuard
	if opts.ListenPort == 0 {
		opts.ListenPort = netconf.DefaultWireGuardPort
	}
	if opts.ListenPortV6 == 0 {
		opts.ListenPortV6 = netconf.DefaultWireGuardPortV6
	}
	b := &Backend{node: node, opts: opts, mtu: routing.MTU(node, opts), log: log, staleAfter: StaleHandshake}
	separate, ipv6 := plan.WireGuardSeparate(opts), node.Network.EnableIPv6
	if !separate || node.Network.Network.IsValid() {
		b.tunnels = append(b.tunnels, &tunnel{name: plan.WireGuardDevice, port: opts.ListenPort})
	}
	if separate && ipv6 {
		b.tunnels = append(b.tunnels, &tunnel{name: plan.WireGuardDevice6, port: opts.ListenPortV6, v6: true})
	}
	if opts.PSK != "" {
		psk, err := wgtypes.ParseKey(opts.PSK)
		if err != nil {
			return nil, fmt.Errorf("wireguard: Backend.PSK: %w", err)
		}
		b.psk = &psk
	}
	if len(b.tunnels) == 0 {
		return nil, errors.New("wireguard: the network has neither an IPv4 network nor EnableIPv6")
	}
	rcfg := routing.Config{Node: node, Backend: opts, Device: b.tunnels[0].name,
		EnsureDevice: b.ensureDevice, OnPlan: b.onPlan, OwnCounters: true, Log: log}
	if separate && ipv6 {
		rcfg.Device6 = plan.WireGuardDevice6
	}
	r, err := routing.New(rcfg)
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

// Type is "wireguard".
func (b *Backend) Type() string { return netconf.TypeWireGuard }

// tunnelFor is the index of the tunnel that carries subnet, or -1.
func (b *Backend) tunnelFor(subnet netip.Prefix) int {
	v6 := subnet.Addr().Is6()
	for i, t := range b.tunnels {
		if t.v6 && v6 {
			return i
		}
	}
	for i, t := range b.tunnels {
		if !t.v6 && (!v6 || !plan.WireGuardSeparate(b.opts)) {
			return i
		}
	}
	return -1
}

// Prepare reads (or makes) the private key, creates the devices and
// publishes the public key: in BackendData with an IPv4 network, in
// BackendV6Data with IPv6 (one key for both, as flannel's).
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	separate, cfg := plan.WireGuardSeparate(b.opts), b.node.Network
	need4 := (separate && cfg.Network.IsValid()) || b.opts.Mode == "ipv4"
	need6 := (separate && cfg.EnableIPv6) || b.opts.Mode == "ipv6"
	if need4 && !b.node.PublicIP.Is4() {
		return backend.Prepared{}, fmt.Errorf("wireguard needs an IPv4 public IP, have %v", b.node.PublicIP)
	}
	if need6 && !b.node.PublicIPv6.IsValid() {
		return backend.Prepared{}, fmt.Errorf("wireguard Mode %s with IPv6 reaches peers over the IPv6 underlay: the node has no IPv6 underlay address (PublicIPv6)", b.opts.Mode)
	}
	if !b.node.PublicIP.Is4() && !b.node.PublicIPv6.IsValid() {
		return backend.Prepared{}, errors.New("wireguard needs a public IP: the node has neither an IPv4 nor an IPv6 underlay address")
	}
	key, created, err := LoadKey(b.node.StateDir)
	if err != nil {
		return backend.Prepared{}, fmt.Errorf("wireguard private key: %w", err)
	}
	pub := key.PublicKey()
	path := filepath.Join(b.node.StateDir, KeyFile)
	if created {
		b.log.Info("private key made", "file", path, "public_key", pub.String())
	} else {
		b.log.Info("private key read", "file", path, "public_key", pub.String())
	}
	b.mu.Lock()
	b.key = key
	b.mu.Unlock()
	if err := b.EnsureDevice(); err != nil {
		return backend.Prepared{}, err
	}
	prep := backend.Prepared{MTU: b.mtu}
	if cfg.Network.IsValid() {
		prep.BackendData = plan.WireGuardData(pub.String())
	}
	if cfg.EnableIPv6 {
		prep.BackendV6Data = plan.WireGuardData(pub.String())
	}
	return prep, nil
}

// PublicKey is the node's public key; zero before Prepare.
func (b *Backend) PublicKey() wgtypes.Key {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.key == (wgtypes.Key{}) {
		return wgtypes.Key{}
	}
	return b.key.PublicKey()
}

// Implementation says which WireGuard runs: "kernel", or "userspace (why)".
func (b *Backend) Implementation() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.implLocked()
}

func (b *Backend) implLocked() string {
	if b.impl == netconf.WireGuardUserspace {
		return b.impl + " (" + b.why + ")"
	}
	return b.impl
}

// ensureDevice makes the devices if they are missing (again, if they
// went), configures them and their peers, and sets their MTU, addresses
// and state: twill-wg has the own IPv4 subnet's network address as a /32
// (and, on one device, the own IPv6 subnet's as a /128), twill-wg-v6 the
// IPv6 one, as flannel's devices.
func (b *Backend) ensureDevice(nl *netlink.Handle, own netip.Prefix) error {
	own6 := netip.Prefix{}
	if l, ok := b.OwnLease(); ok { // before b.mu: the Router's lock comes first
		own6 = l.IPv6Subnet
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.key == (wgtypes.Key{}) {
		return errors.New("wireguard: no private key yet (Prepare first)")
	}
	var errs []error
	for _, t := range b.tunnels {
		errs = append(errs, b.ensureTunnelLocked(nl, t, own, own6))
	}
	return errors.Join(errs...)
}

func (b *Backend) ensureTunnelLocked(nl *netlink.Handle, t *tunnel, own, own6 netip.Prefix) error {
	link, err := nl.LinkByName(t.name)
	if err != nil && !routing.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", t.name, err)
	}
	if t.dev != nil && err != nil {
		b.log.Warn("device gone; making it again", "device", t.name, "implementation", b.impl)
		t.dev.close()
		t.dev = nil
	}
	if t.dev == nil {
		if err := b.openLocked(nl, t); err != nil {
			return err
		}
		if link, err = nl.LinkByName(t.name); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", t.name, err)
		}
	}
	errs := []error{b.syncLocked(t)}
	switch {
	case t.v6:
		errs = append(errs, routing.SetUpDevice(nl, link, b.mtu, nil, own6))
	default:
		errs = append(errs, routing.SetUpDevice(nl, link, b.mtu, nil, own))
		if own6.IsValid() && !plan.WireGuardSeparate(b.opts) {
			errs = append(errs, routing.SetUpDevice(nl, link, b.mtu, nil, own6))
		}
	}
	return errors.Join(errs...)
}

// openLocked creates t's device, kernel or userspace as configured or as
// the kernel allows, and gives it the private key and its port.
func (b *Backend) openLocked(nl *netlink.Handle, t *tunnel) error {
	ns, name := b.Namespace(), t.name
	var dev wgDevice
	var err error
	switch b.opts.Implementation {
	case netconf.WireGuardKernel:
		dev, err = openKernel(ns, nl, name, b.mtu, b.log)
		b.impl = netconf.WireGuardKernel
	case netconf.WireGuardUserspace:
		dev, err = openUserspace(ns, nl, name, b.mtu, b.log)
		b.impl, b.why = netconf.WireGuardUserspace, "Backend.Implementation says so"
	default:
		dev, err = openKernel(ns, nl, name, b.mtu, b.log)
		b.impl = netconf.WireGuardKernel
		if kerr := err; errors.Is(kerr, ErrNoKernelWireGuard) {
			b.log.Info("no kernel WireGuard; running it in userspace", "device", name, "reason", kerr)
			dev, err = openUserspace(ns, nl, name, b.mtu, b.log)
			if b.impl = netconf.WireGuardUserspace; b.why == "" || t == b.tunnels[0] {
				b.why = kerr.Error() // the first device's reason (twill-wg's)
			}
		}
	}
	if err != nil {
		return err
	}
	port := t.port
	if err := dev.configure(wgtypes.Config{PrivateKey: &b.key, ListenPort: &port}); err != nil {
		dev.close()
		return fmt.Errorf("give %s its private key and port %d: %w", name, port, err)
	}
	t.dev, t.applied = dev, nil
	return nil
}

// onPlan learns the peers from a new plan and configures them at once: a
// peer whose lease went or whose key changed is removed in this call.
//
// Each subnet goes to its tunnel (tunnelFor), the peer at the plan's
// public IP and the tunnel's port: on one device a dual-stack node is one
// peer with both subnets as allowed IPs (the plan gives both halves one
// endpoint and key).
func (b *Backend) onPlan(p routing.Planned) error {
	wants := make([]map[wgtypes.Key]wgtypes.PeerConfig, len(b.tunnels))
	for i := range wants {
		wants[i] = map[wgtypes.Key]wgtypes.PeerConfig{}
	}
	keys := map[netip.Prefix]wgtypes.Key{}
	keepalive := time.Duration(b.opts.PersistentKeepaliveInterval) * time.Second
	for _, peer := range p.Plan.Peers {
		key, err := wgtypes.ParseKey(peer.PublicKey)
		if err != nil { // the plan checked it; a peer without one is not ours
			continue
		}
		ti := b.tunnelFor(peer.Subnet)
		if ti < 0 {
			continue
		}
		keys[peer.Subnet] = key
		want, port := wants[ti], b.tunnels[ti].port
		allowed := net.IPNet{IP: peer.Subnet.Addr().AsSlice(), Mask: net.CIDRMask(peer.Subnet.Bits(), peer.Subnet.Addr().BitLen())}
		if pc, ok := want[key]; ok { // one node, two subnets (or both families)
			pc.AllowedIPs = append(pc.AllowedIPs, allowed)
			want[key] = pc
			continue
		}
		want[key] = wgtypes.PeerConfig{
			PublicKey:                   key,
			PresharedKey:                b.psk,
			Endpoint:                    net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer.PublicIP, uint16(port))),
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  []net.IPNet{allowed},
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	since := map[wgtypes.Key]time.Time{}
	now := time.Now()
	for _, want := range wants {
		for key := range want {
			if t, ok := b.since[key]; ok {
				since[key] = t
			} else {
				since[key] = now
			}
		}
	}
	b.keys, b.since = keys, since
	var errs []error
	for i, t := range b.tunnels {
		t.want = wants[i]
		errs = append(errs, b.syncLocked(t))
	}
	return errors.Join(errs...)
}

// syncLocked makes t's device's peers those wanted: it removes every other
// peer (stale keys, peers that left) and configures the wanted ones that
// changed since they were last configured. Peers new to the device are
// greeted (see greet).
func (b *Backend) syncLocked(t *tunnel) error {
	if t.dev == nil || t.want == nil {
		// Before the first plan nothing is known of the peers: a kernel
		// device kept over a restart keeps its peers until then.
		return nil
	}
	have, err := t.dev.peers()
	if err != nil {
		return fmt.Errorf("read the peers of %s: %w", t.name, err)
	}
	var cfg wgtypes.Config
	var removed []string
	for _, p := range have {
		if _, ok := t.want[p.PublicKey]; !ok {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			removed = append(removed, p.PublicKey.String())
		}
	}
	present := map[wgtypes.Key]bool{}
	for _, p := range have {
		present[p.PublicKey] = true
	}
	applied := map[wgtypes.Key]string{}
	var added []string
	var now, later wgtypes.Config
	own := b.key.PublicKey()
	for _, key := range slices.SortedFunc(maps.Keys(t.want), func(x, y wgtypes.Key) int { return bytes.Compare(x[:], y[:]) }) {
		pc := t.want[key]
		f := fingerprint(pc)
		applied[key] = f
		if present[key] && t.applied[key] == f {
			continue
		}
		if !present[key] {
			first := bytes.Compare(own[:], key[:]) < 0
			var next *wgtypes.PeerConfig
			pc, next = greet(pc, first)
			switch {
			case next != nil && first:
				now.Peers = append(now.Peers, *next)
			case next != nil:
				later.Peers = append(later.Peers, *next)
			}
		}
		cfg.Peers = append(cfg.Peers, pc)
		added = append(added, key.String())
	}
	if len(cfg.Peers) == 0 {
		t.applied = applied
		return nil
	}
	if err := t.dev.configure(cfg); err != nil {
		t.applied = nil
		return fmt.Errorf("configure the peers of %s: %w", t.name, err)
	}
	if len(now.Peers) > 0 {
		if err := t.dev.configure(now); err != nil {
			t.applied = nil
			return fmt.Errorf("turn the greeting keepalive of new peers of %s off: %w", t.name, err)
		}
	}
	t.applied = applied
	if len(later.Peers) > 0 {
		dev := t.dev
		time.AfterFunc(greetDelay, func() { b.greetLater(t, dev, later) })
	}
	if len(removed) > 0 {
		b.log.Info("peers removed", "device", t.name, "keys", removed)
	}
	if len(added) > 0 {
		b.log.Info("peers configured", "device", t.name, "keys", added)
	}
	return nil
}

// greetDelay is how long the node with the greater public key waits before
// it greets a new peer that has not handshaken yet.
const greetDelay = 300 * time.Millisecond

// greet returns how to add pc to the device so that a handshake starts at
// once rather than at the first pod packet, and the configuration that
// follows the greeting: for the node with the smaller public key (first)
// at once, for the other greetDelay later.
//
// Why: a node that joins publishes its lease before it knows its peers, so
// a peer's first initiation to it is dropped, and WireGuard tries again
// only after its 5 s rekey timeout (a peer keeping a session with a
// restarted userspace node sends into it for 15 s). And if both nodes
// initiated at once, each would answer the other's initiation and drop
// the answer to its own (one handshake state per peer), also until the
// retry. So one node greets at once and the other, greetDelay later, only
// if no handshake happened by then: whichever of them learns the other
// last, the handshake is done within greetDelay.
//
// Kernel and wireguard-go both send a keepalive (which starts a handshake
// when there is no session) when a peer's persistent keepalive goes from
// off to on. The first node adds the peer with keepalive on (1 s if the
// config has none) and, if the config has none, the greeting turns it off
// again; the other adds it with keepalive off, and the greeting turns it
// on (to the configured interval, or 1 s and then off).
func greet(pc wgtypes.PeerConfig, first bool) (wgtypes.PeerConfig, *wgtypes.PeerConfig) {
	configured := time.Duration(0)
	if pc.PersistentKeepaliveInterval != nil {
		configured = *pc.PersistentKeepaliveInterval
	}
	on, off := time.Second, time.Duration(0)
	if first {
		if configured > 0 {
			return pc, nil
		}
		pc.PersistentKeepaliveInterval = &on
		return pc, &wgtypes.PeerConfig{PublicKey: pc.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &off}
	}
	pc.PersistentKeepaliveInterval = &off
	if configured > 0 {
		return pc, &wgtypes.PeerConfig{PublicKey: pc.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &configured}
	}
	return pc, &wgtypes.PeerConfig{PublicKey: pc.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &on}
}

// greetLater sends the second node's greetings (see greet) on dev, if it
// is still t's device: a configured keepalive is turned on; a peer without
// one that has no handshake yet gets keepalive 1 s and then off.
func (b *Backend) greetLater(t *tunnel, dev wgDevice, greetings wgtypes.Config) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.dev != dev || b.closed {
		return
	}
	have, err := dev.peers()
	if err != nil {
		b.log.Warn("greet new peers", "device", t.name, "err", err)
		return
	}
	handshook := map[wgtypes.Key]bool{}
	for _, p := range have {
		handshook[p.PublicKey] = !p.LastHandshakeTime.IsZero()
	}
	var on wgtypes.Config
	var keys []wgtypes.Key
	for _, g := range greetings.Peers {
		pc, wanted := t.want[g.PublicKey]
		if !wanted {
			continue
		}
		if pc.PersistentKeepaliveInterval != nil && *pc.PersistentKeepaliveInterval > 0 {
			on.Peers = append(on.Peers, g)
			continue
		}
		if h, ok := handshook[g.PublicKey]; ok && !h {
			keys = append(keys, g.PublicKey)
		}
	}
	if len(on.Peers) > 0 {
		if err := dev.configure(on); err != nil {
			b.log.Warn("greet new peers", "device", t.name, "err", err)
			t.applied = nil
			return
		}
	}
	if err := greetPeers(dev, keys); err != nil {
		b.log.Warn("greet new peers", "device", t.name, "err", err)
		t.applied = nil
		return
	}
	if len(keys) > 0 {
		b.log.Info("peers greeted: no handshake yet", "device", t.name, "keys", keyStrings(keys))
	}
}

// greetPeers sends a keepalive to each peer of keys (whose configured
// keepalive is off): keepalive 1 s, then off again.
func greetPeers(dev wgDevice, keys []wgtypes.Key) error {
	if len(keys) == 0 {
		return nil
	}
	on, off := time.Second, time.Duration(0)
	var start, stop wgtypes.Config
	for _, k := range keys {
		start.Peers = append(start.Peers, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &on})
		stop.Peers = append(stop.Peers, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &off})
	}
	return errors.Join(dev.configure(start), dev.configure(stop))
}

func keyStrings(keys []wgtypes.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.String()
	}
	return out
}

// Status is the Router's, with the implementation as the mode and the
// devices' per-peer counters (bytes and last handshake; WireGuard counts
// no packets). On one device the two subnets of a dual-stack peer show
// the one WireGuard peer's counters each.
func (b *Backend) Status() backend.Status {
	st := b.Router.Status()
	b.mu.Lock()
	defer b.mu.Unlock()
	st.Mode = b.implLocked()
	byKey := make([]map[wgtypes.Key]wgtypes.Peer, len(b.tunnels))
	for ti, t := range b.tunnels {
		if t.dev == nil {
			continue
		}
		have, err := t.dev.peers()
		if err != nil {
			st.Problems = append(st.Problems, fmt.Sprintf("read the peers of %s: %v", t.name, err))
			continue
		}
		byKey[ti] = map[wgtypes.Key]wgtypes.Peer{}
		for _, p := range have {
			byKey[ti][p.PublicKey] = p
		}
	}
	now := time.Now()
	for i := range st.Peers {
		ti := b.tunnelFor(st.Peers[i].Subnet)
		if ti < 0 {
			continue
		}
		p, ok := byKey[ti][b.keys[st.Peers[i].Subnet]]
		if !ok {
			continue
		}
		st.Peers[i].TxBytes, st.Peers[i].RxBytes = uint64(p.TransmitBytes), uint64(p.ReceiveBytes)
		st.Peers[i].LastHandshake = p.LastHandshakeTime
		if !p.LastHandshakeTime.IsZero() {
			st.Peers[i].LastSeen = p.LastHandshakeTime
		}
		if why := b.handshakeProblem(p, now); why != "" {
			st.Peers[i].HandshakeProblem = why
			st.Problems = append(st.Problems, fmt.Sprintf("peer %s (%s) is not handshaking: %s", st.Peers[i].Subnet, p.PublicKey, why))
		}
	}
	return st
}

// handshakeProblem says why peer p is not handshaking at now, or "". A
// live session is rekeyed every 2 minutes (and every node greets its new
// peers), so a last handshake older than staleAfter, or none in the
// staleAfter since the peer was learned, means the peer does not answer.
func (b *Backend) handshakeProblem(p wgtypes.Peer, now time.Time) string {
	if !p.LastHandshakeTime.IsZero() {
		if age := now.Sub(p.LastHandshakeTime); age > b.staleAfter {
			return fmt.Sprintf("last handshake %v ago", age.Round(time.Second))
		}
		return ""
	}
	if since, ok := b.since[p.PublicKey]; ok && now.Sub(since) > b.staleAfter {
		return fmt.Sprintf("no handshake in the %v since it became a peer", now.Sub(since).Round(time.Second))
	}
	return ""
}

// Peers are the first device's peers (twill-wg's; twill-wg-v6's in an
// IPv6-only network) as it reports them now.
func (b *Backend) Peers() ([]wgtypes.Peer, error) { return b.PeersOf(b.tunnels[0].name) }

// PeersOf are the peers of the device named, as it reports them now.
func (b *Backend) PeersOf(device string) ([]wgtypes.Peer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.tunnels {
		if t.name == device && t.dev != nil {
			return t.dev.peers()
		}
	}
	return nil, fmt.Errorf("no device %s", device)
}

// Run keeps the kernel state until ctx ends. Userspace WireGuard lives in
// twilld: when Run ends, its device and sockets go (pods on this node are
// cut off until the next twilld prepares); kernel WireGuard stays.
func (b *Backend) Run(ctx context.Context) error {
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		b.keepHandshakes(ctx)
	}()
	err := b.Router.Run(ctx)
	<-kept
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.impl == netconf.WireGuardUserspace {
		for _, t := range b.tunnels {
			if t.dev != nil {
				t.dev.close()
				t.dev = nil
			}
		}
	}
	return err
}

// keepHandshakes greets, every staleAfter/6, the peers whose last handshake
// (or whose becoming a peer, if they never handshook) is older than 5/6 of
// staleAfter, until ctx ends. WireGuard handshakes only when there is
// traffic: between idle nodes without a keepalive the last handshake would
// age past 3 minutes and the peer count as not handshaking. The greeting
// is a keepalive: past WireGuard's 2 minute rekey time it makes the node
// that started the session handshake again (both nodes greet, so one of
// them did), and a peer without a session gets an initiation, which a
// live peer answers.
func (b *Backend) keepHandshakes(ctx context.Context) {
	b.mu.Lock()
	every := b.staleAfter / 6
	b.mu.Unlock()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.refreshHandshakes(time.Now())
		}
	}
}

// refreshHandshakes greets the peers whose handshake is getting old (see
// keepHandshakes). Peers with a configured keepalive keep their sessions
// fresh themselves.
func (b *Backend) refreshHandshakes(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.tunnels {
		b.refreshTunnelLocked(t, now)
	}
}

func (b *Backend) refreshTunnelLocked(t *tunnel, now time.Time) {
	if t.dev == nil || t.want == nil {
		return
	}
	have, err := t.dev.peers()
	if err != nil {
		b.log.Warn("read the peers to keep their handshakes fresh", "device", t.name, "err", err)
		return
	}
	var keys []wgtypes.Key
	for _, p := range have {
		pc, ok := t.want[p.PublicKey]
		if !ok || (pc.PersistentKeepaliveInterval != nil && *pc.PersistentKeepaliveInterval > 0) {
			continue
		}
		last := p.LastHandshakeTime
		if last.IsZero() {
			last = b.since[p.PublicKey]
		}
		if now.Sub(last) > b.staleAfter*5/6 {
			keys = append(keys, p.PublicKey)
		}
	}
	if err := greetPeers(t.dev, keys); err != nil {
		b.log.Warn("greet peers to keep their handshakes fresh", "device", t.name, "err", err)
		t.applied = nil
		return
	}
	if len(keys) > 0 {
		b.log.Debug("peers greeted: handshakes getting old", "device", t.name, "keys", keyStrings(keys))
	}
}

// Cleanup removes the devices, the routes and the nftables rules. The
// private key stays in the state directory.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	for _, t := range b.tunnels {
		if t.dev != nil {
			t.dev.close()
			t.dev = nil
		}
	}
	b.mu.Unlock()
	return b.Router.Cleanup(ctx)
}

// Close releases the device (a userspace one goes) and the Router; Run
// must have ended. Calls after the first do nothing.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	for _, t := range b.tunnels {
		if t.dev != nil {
			errs = append(errs, t.dev.close())
			t.dev = nil
		}
	}
	return errors.Join(append(errs, b.Router.Close())...)
}

func fingerprint(pc wgtypes.PeerConfig) string {
	s := fmt.Sprintf("%v %v", pc.Endpoint, pc.AllowedIPs)
	if pc.PresharedKey != nil {
		s += " psk " + pc.PresharedKey.String()
	}
	if pc.PersistentKeepaliveInterval != nil {
		s += " keepalive " + pc.PersistentKeepaliveInterval.String()
	}
	return s
}

var _ backend.Backend = (*Backend)(nil)
