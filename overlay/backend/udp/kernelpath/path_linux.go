package kernelpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/namespace"
)

// MaxPeers is how many peer subnets the fast path carries; packets for
// further ones take the userspace path.
const MaxPeers = 16384

// MaxPods is how many local pods the ingress program delivers to directly.
const MaxPods = 4096

// Pod is a pod on this node's bridge, as the ingress program delivers to
// it: into the namespace of the peer of the veth Ifindex, with MAC as the
// destination and BridgeMAC as the source.
type Pod struct {
	Ifindex        int
	MAC, BridgeMAC net.HardwareAddr
}

// Config says where the fast path is attached and what it sends.
type Config struct {
	// TUN is twill0's name; Underlay the device the public IP is on.
	TUN, Underlay string
	// LocalIP is this node's public IP: the outer source, and the only
	// outer destination taken off the wire.
	LocalIP netip.Addr
	// Port is the UDP port of every node (flannel's 8285).
	Port uint16
	// Attach is how the programs are attached: AttachAuto (also ""),
	// AttachTCX or AttachTC (tests force classic tc on a kernel with tcx).
	Attach string
	// PinDir, if set, is where the maps and tcx links are pinned (PinDir
	// of the namespace), so that the data path outlives the process: a
	// later Attach with the same PinDir adopts them (the peers, pods and
	// counters as they were) and swaps its programs in without a gap.
	PinDir string
}

// Counters are a peer's fast-path traffic: inner IP packets and bytes each
// way (a super-packet counts as its segments, headers included), and when
// the last packet arrived (zero: none yet).
type Counters struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	LastReceived                           time.Time
}

// Path is the attached fast path. Its methods may be called from several
// goroutines.
type Path struct {
	mu    sync.Mutex
	coll  *ebpf.Collection
	hooks []hook
	// attachment is AttachTCX or AttachTC; nl the netlink handle of the tc
	// filters (nil with tcx).
	attachment string
	nl         *netlink.Handle
	cfg        [cfgSize]byte
	peers      map[netip.Prefix]peerValue
	pods       map[netip.Addr]podValue
	slots      map[netip.Prefix]uint32
	free       []uint32
	closed     bool
	// pinDir is Config.PinDir; adopted says Attach found an earlier
	// twilld's state there.
	pinDir  string
	adopted bool
}

type lpmKey struct {
	Bits uint32
	Addr [4]byte
}

type peerValue struct {
	IP   [4]byte
	Slot uint32
	Send uint32
}

type podValue struct {
	MACs    [12]byte
	Ifindex uint32
}

type statValue struct {
	TxPackets, TxBytes, RxPackets, RxBytes, RxLast uint64
}

// Supported says why the fast path cannot run on this machine, or nil. It
// probes the kernel for what the programs use (the program type, every
// helper they call, every map type, the v2 instruction set); it does not
// say which attachment Attach will use (tcx where the kernel has it).
func Supported() error {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return errors.New("the fast path's programs are written for little-endian machines")
	}
	return probeKernel(spec())
}

// since is the Linux release that brought each helper, map type and
// feature the programs use, for the reason Supported gives. The programs
// also read __sk_buff's gso_size (5.7) and are attached with tcx (6.6) or
// as direct-action cls_bpf filters on a clsact qdisc (4.5): with
// bpf_redirect_neigh and bpf_redirect_peer, the newest of them, the
// kernel path needs Linux 5.10.
var since = map[string]string{
	"program type SchedCLS":  "4.1",
	"the v2 instruction set": "4.14",
	"map type Array":         "3.19",
	"map type Hash":          "3.19",
	"map type PerCPUArray":   "4.6",
	"map type LPMTrie":       "4.11",
	"bpf_map_lookup_elem":    "4.1",
	"bpf_skb_store_bytes":    "4.1",
	"bpf_l3_csum_replace":    "4.1",
	"bpf_ktime_get_ns":       "4.1",
	"bpf_redirect":           "4.4",
	"bpf_skb_load_bytes":     "4.5",
	"bpf_csum_diff":          "4.6",
	"bpf_skb_change_head":    "4.10",
	"bpf_skb_adjust_room":    "5.2", // 4.13, but BPF_ADJ_ROOM_MAC and the encap flags 5.2
	"bpf_redirect_neigh":     "5.10",
	"bpf_redirect_peer":      "5.10",
}

