package kernelpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/namespace"
)

// lab is backendtest's two-node lab: node A (the kernel path's namespace,
// with twill0, a TUN this test holds open, beside eth0 on the underlay
// and the pod on cni0) and node B, a peer whose datagrams the test writes
// and reads by hand.
type lab struct {
	a, b, pod string
	aH        netns.NsHandle
	tun       *os.File
	podIP     netip.Addr
	podVeth   int // the pod veth's ifindex in A
	podMAC    net.HardwareAddr
	bridgeMAC net.HardwareAddr
	nl        *netlink.Handle // in A
}

const tunAddr = "10.244.1.0" // twill0's address in A: the ingress test's local destination

var run = backendtest.Run

func newLab(t *testing.T) *lab {
	t.Helper()
	backendtest.NeedRoot(t)
	if _, err := exec.LookPath("tc"); err != nil {
		t.Skip("needs the tc command (iproute2)")
	}
	if err := Supported(); err != nil {
		t.Skip(err)
	}
	nodes := backendtest.New(t, "kp", 2).Nodes
	l := &lab{a: nodes[0].Name, b: nodes[1].Name, pod: nodes[0].Pod, podIP: nodes[0].PodIP}
	if nodes[0].PublicIP != localPublic || nodes[1].PublicIP != peerPublic || nodes[1].PodIP != peerPod {
		t.Fatalf("the lab's addresses %+v %+v are not the test's", nodes[0], nodes[1])
	}
	err := namespace.DoName(l.a, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("twill0")
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		l.tun = os.NewFile(uintptr(fd), "twill0")
		return nil
	})
	if err != nil {
		t.Fatalf("create twill0: %v", err)
	}
	t.Cleanup(func() { l.tun.Close() })
	run(t, "ip", "-n", l.a, "addr", "add", tunAddr+"/32", "dev", "twill0")
	run(t, "ip", "-n", l.a, "link", "set", "twill0", "up")
	run(t, "ip", "-n", l.a, "route", "add", "10.244.0.0/16", "dev", "twill0")
	for _, d := range []struct {
		ns, dev string
		index   *int
		mac     *net.HardwareAddr
	}{{l.a, "veth0", &l.podVeth, nil}, {l.a, "cni0", nil, &l.bridgeMAC}, {l.pod, "eth0", nil, &l.podMAC}} {
		err := namespace.DoName(d.ns, func() error {
			ifi, err := net.InterfaceByName(d.dev)
			if err == nil && d.index != nil {
				*d.index = ifi.Index
			}
			if err == nil && d.mac != nil {
				*d.mac = ifi.HardwareAddr
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	h, err := netns.GetFromName(l.a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	l.aH = h
	if l.nl, err = netlink.NewHandleAt(h, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.nl.Close)
	return l
}

// attach attaches the kernel path in A as mode says, with the peer B and
// the pod; a tcx attachment the kernel lacks skips the test. The path is
// closed when the test ends (again, if the test closed it).
func (l *lab) attach(t *testing.T, mode string) *Path {
	t.Helper()
	p, err := Attach(l.aH, Config{TUN: "twill0", Underlay: "eth0", LocalIP: localPublic, Port: 8285, Attach: mode})
	if mode == AttachTCX && errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("the kernel has no tcx: %v", err)
	}
	if err != nil {
		t.Fatalf("attach (%s): %v", mode, err)
	}
	t.Cleanup(func() { p.Close() })
	if want := mode; want != AttachAuto && p.Attachment() != want {
		t.Fatalf("Attachment() = %q, want %q", p.Attachment(), want)
	}
	if err := p.SetSubnet(localNet); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPeers(map[netip.Prefix]Peer{peerNet: {PublicIP: peerPublic, Send: true}}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPods(map[netip.Addr]Pod{l.podIP: {Ifindex: l.podVeth, MAC: l.podMAC, BridgeMAC: l.bridgeMAC}}); err != nil {
		t.Fatal(err)
	}
	return p
}

// listenUDP opens a UDP socket on addr inside the namespace ns.
func listenUDP(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := namespace.DoName(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive reads one datagram, or returns nil after wait.
func receive(c *net.UDPConn, wait time.Duration) ([]byte, netip.AddrPort) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], from
}

// checkEgress sends a datagram from A to a pod of B's subnet: B must get it
// in flannel's format from A's public IP, and twill0 (the userspace path)
// must not see it.
func (l *lab) checkEgress(t *testing.T, p *Path, msg string) {
	t.Helper()
	peer := listenUDP(t, l.b, peerPublic.String()+":8285")
	defer peer.Close()
	before, _ := p.Counters()
	err := namespace.DoName(l.a, func() error {
		c, err := net.Dial("udp4", peerPod.String()+":5000")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		return err
	})
	if err != nil {
		t.Fatalf("send from A: %v", err)
	}
	got, from := receive(peer, 5*time.Second)
	if got == nil {
		t.Fatal("B got no datagram from A's egress program")
	}
	if from != netip.AddrPortFrom(localPublic, 8285) {
		t.Errorf("datagram from %v, want %v:8285", from, localPublic)
	}
	if len(got) != 20+8+len(msg) || got[0] != 0x45 || got[9] != ipProtoUDP ||
		netip.AddrFrom4([4]byte(got[12:16])) != netip.MustParseAddr(tunAddr) ||
		netip.AddrFrom4([4]byte(got[16:20])) != peerPod || string(got[28:]) != msg {
		t.Errorf("B got % x, want the inner packet %s -> %s carrying %q", got, tunAddr, peerPod, msg)
	}
	if n := l.tunSaw(peerPod); n != 0 {
		t.Errorf("twill0 read %d packets for %s: the userspace path carried them", n, peerPod)
	}
	after, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after[peerNet].TxPackets - before[peerNet].TxPackets; d != 1 {
		t.Errorf("tx counter grew by %d, want 1", d)
	}
}

// tunSaw counts the IPv4 packets to dst that twill0 hands to its reader
// within a moment.
func (l *lab) tunSaw(dst netip.Addr) int {
	buf := make([]byte, 65536)
	n := 0
	l.tun.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		m, err := l.tun.Read(buf)
		if err != nil {
			return n
		}
		if m >= 20 && buf[0]>>4 == 4 && netip.AddrFrom4([4]byte(buf[16:20])) == dst {
			n++
		}
	}
}

// checkIngress sends flannel datagrams from B to A: one for an address of
// A (delivered through twill0) and one for the pod (delivered into its
// namespace); neither may reach A's own socket on port 8285.
func (l *lab) checkIngress(t *testing.T, p *Path, msg string) {
	t.Helper()
	local := listenUDP(t, l.a, tunAddr+":5000")
	defer local.Close()
	pod := listenUDP(t, l.pod, l.podIP.String()+":5000")
	defer pod.Close()
	userspace := listenUDP(t, l.a, localPublic.String()+":8285")
	defer userspace.Close()
	peer := listenUDP(t, l.b, peerPublic.String()+":8285")
	defer peer.Close()
	before, _ := p.Counters()
	for _, c := range []struct {
		to   string
		conn *net.UDPConn
	}{{tunAddr, local}, {l.podIP.String(), pod}} {
		pkt := inner(peerPod, netip.MustParseAddr(c.to), 64, msg)
		if _, err := peer.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(localPublic, 8285)); err != nil {
			t.Fatal(err)
		}
		got, from := receive(c.conn, 5*time.Second)
		if string(got) != msg || from.Addr() != peerPod {
			t.Errorf("%s got %q from %v, want %q from %v", c.to, got, from, msg, peerPod)
		}
	}
	if got, _ := receive(userspace, 200*time.Millisecond); got != nil {
		t.Errorf("A's port 8285 got % x: the ingress program left it to userspace", got)
	}
	after, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after[peerNet].RxPackets - before[peerNet].RxPackets; d != 2 {
		t.Errorf("rx counter grew by %d, want 2", d)
	}
}

// sendPlain sends B's datagram to a port of A that twill leaves alone, and
// waits for it to arrive.
func (l *lab) sendPlain(t *testing.T) {
	t.Helper()
	dst := listenUDP(t, l.a, localPublic.String()+":9999")
	defer dst.Close()
	src := listenUDP(t, l.b, peerPublic.String()+":0")
	defer src.Close()
	if _, err := src.WriteToUDPAddrPort([]byte("plain"), netip.AddrPortFrom(localPublic, 9999)); err != nil {
		t.Fatal(err)
	}
	if got, _ := receive(dst, 5*time.Second); string(got) != "plain" {
		t.Fatalf("A got %q, want B's plain datagram", got)
	}
}

// TestAttached runs both programs on their hooks, attached each way.
func TestAttached(t *testing.T) {
	for _, mode := range []string{AttachTCX, AttachTC, AttachAuto} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t)
			p := l.attach(t, mode)
			if mode == AttachAuto && p.Attachment() != AttachTCX && p.Attachment() != AttachTC {
				t.Fatalf("Attachment() = %q", p.Attachment())
			}
			if p.Attachment() == AttachTC {
				t.Logf("tc filter show dev eth0 ingress:\n%s", run(t, "ip", "netns", "exec", l.a, "tc", "filter", "show", "dev", "eth0", "ingress"))
			}
			l.checkEgress(t, p, "out via "+mode)
			l.checkIngress(t, p, "in via "+mode)
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			// Detached, twill0 carries what the egress program sent.
			err := namespace.DoName(l.a, func() error {
				c, err := net.Dial("udp4", peerPod.String()+":5000")
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("after close"))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := l.tunSaw(peerPod); n != 1 {
				t.Errorf("after Close twill0 read %d packets for %s, want 1", n, peerPod)
			}
		})
	}
}

