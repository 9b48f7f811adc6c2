package udp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
)

// The packet loops against the channel-backed TUN and socket
// (double_linux_test.go): no root, no kernel.

var (
	loopPeerSubnet = netip.MustParsePrefix("10.244.2.0/24")
	loopPeer       = netip.AddrPortFrom(netip.MustParseAddr("192.168.56.12"), 8285)
	loopSelf       = netip.AddrPortFrom(netip.MustParseAddr("192.168.56.11"), 8285)
)

// loopBackend is a Backend with just what the loops use: node 10.244.1.0/24
// with one peer, 10.244.2.0/24 at 192.168.56.12.
func loopBackend(t *testing.T, gso bool) *Backend {
	t.Helper()
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{node: backend.Node{Network: cfg}, log: slog.New(slog.DiscardHandler), port: 8285}
	b.table.Store(newPeerTable(nil, []peerEntry{{Subnet: loopPeerSubnet, PublicIP: loopPeer.Addr()}}, 8285))
	local := netip.MustParsePrefix("10.244.1.0/24")
	b.local.Store(&local)
	b.gso.Store(gso)
	return b
}

// startLoop runs loop until the test ends, when it must return nil; the
// returned function stops it early and returns its error.
func startLoop(t *testing.T, tun *chanTUN, sock *chanSocket, loop func(context.Context, tunDevice, udpSocket) error) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- loop(ctx, tun, sock) }()
	var err error
	stopped := false
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			now := time.Now()
			_ = tun.SetReadDeadline(now)
			_ = sock.SetReadDeadline(now)
			err = <-done
		}
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("loop ended with %v, want nil", err)
		}
	})
	return stop
}

func recvOr[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s", what)
		panic("unreachable")
	}
}