// helperName is fn's name in the kernel's documentation: FnSkbLoadBytes
// is bpf_skb_load_bytes.
func helperName(fn asm.BuiltinFunc) string {
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range strings.TrimPrefix(fn.String(), "Fn") {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// probeKernel checks that the kernel has every helper and map type s
// uses, so that the reason names the missing one.
func probeKernel(s *ebpf.CollectionSpec) error {
	need := func(what string, err error) error {
		if err == nil {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			if v, ok := since[what]; ok {
				return fmt.Errorf("the kernel lacks %s (Linux %s)", what, v)
			}
			return fmt.Errorf("the kernel lacks %s", what)
		}
		return fmt.Errorf("probe the kernel for %s: %w", what, err)
	}
	if err := need("program type SchedCLS", features.HaveProgramType(ebpf.SchedCLS)); err != nil {
		return err
	}
	if err := need("the v2 instruction set", features.HaveV2ISA()); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(s.Maps)) {
		t := s.Maps[name].Type
		if err := need("map type "+t.String(), features.HaveMapType(t)); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.Programs)) {
		for _, ins := range s.Programs[name].Instructions {
			if !ins.IsBuiltinCall() {
				continue
			}
			fn := asm.BuiltinFunc(ins.Constant)
			if err := need(helperName(fn), features.HaveProgramHelper(ebpf.SchedCLS, fn)); err != nil {
				return err
			}
		}
	}
	return nil
}

// The programs' names, as bpftool and tc show them.
const (
	egressName  = tcNamePrefix + "egr"
	ingressName = tcNamePrefix + "ingr"
)

func spec() *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"config": {Name: "twill_cfg", Type: ebpf.Array, KeySize: 4, ValueSize: cfgSize, MaxEntries: 1},
			"peers": {Name: "twill_peers", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: peerSize, MaxEntries: MaxPeers,
				Flags: unix.BPF_F_NO_PREALLOC},
			"stats": {Name: "twill_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: statSize, MaxEntries: MaxPeers},
			"pods":  {Name: "twill_pods", Type: ebpf.Hash, KeySize: 4, ValueSize: podSize, MaxEntries: MaxPods},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"egress": {Name: egressName, Type: ebpf.SchedCLS, License: "Dual MIT/GPL",
				Instructions: egressProgram()},
			"ingress": {Name: ingressName, Type: ebpf.SchedCLS, License: "Dual MIT/GPL",
				Instructions: ingressProgram()},
		},
	}
}

// Attach loads the programs and attaches them, inside the namespace ns, to
// the egress of cfg.TUN and the ingress of cfg.Underlay, as cfg.Attach
// says. Nothing is left attached when it fails.
func Attach(ns netns.NsHandle, cfg Config) (*Path, error) {
	mode := cfg.Attach
	switch mode {
	case "", AttachAuto:
		mode = AttachAuto
	case AttachTCX, AttachTC:
	default:
		return nil, fmt.Errorf("kernel path: attachment %q is none of %s, %s, %s", cfg.Attach, AttachAuto, AttachTCX, AttachTC)
	}
	if err := Supported(); err != nil {
		return nil, err
	}
	if !cfg.LocalIP.Is4() || cfg.LocalIP.IsUnspecified() {
		return nil, fmt.Errorf("kernel path: local IP %v is not an IPv4 address", cfg.LocalIP)
	}
	if cfg.TUN == cfg.Underlay {
		return nil, fmt.Errorf("kernel path: %s is both the TUN and the underlay device", cfg.TUN)
	}
	p, err := load(cfg)
	if err != nil {
		return nil, err
	}
	err = namespace.Do(ns, func() error {
		tun, err := net.InterfaceByName(cfg.TUN)
		if err != nil {
			return fmt.Errorf("find %s: %w", cfg.TUN, err)
		}
		under, err := net.InterfaceByName(cfg.Underlay)
		if err != nil {
			return fmt.Errorf("find underlay device %s: %w", cfg.Underlay, err)
		}
		if len(under.HardwareAddr) != 6 {
			return fmt.Errorf("underlay device %s is not an Ethernet device", cfg.Underlay)
		}
		binary.NativeEndian.PutUint32(p.cfg[cfgTUN:], uint32(tun.Index))
		binary.NativeEndian.PutUint32(p.cfg[cfgUnderlay:], uint32(under.Index))
		return p.attach(ns, mode, []where{{tun.Index, cfg.TUN, false}, {under.Index, cfg.Underlay, true}})
	})
	if err == nil {
		err = p.writeConfig()
	}
	if err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return p, nil
}