// TestAutoPrefersTCX: on a kernel with tcx, auto attaches with tcx and
// leaves the devices' qdiscs alone.
func TestAutoPrefersTCX(t *testing.T) {
	l := newLab(t)
	probe := l.attach(t, AttachTCX) // skips without tcx
	if err := probe.Close(); err != nil {
		t.Fatal(err)
	}
	p := l.attach(t, AttachAuto)
	if p.Attachment() != AttachTCX {
		t.Errorf("auto attached with %q on a kernel with tcx", p.Attachment())
	}
	for _, dev := range []string{"eth0", "twill0"} {
		if q := l.qdiscKind(t, dev); q != "" {
			t.Errorf("%s has a %s qdisc after a tcx attachment", dev, q)
		}
	}
}

// tcxAttaches reports whether the kernel attaches with tcx (it has since
// 6.6), trying it on the lab's twill0.
func tcxAttaches(t *testing.T, l *lab) bool {
	t.Helper()
	p, err := Attach(l.aH, Config{TUN: "twill0", Underlay: "eth0", LocalIP: localPublic, Port: 8285, Attach: AttachTCX})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Logf("no tcx attachment here: %v", err)
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return true
}

// qdiscKind is the kind of dev's qdisc at ffff: ("" for none).
func (l *lab) qdiscKind(t *testing.T, dev string) string {
	t.Helper()
	lk, err := l.nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := l.nl.QdiscList(lk)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Attrs().Handle == clsactHandle {
			return q.Type()
		}
	}
	return ""
}

