package kernelpath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

var (
	localPublic = netip.MustParseAddr("192.168.56.11")
	peerPublic  = netip.MustParseAddr("192.168.56.12")
	stranger    = netip.MustParseAddr("192.168.56.66")
	peerNet     = netip.MustParsePrefix("10.244.2.0/24")
	localNet    = netip.MustParsePrefix("10.244.1.0/24")
	peerPod     = netip.MustParseAddr("10.244.2.2")
	plainDst    = netip.MustParseAddr("10.244.1.2") // in the subnet, not a known pod
	knownPod    = netip.MustParseAddr("10.244.1.5")
	podMAC      = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x05}
	brMAC       = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

const (
	tunIndex = 7
	podIndex = 9
	retPass  = 0xffffffff // TCX_NEXT
	retRedir = 7
)

// loadForTest loads the programs with a config, one peer and one pod,
// attached nowhere; the ingress program is then run on packets with
// BPF_PROG_TEST_RUN.
func loadForTest(t testing.TB) *Path {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs")
	}
	if err := Supported(); err != nil {
		t.Skip(err)
	}
	p, err := load(Config{LocalIP: localPublic, Port: 8285})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	binary.NativeEndian.PutUint32(p.cfg[cfgTUN:], tunIndex)
	binary.NativeEndian.PutUint32(p.cfg[cfgUnderlay:], 3)
	if err := p.SetSubnet(localNet); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPeers(map[netip.Prefix]Peer{peerNet: {PublicIP: peerPublic, Send: true}}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetPods(map[netip.Addr]Pod{knownPod: {Ifindex: podIndex, MAC: podMAC, BridgeMAC: brMAC}}); err != nil {
		t.Fatal(err)
	}
	return p
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// ipv4 is an IPv4 header (no options) with a valid checksum.
func ipv4(src, dst netip.Addr, proto byte, ttl byte, payloadLen int) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+payloadLen))
	h[6] = 0x40
	h[8], h[9] = ttl, proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], csum(h))
	return h
}

// inner is a UDP packet between pods.
func inner(src, dst netip.Addr, ttl byte, payload string) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 4000)
	binary.BigEndian.PutUint16(udp[2:], 5000)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	return append(ipv4(src, dst, 17, ttl, len(udp)), udp...)
}

// frame is a flannel datagram as it arrives on the underlay: Ethernet (to
// the test device's all-zero MAC, so PACKET_HOST), outer IPv4 and UDP,
// then pkt.
func frame(outerSrc, outerDst netip.Addr, dport uint16, pkt []byte) []byte {
	eth := []byte{0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0x12, 0x08, 0x00}
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 8285)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(pkt)))
	out := append(eth, ipv4(outerSrc, outerDst, 17, 64, 8+len(pkt))...)
	out = append(out, udp...)
	return append(out, pkt...)
}

func runIngress(t testing.TB, p *Path, in []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := p.coll.Programs["ingress"].Run(opts)
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, opts.DataOut
}