// attach puts the egress program on hooks[0] and the ingress program on
// hooks[1]: as tcx links, or (mode tc, or auto on a kernel without tcx)
// as tc filters. Runs inside the namespace ns.
func (p *Path) attach(ns netns.NsHandle, mode string, hooks []where) error {
	progs := []*ebpf.Program{p.coll.Programs["egress"], p.coll.Programs["ingress"]}
	names := []string{egressName, ingressName}
	tcx := func(i int) (hook, error) {
		if p.pinDir == "" {
			return attachTCX(hooks[i], progs[i])
		}
		return attachTCXPinned(hooks[i], progs[i], linkPin(p.pinDir, names[i]))
	}
	if mode != AttachTC {
		h, err := tcx(0)
		switch {
		case err == nil:
			p.hooks = append(p.hooks, h)
			p.attachment = AttachTCX
			h, err = tcx(1)
			if err != nil {
				return err
			}
			p.hooks = append(p.hooks, h)
			// tc filters of twill's that a twilld on the tc attachment left
			// would run after these and redirect to its gone twill0.
			return removeTCFilters(ns, hooks[0].device, hooks[1].device)
		case mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported):
			return err
		}
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle for the tc filters: %w", err)
	}
	p.nl = nl
	p.attachment = AttachTC
	for i, w := range hooks {
		h, err := attachTC(nl, w, progs[i], names[i])
		if err != nil {
			return err
		}
		p.hooks = append(p.hooks, h)
	}
	if p.pinDir != "" {
		// tcx links a twilld on the tcx attachment pinned would run before
		// these filters.
		return unpinLinks(p.pinDir)
	}
	return nil
}

// Attachment says how the programs are attached: AttachTCX or AttachTC.
func (p *Path) Attachment() string { return p.attachment }

// load creates the maps and programs for cfg, attached nowhere.
// With cfg.PinDir, the maps are those pinned there (made and pinned if
// there are none), and the Path takes over their content (adopt).
func load(cfg Config) (*Path, error) {
	var coll *ebpf.Collection
	var err error
	if cfg.PinDir == "" {
		coll, err = ebpf.NewCollection(spec())
	} else {
		coll, err = loadPinned(spec(), cfg.PinDir)
	}
	if err != nil {
		return nil, fmt.Errorf("load the kernel path's programs: %w", err)
	}
	p := &Path{coll: coll, peers: map[netip.Prefix]peerValue{}, slots: map[netip.Prefix]uint32{},
		pods: map[netip.Addr]podValue{}, pinDir: cfg.PinDir}
	for i := MaxPeers - 1; i >= 0; i-- {
		p.free = append(p.free, uint32(i))
	}
	ip := cfg.LocalIP.As4()
	copy(p.cfg[cfgLocalIP:], ip[:])
	binary.BigEndian.PutUint16(p.cfg[cfgPorts:], cfg.Port)
	binary.BigEndian.PutUint16(p.cfg[cfgPorts+2:], cfg.Port)
	// No inner destination matches until SetSubnet.
	binary.BigEndian.PutUint32(p.cfg[cfgMask:], ^uint32(0))
	if cfg.PinDir != "" {
		if p.adopted, err = p.adopt(); err != nil {
			coll.Close()
			return nil, err
		}
	}
	return p, nil
}