// filterState is what identifies a tc filter and what it runs.
type filterState struct {
	Kind               string
	Priority, Protocol uint16
	Handle             uint32
	Name, Tag          string
	ID                 int
}

func (l *lab) filterStates(t *testing.T, dev string, parent uint32) []filterState {
	t.Helper()
	lk, err := l.nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := listFilters(l.nl, lk.Attrs().Index, parent, dev)
	if err != nil {
		t.Fatal(err)
	}
	var out []filterState
	for _, f := range fs {
		a := f.Attrs()
		if a.Handle == 0 {
			continue
		}
		s := filterState{Kind: f.Type(), Priority: a.Priority, Protocol: a.Protocol, Handle: a.Handle}
		if b, ok := f.(*netlink.BpfFilter); ok {
			s.Name, s.Tag, s.ID = b.Name, b.Tag, b.Id
		}
		out = append(out, s)
	}
	return out
}

func twills(fs []filterState) (ours, others []filterState) {
	for _, f := range fs {
		if f.Kind == "bpf" && f.Handle == TCHandle && strings.HasPrefix(f.Name, tcNamePrefix) {
			ours = append(ours, f)
		} else {
			others = append(others, f)
		}
	}
	return ours, others
}

// counterProgram is a sched_cls program of someone else's: it counts the
// packets it sees in its map and passes every one on (TC_ACT_UNSPEC,
// TCX_NEXT).
func counterProgram(t *testing.T) (*ebpf.Program, *ebpf.Map) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT", Name: "someone_else", Instructions: asm.Instructions{
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog, m
}