// TestIngress runs the ingress program on handmade frames: what it takes
// off the wire comes out as the inner packet, everything it must leave to
// the userspace path comes out unchanged with TCX_NEXT.
func TestIngress(t *testing.T) {
	p := loadForTest(t)

	t.Run("to an address of the subnet", func(t *testing.T) {
		pkt := inner(peerPod, plainDst, 64, "hello")
		ret, out := runIngress(t, p, frame(peerPublic, localPublic, 8285, pkt))
		if ret != retRedir {
			t.Fatalf("returned %#x, want redirect", ret)
		}
		if !bytes.Equal(out[14:], pkt) {
			t.Errorf("out % x\nwant the inner packet % x", out[14:], pkt)
		}
		c, err := p.Counters()
		if err != nil {
			t.Fatal(err)
		}
		got := c[peerNet]
		if got.RxPackets != 1 || got.RxBytes != uint64(len(pkt)) || time.Since(got.LastReceived) > time.Minute {
			t.Errorf("counters %+v, want 1 packet of %d bytes just now", got, len(pkt))
		}
	})

	t.Run("to a known pod", func(t *testing.T) {
		pkt := inner(peerPod, knownPod, 64, "to the pod")
		ret, out := runIngress(t, p, frame(peerPublic, localPublic, 8285, pkt))
		if ret != retRedir {
			t.Fatalf("returned %#x, want redirect", ret)
		}
		if !bytes.Equal(out[0:6], podMAC) || !bytes.Equal(out[6:12], brMAC) {
			t.Errorf("Ethernet header % x, want the pod's MAC from the bridge's", out[:14])
		}
		got := out[14:]
		if got[8] != 63 || csum(got[:20]) != 0 {
			t.Errorf("inner header % x: want TTL 63 and a valid checksum", got[:20])
		}
		want := inner(peerPod, knownPod, 63, "to the pod")
		if !bytes.Equal(got, want) {
			t.Errorf("inner packet % x\nwant % x", got, want)
		}
	})

	t.Run("to a known pod with TTL 1", func(t *testing.T) {
		pkt := inner(peerPod, knownPod, 1, "expiring")
		ret, out := runIngress(t, p, frame(peerPublic, localPublic, 8285, pkt))
		if ret != retRedir || !bytes.Equal(out[14:], pkt) || bytes.Equal(out[0:6], podMAC) {
			t.Errorf("returned %#x, out % x: want the unchanged packet sent through twill0 (the stack answers)", ret, out)
		}
	})

	mangle := func(f func([]byte)) []byte {
		b := frame(peerPublic, localPublic, 8285, inner(peerPod, plainDst, 64, "x"))
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"other port", frame(peerPublic, localPublic, 8472, inner(peerPod, plainDst, 64, "x"))},
		{"other node's address", frame(peerPublic, netip.MustParseAddr("192.168.56.13"), 8285, inner(peerPod, plainDst, 64, "x"))},
		{"unknown peer", frame(stranger, localPublic, 8285, inner(peerPod, plainDst, 64, "x"))},
		{"spoofed inner source", frame(peerPublic, localPublic, 8285, inner(netip.MustParseAddr("10.244.7.7"), plainDst, 64, "x"))},
		{"inner destination not local", frame(peerPublic, localPublic, 8285, inner(peerPod, netip.MustParseAddr("10.244.3.3"), 64, "x"))},
		{"bad outer checksum", mangle(func(b []byte) { b[14+10] ^= 0xff })},
		{"fragment", mangle(func(b []byte) {
			b[14+6] |= 0x20
			binary.BigEndian.PutUint16(b[14+10:], 0)
			binary.BigEndian.PutUint16(b[14+10:], csum(b[14:34]))
		})},
		{"UDP length off by one", mangle(func(b []byte) { binary.BigEndian.PutUint16(b[34+4:], binary.BigEndian.Uint16(b[34+4:])+1) })},
		{"inner not IPv4", mangle(func(b []byte) { b[42] = 0x65 })},
		{"inner header longer than the packet", mangle(func(b []byte) { b[42] = 0x4f })},
		{"inner length short", mangle(func(b []byte) { binary.BigEndian.PutUint16(b[42+2:], binary.BigEndian.Uint16(b[42+2:])-1) })},
		{"for another host", mangle(func(b []byte) { b[0] = 0x02 })},
		{"not UDP", mangle(func(b []byte) {
			b[14+9] = 6
			binary.BigEndian.PutUint16(b[14+10:], 0)
			binary.BigEndian.PutUint16(b[14+10:], csum(b[14:34]))
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ret, out := runIngress(t, p, tc.in)
			if ret != retPass || !bytes.Equal(out, tc.in) {
				t.Errorf("returned %#x and % x, want TCX_NEXT and the frame unchanged", ret, out)
			}
		})
	}
}

// FuzzIngress: whatever arrives, the program either leaves the frame
// alone (TCX_NEXT, unchanged) or takes it off the wire, and then only a
// datagram from the peer's public IP whose inner packet goes from the
// peer's subnet to this node's.
func FuzzIngress(f *testing.F) {
	f.Add(frame(peerPublic, localPublic, 8285, inner(peerPod, plainDst, 64, "hello")))
	f.Add(frame(peerPublic, localPublic, 8285, inner(peerPod, knownPod, 2, "pod")))
	f.Add(frame(stranger, localPublic, 8285, inner(peerPod, plainDst, 64, "x")))
	p := loadForTest(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14+20 || len(in) > 1514 {
			return // the test run refuses less than Ethernet and IPv4 headers, and more than a page
		}
		ret, out := runIngress(t, p, in)
		switch ret {
		case retPass:
			if !bytes.Equal(out, in) {
				t.Fatalf("passed a changed frame: % x from % x", out, in)
			}
		case retRedir:
			if len(in) < 62 || netip.AddrFrom4([4]byte(in[26:30])) != peerPublic {
				t.Fatalf("took a frame that is not from the peer: % x", in)
			}
			pkt := out[14:]
			src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
			// The inner header checksum is the receiving stack's to check
			// (ip_rcv on twill0 or in the pod), as on the userspace path.
			ihl := int(pkt[0]&0x0f) * 4
			if !peerNet.Contains(src) || !localNet.Contains(dst) || pkt[0]>>4 != 4 || ihl < 20 ||
				ihl > int(binary.BigEndian.Uint16(pkt[2:4])) {
				t.Fatalf("delivered % x from % x", pkt, in)
			}
		default:
			t.Fatalf("returned %#x for % x", ret, in)
		}
	})
}