func nothingOn[T any](t *testing.T, c <-chan T, what string) {
	t.Helper()
	select {
	case v := <-c:
		t.Errorf("unexpected %s: %v", what, v)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestTXLoop: a packet from twill0 for a peer's subnet leaves as one
// datagram to the peer's port 8285 carrying exactly the packet (flannel's
// format) and is counted; one for a subnet nobody holds is answered with
// ICMP net unreachable from that subnet's network address; IPv6 is
// dropped.
func TestTXLoop(t *testing.T) {
	b := loopBackend(t, false)
	tun, sock := newChanTUN(false), newChanSocket(loopSelf)
	startLoop(t, tun, sock, b.txLoop)

	pkt := ipv4Packet("10.244.1.2", "10.244.2.2", 17, 100)
	tun.Inbound <- pkt
	d := recvOr(t, sock.Outbound, "datagram")
	if d.addr != loopPeer || !bytes.Equal(d.data, pkt) {
		t.Errorf("sent %d bytes to %s, want the %d-byte packet to %s", len(d.data), d.addr, len(pkt), loopPeer)
	}
	eventually(t, "the peer's tx counters", func() bool {
		p := b.table.Load().peers[0].status()
		return p.TxPackets == 1 && p.TxBytes == uint64(len(pkt))
	})

	tun.Inbound <- ipv4Packet("10.244.1.2", "10.244.9.9", 17, 20)
	icmp := recvOr(t, tun.Outbound, "ICMP answer")
	if !validIPv4(icmp) || icmp[9] != protoICMP || icmp[20] != icmpDestUnreach || icmp[21] != icmpCodeNetUnreach ||
		netip.AddrFrom4([4]byte(icmp[12:16])) != netip.MustParseAddr("10.244.9.0") ||
		netip.AddrFrom4([4]byte(icmp[16:20])) != netip.MustParseAddr("10.244.1.2") {
		t.Errorf("answer is not net unreachable from 10.244.9.0 to 10.244.1.2: % x", icmp)
	}
	v6 := make([]byte, 40)
	v6[0] = 0x60
	tun.Inbound <- v6
	nothingOn(t, sock.Outbound, "datagram for an unroutable or IPv6 packet")
	if d := b.drops.snapshot(); d[DropNoRoute] != 1 || d[DropNotIPv4] != 1 {
		t.Errorf("drops %v, want one no-route and one not-ipv4", d)
	}
}

// TestTXLoopGSO: a TSO super-packet from a TUN with virtio-net headers
// goes out as one UDP GSO message that the kernel (here the double) cuts
// into whole flannel datagrams; when the kernel refuses GSO the loop turns
// it off and sends the same datagrams one by one.
func TestTXLoopGSO(t *testing.T) {
	payload := make([]byte, 5*1000-7)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	superPacket := func() []byte {
		h := make([]byte, vnetHdrLen)
		vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: 40, gsoSize: 1000, csumStart: 20, csumOffset: 16}.encode(h)
		return append(h, tcpSuperPacket(payload, tcpACK|tcpPSH, nil)...)
	}
	for _, refuse := range []bool{false, true} {
		b := loopBackend(t, true)
		tun, sock := newChanTUN(true), newChanSocket(loopSelf)
		if refuse {
			sock.refuseGSO = unix.EIO
		}
		stop := startLoop(t, tun, sock, b.txLoop)
		tun.Inbound <- superPacket()
		var got []byte
		for i := range 5 {
			d := recvOr(t, sock.Outbound, "datagram")
			if d.addr != loopPeer {
				t.Fatalf("datagram to %s", d.addr)
			}
			validChecksums(t, d.data)
			if n := len(d.data) - 40; i < 4 && n != 1000 {
				t.Errorf("datagram %d carries %d bytes, want 1000", i, n)
			}
			got = append(got, d.data[40:]...)
		}
		nothingOn(t, sock.Outbound, "sixth datagram")
		if !bytes.Equal(got, payload) {
			t.Errorf("refuse GSO %t: the datagrams carry other bytes than the super-packet", refuse)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int32{false: 1, true: 0}[refuse]; sock.gsoMessages.Load() != want || b.gso.Load() == refuse {
			t.Errorf("refuse GSO %t: %d GSO messages, GSO still on %t", refuse, sock.gsoMessages.Load(), b.gso.Load())
		}
	}
}

// TestRXLoop: a peer's datagram is written into twill0 as it came; one
// from a stranger, with a spoofed inner source, or for another node's pod
// is dropped and counted under its reason.
func TestRXLoop(t *testing.T) {
	b := loopBackend(t, false)
	tun, sock := newChanTUN(false), newChanSocket(loopSelf)
	startLoop(t, tun, sock, b.rxLoop)

	good := ipv4Packet("10.244.2.2", "10.244.1.2", 17, 64)
	sock.Inbound <- datagram{addr: loopPeer, data: good}
	if got := recvOr(t, tun.Outbound, "packet in twill0"); !bytes.Equal(got, good) {
		t.Errorf("twill0 got % x, want the peer's packet", got)
	}
	stranger := netip.AddrPortFrom(netip.MustParseAddr("192.168.56.66"), 8285)
	sock.Inbound <- datagram{addr: stranger, data: good}
	sock.Inbound <- datagram{addr: loopPeer, data: ipv4Packet("10.244.7.7", "10.244.1.2", 17, 8)}
	sock.Inbound <- datagram{addr: loopPeer, data: ipv4Packet("10.244.2.2", "10.244.3.3", 17, 8)}
	sock.Inbound <- datagram{addr: loopPeer, data: []byte{0x45, 1, 2}}
	nothingOn(t, tun.Outbound, "packet in twill0 that should have been dropped")
	p := b.table.Load().peers[0].status()
	if p.RxPackets != 1 || p.RxBytes != uint64(len(good)) || p.LastSeen.IsZero() {
		t.Errorf("peer counters %+v, want 1 packet of %d bytes", p, len(good))
	}
	if p.Drops[DropSpoofedSource] != 1 || p.Drops[DropNotLocal] != 1 || p.Drops[DropMalformed] != 1 {
		t.Errorf("peer drops %v, want one spoofed-source, one not-local, one malformed", p.Drops)
	}
	if d := b.drops.snapshot(); d[DropUnknownPeer] != 1 {
		t.Errorf("node drops %v, want one unknown-peer", d)
	}
}

// TestRXLoopGRO: a GRO message holding a run of a TCP flow's segments is
// cut into its datagrams, each checked, and written into twill0 merged
// into one super-packet with a virtio-net header (TCPv4 GSO).
func TestRXLoopGRO(t *testing.T) {
	b := loopBackend(t, true)
	// This node is 10.244.2.0/24 here, its peer 10.244.1.0/24 at .11, so
	// that tcpSuperPacket's 10.244.1.2 -> 10.244.2.2 comes from the peer.
	b.table.Store(newPeerTable(nil, []peerEntry{{Subnet: netip.MustParsePrefix("10.244.1.0/24"), PublicIP: loopSelf.Addr()}}, 8285))
	local := loopPeerSubnet
	b.local.Store(&local)
	tun, sock := newChanTUN(true), newChanSocket(loopPeer)
	startLoop(t, tun, sock, b.rxLoop)

	payload := make([]byte, 4*1000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var s segmenter
	segs, _, err := s.split(nil, vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1000, csumStart: 20, csumOffset: 16},
		tcpSuperPacket(payload, tcpACK, nil))
	if err != nil || len(segs) != 4 {
		t.Fatalf("split: %d segments, %v", len(segs), err)
	}
	var run []byte
	for _, sg := range segs {
		run = append(append(run, sg.hdr...), sg.payload...)
	}
	sock.Inbound <- datagram{addr: loopSelf, data: run, gro: 1040}
	got := recvOr(t, tun.Outbound, "super-packet in twill0")
	nothingOn(t, tun.Outbound, "second write")
	h := decodeVnetHdr(got)
	pkt := got[vnetHdrLen:]
	if h.gsoType != gsoTCPv4 || h.gsoSize != 1000 || !validIPv4(pkt) || !bytes.Equal(pkt[40:], payload) {
		t.Errorf("twill0 got %d bytes with header %+v, want one TCPv4 super-packet of the 4 segments", len(got), h)
	}
	if tot := binary.BigEndian.Uint16(pkt[2:4]); int(tot) != 40+len(payload) {
		t.Errorf("super-packet total length %d, want %d", tot, 40+len(payload))
	}
	if p := b.table.Load().peers[0].status(); p.RxPackets != 4 {
		t.Errorf("peer counted %d packets, want the 4 segments", p.RxPackets)
	}
}

// TestLoopsEndWhenTUNDeleted: when twill0 is deleted both loops end with
// an error saying so (EBADFD), for Run to recreate the device.
func TestLoopsEndWhenTUNDeleted(t *testing.T) {
	b := loopBackend(t, false)
	tun, sock := newChanTUN(false), newChanSocket(loopSelf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx, rx := make(chan error, 1), make(chan error, 1)
	go func() { tx <- b.txLoop(ctx, tun, sock) }()
	go func() { rx <- b.rxLoop(ctx, tun, sock) }()
	tun.delete()
	// The RX loop notices when it next writes, and ends before it waits
	// for more.
	go func() {
		for ctx.Err() == nil {
			select {
			case sock.Inbound <- datagram{addr: loopPeer, data: ipv4Packet("10.244.2.2", "10.244.1.2", 17, 8)}:
			case <-ctx.Done():
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for name, c := range map[string]chan error{"TX": tx, "RX": rx} {
		if err := recvOr(t, c, name+" loop's end"); !errors.Is(err, unix.EBADFD) {
			t.Errorf("%s loop ended with %v, want EBADFD", name, err)
		}
	}
}
