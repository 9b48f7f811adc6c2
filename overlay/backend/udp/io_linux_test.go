package udp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend/backendtest"
)

// TestSendFallsBackWithoutGSO makes the kernel refuse UDP GSO (a socket
// with SO_NO_CHECK may not use UDP_SEGMENT: EINVAL) and checks that the
// sender says so and still delivers every datagram, each on its own, and
// that with GSO allowed the same batch arrives as the same datagrams.
func TestSendFallsBackWithoutGSO(t *testing.T) {
	h := nsHandle(t, backendtest.New(t, "udp", 1).Nodes[0].Name)
	lo := netip.MustParseAddr("127.0.0.1")
	var tx, rx *net.UDPConn
	inNS(t, h, func() (err error) {
		if tx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0))); err != nil {
			return err
		}
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
		return err
	})
	defer tx.Close()
	defer rx.Close()
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	pt := newPeerTable(nil, []peerEntry{{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: lo}}, int(to.Port()))
	p := pt.peers[0]

	// A TCP super-packet of 5 segments, cut by the segmenter.
	payload := make([]byte, 5*1000-7)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var s segmenter
	segs, gso, err := s.split(nil, vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1000, csumStart: 20, csumOffset: 16},
		tcpSuperPacket(payload, tcpACK|tcpPSH, nil))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := newUDPConn(tx)
	if err != nil {
		t.Fatal(err)
	}
	receive := func() [][]byte {
		var got [][]byte
		buf := make([]byte, 65535)
		for {
			_ = rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := rx.Read(buf)
			if err != nil {
				return got
			}
			got = append(got, bytes.Clone(buf[:n]))
		}
	}
	check := func(name string, got [][]byte) {
		t.Helper()
		if len(got) != len(segs) {
			t.Fatalf("%s: %d datagrams arrived, want %d", name, len(got), len(segs))
		}
		for i, sg := range segs {
			if want := append(bytes.Clone(sg.hdr), sg.payload...); !bytes.Equal(got[i], want) {
				t.Errorf("%s: datagram %d differs", name, i)
			}
		}
	}

	snd := newSender(true)
	snd.add(p, segs, gso)
	if len(snd.meta) != 1 || snd.meta[0].gso != gso {
		t.Fatalf("%d messages (gso %d), want one GSO message", len(snd.meta), snd.meta[0].gso)
	}
	if gsoErr, err := snd.flush(rc); gsoErr != nil || err != nil {
		t.Fatalf("GSO send: %v, %v", gsoErr, err)
	}
	check("with GSO", receive())

	// SO_NO_CHECK: the kernel refuses UDP_SEGMENT.
	var serr error
	if err := rc.rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1) }); err != nil || serr != nil {
		t.Fatalf("SO_NO_CHECK: %v %v", err, serr)
	}
	snd.reset()
	snd.add(p, segs, gso)
	gsoErr, err := snd.flush(rc)
	if err != nil {
		t.Fatal(err)
	}
	if gsoErr == nil || snd.gso {
		t.Fatalf("the sender did not notice the refusal (gso error %v, gso still %v)", gsoErr, snd.gso)
	}
	check("after the fallback", receive())
	if d := p.c.drops.snapshot(); len(d) != 0 {
		t.Errorf("drops %v", d)
	}
	if tp := p.c.txPackets.Load(); tp != uint64(2*len(segs)) {
		t.Errorf("tx packets %d, want %d", tp, 2*len(segs))
	}
}