func count(t *testing.T, m *ebpf.Map) uint64 {
	t.Helper()
	var n uint64
	if err := m.Lookup(uint32(0), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// addU32 adds a u32 filter of someone else's to eth0's hook at prio: one
// that matches no IPv4 packet (this kernel has no gact action for
// "continue"), so every packet goes on to the next filter.
func (l *lab) addU32(t *testing.T, hook string, prio int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", l.a, "tc", "filter", "add", "dev", "eth0", hook, "prio", fmt.Sprint(prio),
		"protocol", "ip", "u32", "match", "u32", "0xdeadbeef", "0xffffffff", "at", "0").CombinedOutput()
	if err != nil && strings.Contains(string(out), "classifier not found") {
		t.Skip("needs the u32 classifier (module cls_u32) for someone else's filter")
	}
	if err != nil {
		t.Fatalf("add a u32 filter to eth0 %s: %v: %s", hook, err, out)
	}
}

// TestForeignTCFilters: a clsact qdisc and filters that someone else put
// on the underlay device before twill (an eBPF filter and a matchall at
// priorities of their own, and a filter at twill's own priority) are
// there, unchanged, while twill runs, after it closes, and across a
// second attachment (a restart); they keep seeing the packets, and twill
// still takes its datagrams.
func TestForeignTCFilters(t *testing.T) {
	l := newLab(t)
	prog, seen := counterProgram(t)
	run(t, "ip", "netns", "exec", l.a, "tc", "qdisc", "add", "dev", "eth0", "clsact")
	eth0, err := l.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	err = l.nl.FilterAdd(&netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: eth0.Attrs().Index,
		Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: "someone_else", DirectAction: true})
	if err != nil {
		t.Fatal(err)
	}
	l.addU32(t, "ingress", 49152)
	l.addU32(t, "ingress", TCPriority)
	want := l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS)
	if len(want) != 3 {
		t.Fatalf("set up %d foreign filters, want 3: %+v", len(want), want)
	}
	check := func(when string, twillFilters int) {
		t.Helper()
		if q := l.qdiscKind(t, "eth0"); q != "clsact" {
			t.Errorf("%s: eth0's qdisc is %q, want the clsact someone else made", when, q)
		}
		ours, others := twills(l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS))
		if !slices.Equal(others, want) {
			t.Errorf("%s: the foreign filters are\n%+v\nwant\n%+v", when, others, want)
		}
		if len(ours) != twillFilters {
			t.Errorf("%s: twill's filters on eth0 ingress: %+v, want %d", when, ours, twillFilters)
		}
		for _, f := range ours {
			if f.Priority == TCPriority {
				t.Errorf("%s: twill's filter took priority %d, which someone else uses", when, TCPriority)
			}
		}
	}
	modes := []string{AttachTC, AttachTC, AttachAuto}
	if tcxAttaches(t, l) {
		modes = append(modes, AttachTCX)
	}
	for i, mode := range modes {
		when := fmt.Sprintf("attachment %d (%s)", i+1, mode)
		p := l.attach(t, mode)
		n := 0
		if p.Attachment() == AttachTC {
			n = 1
		}
		check(when, n)
		// tcx programs run before every tc filter (Linux 6.6): there the
		// others see all but the datagrams twill's program takes.
		before := count(t, seen)
		l.checkIngress(t, p, "past the others")
		l.sendPlain(t)
		if d, least := count(t, seen)-before, map[string]uint64{AttachTC: 3, AttachTCX: 1}[p.Attachment()]; d < least {
			t.Errorf("%s: someone else's filter saw %d packets, want at least %d", when, d, least)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("%s: close: %v", when, err)
		}
		check(when+", closed", 0)
	}
}