// Adopted reports whether Attach took over the data path an earlier
// twilld left pinned (its peers, pods, counters and subnet).
func (p *Path) Adopted() bool { return p.adopted }

// Peers returns the fast path's peer table.
func (p *Path) Peers() map[netip.Prefix]Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.Prefix]Peer, len(p.peers))
	for s, v := range p.peers {
		out[s] = Peer{PublicIP: netip.AddrFrom4(v.IP), Send: v.Send != 0}
	}
	return out
}

// writeConfig stores the config; the programs pass everything until the
// local IP is set. Called with mu held (or before p is shared).
func (p *Path) writeConfig() error {
	if err := p.coll.Maps["config"].Put(uint32(0), p.cfg[:]); err != nil {
		return fmt.Errorf("write the kernel path's config: %w", err)
	}
	return nil
}

// SetSubnet sets this node's subnet: the only inner destinations the
// ingress program delivers.
func (p *Path) SetSubnet(s netip.Prefix) error {
	if !s.Addr().Is4() {
		return fmt.Errorf("kernel path: subnet %v is not IPv4", s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s = s.Masked()
	a := s.Addr().As4()
	copy(p.cfg[cfgSubnet:], a[:])
	binary.BigEndian.PutUint32(p.cfg[cfgMask:], ^uint32(0)<<(32-s.Bits()))
	return p.writeConfig()
}

// Peer is a peer subnet's entry in the fast path.
type Peer struct {
	// PublicIP is where the peer's datagrams come from and go to.
	PublicIP netip.Addr
	// Send lets the egress program send to the peer. Set it only for peers
	// that run the kernel path too: over veth or virtio, a packet may leave
	// with its inner checksum still partial (the kernel's convention, which
	// a kernel receiver keeps), and a userspace receiver, twill's or
	// flannel's, would drop it. Packets for other peers take twilld's
	// userspace path, which completes every checksum. Datagrams from every
	// peer are taken in.
	Send bool
}

// SetPeers makes peers (subnet -> peer) the fast path's peer table. A
// subnet that stays keeps its counters; a new one starts from zero. Peers
// beyond MaxPeers are left to the userspace path.
func (p *Path) SetPeers(peers map[netip.Prefix]Peer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("kernel path is closed")
	}
	pm, sm := p.coll.Maps["peers"], p.coll.Maps["stats"]
	var errs []error
	for s := range p.peers {
		if pe, ok := peers[s]; ok && pe.PublicIP.Is4() {
			continue
		}
		if err := pm.Delete(keyOf(s)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("remove peer %s from the kernel path: %w", s, err))
			continue
		}
		delete(p.peers, s)
		p.free = append(p.free, p.slots[s])
		delete(p.slots, s)
	}
	subnets := make([]netip.Prefix, 0, len(peers))
	for s := range peers {
		subnets = append(subnets, s)
	}
	slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, s := range subnets {
		pe := peers[s]
		ip := pe.PublicIP
		if !s.Addr().Is4() || !ip.Is4() {
			continue
		}
		slot, have := p.slots[s]
		if !have {
			if len(p.free) == 0 {
				continue
			}
			slot = p.free[len(p.free)-1]
			zero := make([]statValue, ebpf.MustPossibleCPU())
			if err := sm.Put(slot, zero); err != nil {
				errs = append(errs, fmt.Errorf("clear the kernel path's counters for %s: %w", s, err))
				continue
			}
			p.free = p.free[:len(p.free)-1]
			p.slots[s] = slot
		}
		v := peerValue{IP: ip.As4(), Slot: slot}
		if pe.Send {
			v.Send = 1
		}
		if old, ok := p.peers[s]; ok && old == v {
			continue
		}
		if err := pm.Put(keyOf(s), v); err != nil {
			errs = append(errs, fmt.Errorf("add peer %s via %s to the kernel path: %w", s, ip, err))
			continue
		}
		p.peers[s] = v
	}
	return errors.Join(errs...)
}