// TestForeignTCX: a tcx program someone else attached to the underlay's
// ingress stays first and keeps running while twill's runs after it.
func TestForeignTCX(t *testing.T) {
	l := newLab(t)
	prog, seen := counterProgram(t)
	eth0, err := l.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	// Interface indexes are the namespace's: attach and query inside it.
	var other link.Link
	err = namespace.Do(l.aH, func() (err error) {
		other, err = link.AttachTCX(link.TCXOptions{Interface: eth0.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("the kernel has no tcx: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	otherID, _ := info.ID()
	query := func() []link.AttachedProgram {
		var q *link.QueryResult
		err := namespace.Do(l.aH, func() (err error) {
			q, err = link.QueryPrograms(link.QueryOptions{Target: eth0.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return q.Programs
	}
	p := l.attach(t, AttachTCX)
	progs := query()
	if len(progs) != 2 || progs[0].ID != otherID {
		t.Fatalf("eth0's tcx ingress programs %+v, want someone else's (%d) first, then twill's", progs, otherID)
	}
	before := count(t, seen)
	l.checkIngress(t, p, "after the other")
	if d := count(t, seen) - before; d < 2 {
		t.Errorf("someone else's program saw %d packets, want at least the 2 datagrams", d)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if progs := query(); len(progs) != 1 || progs[0].ID != otherID {
		t.Errorf("after Close eth0's tcx ingress programs are %+v, want only someone else's (%d)", progs, otherID)
	}
}

// TestClsactOwnership: twill removes on Close the clsact qdiscs it made,
// and no other: not one someone else made, and not its own while someone
// else's filter is on it.
func TestClsactOwnership(t *testing.T) {
	t.Run("made by twill", func(t *testing.T) {
		l := newLab(t)
		p := l.attach(t, AttachTC)
		for _, dev := range []string{"eth0", "twill0"} {
			if q := l.qdiscKind(t, dev); q != "clsact" {
				t.Errorf("attached: %s's qdisc is %q, want clsact", dev, q)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		for _, dev := range []string{"eth0", "twill0"} {
			if q := l.qdiscKind(t, dev); q != "" {
				t.Errorf("closed: %s still has the %s qdisc twill made", dev, q)
			}
		}
	})
	t.Run("made by someone else", func(t *testing.T) {
		l := newLab(t)
		run(t, "ip", "netns", "exec", l.a, "tc", "qdisc", "add", "dev", "eth0", "clsact")
		p := l.attach(t, AttachTC)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if q := l.qdiscKind(t, "eth0"); q != "clsact" {
			t.Errorf("closed: eth0's qdisc is %q, want the clsact someone else made", q)
		}
		if q := l.qdiscKind(t, "twill0"); q != "" {
			t.Errorf("closed: twill0 still has the %s qdisc twill made", q)
		}
	})
	t.Run("made by twill, used by someone else", func(t *testing.T) {
		l := newLab(t)
		p := l.attach(t, AttachTC)
		l.addU32(t, "egress", 7)
		want := l.filterStates(t, "eth0", netlink.HANDLE_MIN_EGRESS)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if q := l.qdiscKind(t, "eth0"); q != "clsact" {
			t.Errorf("closed: eth0's qdisc is %q; it holds someone else's filter", q)
		}
		if got := l.filterStates(t, "eth0", netlink.HANDLE_MIN_EGRESS); !slices.Equal(got, want) || len(got) != 1 {
			t.Errorf("closed: eth0 egress filters %+v, want %+v", got, want)
		}
	})
}

// TestTCReplaced: a second attachment (the next twilld) takes over twill's
// filters in place; closing the first then leaves the second's running.
// The clsact qdiscs the first made stay: the second cannot know that twill
// made them, and an empty clsact costs nothing.
func TestTCReplaced(t *testing.T) {
	l := newLab(t)
	first := l.attach(t, AttachTC)
	second := l.attach(t, AttachTC)
	ours, _ := twills(l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS))
	if len(ours) != 1 || ours[0].Priority != TCPriority {
		t.Fatalf("after the second attachment twill's filters on eth0 are %+v, want one at priority %d", ours, TCPriority)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if after, _ := twills(l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS)); !slices.Equal(after, ours) {
		t.Fatalf("closing the first attachment changed twill's filters from %+v to %+v", ours, after)
	}
	l.checkIngress(t, second, "to the second")
	l.checkEgress(t, second, "from the second")
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if after, _ := twills(l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS)); len(after) != 0 {
		t.Errorf("closed: twill's filters %+v are left", after)
	}
	if got := l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS); len(got) != 0 {
		t.Errorf("closed: eth0 ingress keeps filters %+v", got)
	}
}

// TestSupportedNamesWhatIsMissing: every helper the programs call has the
// release that brought it in the table Supported's reasons quote.
func TestSupportedNamesWhatIsMissing(t *testing.T) {
	if got := helperName(asm.FnRedirectPeer); got != "bpf_redirect_peer" {
		t.Errorf("helperName(FnRedirectPeer) = %q", got)
	}
	s := spec()
	for name, ps := range s.Programs {
		for _, ins := range ps.Instructions {
			if fn := asm.BuiltinFunc(ins.Constant); ins.IsBuiltinCall() && since[helperName(fn)] == "" {
				t.Errorf("program %s calls %s, which the table of releases lacks", name, helperName(fn))
			}
		}
	}
	for name, ms := range s.Maps {
		if since["map type "+ms.Type.String()] == "" {
			t.Errorf("map %s is a %v, which the table of releases lacks", name, ms.Type)
		}
	}
}

// twillFilters counts twill's filters on both hooks of eth0 and twill0.
func (l *lab) twillFilters(t *testing.T) int {
	t.Helper()
	n := 0
	for _, dev := range []string{"eth0", "twill0"} {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			ours, _ := twills(l.filterStates(t, dev, parent))
			n += len(ours)
		}
	}
	return n
}

// TestCleanup: the filters a twilld that never closed left behind (they
// outlive the process, unlike tcx links) are removed by Cleanup, and
// nothing else is.
func TestCleanup(t *testing.T) {
	l := newLab(t)
	run(t, "ip", "netns", "exec", l.a, "tc", "qdisc", "add", "dev", "eth0", "clsact")
	l.addU32(t, "ingress", 3)
	want := l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS)
	p := l.attach(t, AttachTC)
	p.mu.Lock()
	p.hooks = nil // as if the process died: the filters stay, with their programs
	p.mu.Unlock()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n := l.twillFilters(t); n != 2 {
		t.Fatalf("%d filters of twill's left after the simulated crash, want 2", n)
	}
	if err := Cleanup(l.aH, "twill0", "eth0", "nosuchdevice"); err != nil {
		t.Fatal(err)
	}
	if n := l.twillFilters(t); n != 0 {
		t.Errorf("%d filters of twill's left after Cleanup", n)
	}
	if got := l.filterStates(t, "eth0", netlink.HANDLE_MIN_INGRESS); !slices.Equal(got, want) {
		t.Errorf("after Cleanup eth0 ingress has %+v, want someone else's %+v", got, want)
	}
	if q := l.qdiscKind(t, "eth0"); q != "clsact" {
		t.Errorf("after Cleanup eth0's qdisc is %q, want someone else's clsact", q)
	}
}

// TestTCXRemovesOldFilters: tc filters of twill's that a killed twilld
// left would run after a new tcx attachment and send what it passes to
// their gone twill0; attaching with tcx removes them.
func TestTCXRemovesOldFilters(t *testing.T) {
	l := newLab(t)
	old := l.attach(t, AttachTC)
	old.mu.Lock()
	old.hooks = nil // as if the process died: the filters stay
	old.mu.Unlock()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if n := l.twillFilters(t); n != 2 {
		t.Fatalf("%d filters of twill's left after the simulated crash, want 2", n)
	}
	p := l.attach(t, AttachTCX) // skips without tcx
	if n := l.twillFilters(t); n != 0 {
		t.Errorf("%d old filters of twill's left after the tcx attachment", n)
	}
	l.checkIngress(t, p, "tcx alone")
}