// SetPods makes pods (pod IP -> where it is) the ingress program's direct
// deliveries; a packet for any other local address goes through twill0.
func (p *Path) SetPods(pods map[netip.Addr]Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("kernel path is closed")
	}
	m := p.coll.Maps["pods"]
	var errs []error
	for ip := range p.pods {
		if _, ok := pods[ip]; ok {
			continue
		}
		if err := m.Delete(ip.As4()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("remove pod %s from the kernel path: %w", ip, err))
			continue
		}
		delete(p.pods, ip)
	}
	for ip, pod := range pods {
		if !ip.Is4() || len(pod.MAC) != 6 || len(pod.BridgeMAC) != 6 || pod.Ifindex <= 0 {
			errs = append(errs, fmt.Errorf("kernel path: pod %s at ifindex %d, MAC %q, bridge MAC %q is not an IPv4 pod on an Ethernet bridge",
				ip, pod.Ifindex, pod.MAC, pod.BridgeMAC))
			continue
		}
		var v podValue
		copy(v.MACs[:6], pod.MAC)
		copy(v.MACs[6:], pod.BridgeMAC)
		v.Ifindex = uint32(pod.Ifindex)
		if old, ok := p.pods[ip]; ok && old == v {
			continue
		}
		if len(p.pods) >= MaxPods {
			break
		}
		if err := m.Put(ip.As4(), v); err != nil {
			errs = append(errs, fmt.Errorf("add pod %s to the kernel path: %w", ip, err))
			continue
		}
		p.pods[ip] = v
	}
	return errors.Join(errs...)
}

// Pods returns the pods the ingress program delivers to directly.
func (p *Path) Pods() map[netip.Addr]Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.Addr]Pod, len(p.pods))
	for ip, v := range p.pods {
		out[ip] = Pod{Ifindex: int(v.Ifindex), MAC: net.HardwareAddr(slices.Clone(v.MACs[:6])),
			BridgeMAC: net.HardwareAddr(slices.Clone(v.MACs[6:]))}
	}
	return out
}

func keyOf(s netip.Prefix) lpmKey {
	return lpmKey{Bits: uint32(s.Bits()), Addr: s.Masked().Addr().As4()}
}

// Counters reads every peer's fast-path counters, summed over CPUs.
func (p *Path) Counters() (map[netip.Prefix]Counters, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.Prefix]Counters, len(p.slots))
	if p.closed {
		return out, nil
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now, mono := time.Now(), uint64(ts.Nano())
	var per []statValue
	var errs []error
	for s, slot := range p.slots {
		if err := p.coll.Maps["stats"].Lookup(slot, &per); err != nil {
			errs = append(errs, fmt.Errorf("read the kernel path's counters for %s: %w", s, err))
			continue
		}
		var c Counters
		var last uint64
		for _, v := range per {
			c.TxPackets += v.TxPackets
			c.TxBytes += v.TxBytes
			c.RxPackets += v.RxPackets
			c.RxBytes += v.RxBytes
			last = max(last, v.RxLast)
		}
		if last != 0 && last <= mono {
			c.LastReceived = now.Add(-time.Duration(mono - last))
		}
		out[s] = c
	}
	return out, errors.Join(errs...)
}

// Close detaches the programs and frees the maps (and removes the pins).
func (p *Path) Close() error { return p.close(true) }

// Release lets go of the programs and maps and leaves them in the kernel:
// with PinDir, attached and pinned for the next twilld to adopt, as a
// stopping twilld does (with classic tc the filters stay in any case).
// Without PinDir, tcx links end with it.
func (p *Path) Release() error { return p.close(false) }

func (p *Path) close(detach bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	for _, h := range p.hooks {
		var err error
		if detach {
			err = h.detach()
		} else {
			err = h.release()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detach the kernel path (%s): %w", p.attachment, err))
		}
	}
	p.hooks = nil
	if p.nl != nil {
		p.nl.Close()
	}
	p.coll.Close()
	if detach && p.pinDir != "" {
		errs = append(errs, RemovePins(p.pinDir))
	}
	return errors.Join(errs...)
}
