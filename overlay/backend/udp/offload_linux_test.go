package udp

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// tcpSuperPacket builds an IPv4/TCP packet carrying payload, as the kernel
// hands a TSO super-packet to the TUN: total length of the whole, the TCP
// checksum field holding the pseudo-header sum (CHECKSUM_PARTIAL).
func tcpSuperPacket(payload []byte, flags byte, opts []byte) []byte {
	thl := 20 + len(opts)
	pkt := make([]byte, 20+thl+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[4:6], 0x1234)
	pkt[6] = 0x40 // DF
	pkt[8] = 64
	pkt[9] = protoTCP
	copy(pkt[12:16], []byte{10, 244, 1, 2})
	copy(pkt[16:20], []byte{10, 244, 2, 2})
	ipChecksum(pkt[:20])
	t := pkt[20:]
	binary.BigEndian.PutUint16(t[0:2], 40000)
	binary.BigEndian.PutUint16(t[2:4], 5201)
	binary.BigEndian.PutUint32(t[4:8], 0xfffff000) // wraps
	binary.BigEndian.PutUint32(t[8:12], 777)
	t[12] = byte(thl/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 512)
	copy(t[20:], opts)
	copy(t[thl:], payload)
	binary.BigEndian.PutUint16(t[16:18], fold64(uint64(pseudoSum(pkt[12:16], pkt[16:20], protoTCP, len(t)))))
	return pkt
}

// validChecksums checks a whole IPv4 packet's header and TCP/UDP checksum
// with the plain RFC 1071 implementation.
func validChecksums(t *testing.T, pkt []byte) {
	t.Helper()
	if !validIPv4(pkt) {
		t.Fatalf("not a valid IPv4 packet: % x", pkt[:20])
	}
	if checksum(pkt[:20]) != 0 {
		t.Errorf("bad IP header checksum")
	}
	l4 := pkt[20:]
	ph := make([]byte, 12+len(l4))
	copy(ph[0:8], pkt[12:20])
	ph[9] = pkt[9]
	binary.BigEndian.PutUint16(ph[10:12], uint16(len(l4)))
	copy(ph[12:], l4)
	if checksum(ph) != 0 {
		t.Errorf("bad layer-4 checksum (proto %d, %d bytes)", pkt[9], len(l4))
	}
}

func TestSumBytes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		init := r.Uint32() & 0xffff
		// checksum is ^fold(sum); sumBytes with initial must agree with a
		// buffer that carries initial as its first word.
		withInit := append(binary.BigEndian.AppendUint16(nil, uint16(init)), b...)
		if got, want := ^sumBytes(b, init), checksum(withInit); got != want {
			t.Fatalf("%d bytes: sumBytes gives checksum %#04x, RFC 1071 %#04x", n, got, want)
		}
	}
}

func TestSegmentAndCoalesce(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		name  string
		size  int
		mss   int
		flags byte
		opts  []byte
	}{
		{"one full run", 1432 * 20, 1432, tcpACK | tcpPSH, nil},
		{"short last", 1432*7 + 99, 1432, tcpACK | tcpPSH, nil},
		{"timestamps", 1420*30 + 3, 1420, tcpACK, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}},
		{"odd mss", 1001*5 + 1, 1001, tcpACK | tcpPSH, nil},
		{"fin on the last", 1432*3 + 10, 1432, tcpACK | tcpFIN | tcpPSH, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, tc.size)
			for i := range payload {
				payload[i] = byte(r.Uint32())
			}
			super := tcpSuperPacket(payload, tc.flags, tc.opts)
			orig := bytes.Clone(super)
			var s segmenter
			h := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, gsoSize: uint16(tc.mss), csumStart: 20, csumOffset: 16}
			segs, gso, err := s.split(nil, h, super)
			if err != nil {
				t.Fatal(err)
			}
			hlen := 40 + len(tc.opts)
			if want := (tc.size + tc.mss - 1) / tc.mss; len(segs) != want || gso != hlen+tc.mss {
				t.Fatalf("%d segments of %d bytes, want %d of %d", len(segs), gso, want, hlen+tc.mss)
			}
			var got []byte
			co := &coalescer{}
			for i, sg := range segs {
				dg := append(bytes.Clone(sg.hdr), sg.payload...)
				validChecksums(t, dg)
				if i < len(segs)-1 && len(dg) != gso {
					t.Errorf("segment %d is %d bytes, want %d", i, len(dg), gso)
				}
				seq := binary.BigEndian.Uint32(dg[24:28])
				if want := uint32(0xfffff000) + uint32(i*tc.mss); seq != want {
					t.Errorf("segment %d: seq %#x, want %#x", i, seq, want)
				}
				f := dg[33]
				last := i == len(segs)-1
				if (f&tcpPSH != 0) != (last && tc.flags&tcpPSH != 0) || (f&tcpFIN != 0) != (last && tc.flags&tcpFIN != 0) {
					t.Errorf("segment %d: flags %#x", i, f)
				}
				if id := binary.BigEndian.Uint16(dg[4:6]); id != 0x1234+uint16(i) {
					t.Errorf("segment %d: IP ID %#x", i, id)
				}
				got = append(got, dg[hlen:]...)
				co.add(dg)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("the segments' payloads are not the original payload")
			}
			co.finish()
			if tc.flags&tcpFIN != 0 {
				// FIN is never merged: the last segment stays apart.
				if len(co.groups) != 2 {
					t.Fatalf("%d groups, want 2 (the FIN segment apart)", len(co.groups))
				}
				return
			}
			if len(co.groups) != 1 {
				t.Fatalf("coalesced into %d writes, want 1", len(co.groups))
			}
			g := co.groups[0]
			var merged []byte
			for _, p := range co.iovs[g.first+1 : g.last] {
				merged = append(merged, p...)
			}
			vh := decodeVnetHdr(co.iovs[g.first])
			if vh.gsoType != gsoTCPv4 || int(vh.gsoSize) != tc.mss || vh.flags != vnetFlagNeedsCsum ||
				vh.csumStart != 20 || vh.csumOffset != 16 || int(vh.hdrLen) != hlen {
				t.Errorf("virtio-net header %+v", vh)
			}
			// The merged packet is the super-packet again, but for the IP ID
			// (the first's) and PSH (the last's).
			if !bytes.Equal(merged, orig) {
				t.Errorf("merged packet differs from the original super-packet:\n% x\n% x", merged[:hlen], orig[:hlen])
			}
		})
	}
}

func TestSegmentUDPAndPartial(t *testing.T) {
	// A UDP super-packet (USO) of 3 datagrams.
	payload := bytes.Repeat([]byte("0123456789"), 250)
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = protoUDP
	copy(pkt[12:16], []byte{10, 244, 1, 2})
	copy(pkt[16:20], []byte{10, 244, 2, 2})
	binary.BigEndian.PutUint16(pkt[20:22], 1111)
	binary.BigEndian.PutUint16(pkt[22:24], 2222)
	copy(pkt[28:], payload)
	var s segmenter
	segs, gso, err := s.split(nil, vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoUDPL4, gsoSize: 1000, csumStart: 20, csumOffset: 6}, bytes.Clone(pkt))
	if err != nil || len(segs) != 3 || gso != 1028 {
		t.Fatalf("split: %d segments of %d, %v", len(segs), gso, err)
	}
	for _, sg := range segs {
		validChecksums(t, append(bytes.Clone(sg.hdr), sg.payload...))
	}
	// A single packet with a partial checksum is completed in place.
	one := bytes.Clone(pkt[:28+500])
	binary.BigEndian.PutUint16(one[2:4], uint16(len(one)))
	binary.BigEndian.PutUint16(one[24:26], uint16(len(one)-20))
	ipChecksum(one[:20])
	binary.BigEndian.PutUint16(one[26:28], fold64(uint64(pseudoSum(one[12:16], one[16:20], protoUDP, len(one)-20))))
	segs, gso, err = s.split(nil, vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 6}, one)
	if err != nil || len(segs) != 1 || gso != 0 || segs[0].payload != nil {
		t.Fatalf("split single: %d segments, gso %d, %v", len(segs), gso, err)
	}
	validChecksums(t, segs[0].hdr)
	// Broken super-packets are refused, not cut.
	for _, bad := range [][]byte{nil, pkt[:10], {0x60, 0, 0, 0}} {
		if _, _, err := s.split(nil, vnetHdr{gsoType: gsoTCPv4, gsoSize: 100}, bad); err == nil {
			t.Errorf("split accepted % x", bad)
		}
	}
}

func TestCoalesceKeepsFlowsApart(t *testing.T) {
	mk := func(seq uint32, port uint16, n int) []byte {
		p := tcpSuperPacket(make([]byte, n), tcpACK, nil)
		binary.BigEndian.PutUint32(p[24:28], seq)
		binary.BigEndian.PutUint16(p[20:22], port)
		l4Checksum(p[:40], 20, protoTCP, p[40:], len(p)-40)
		return p
	}
	co := &coalescer{}
	co.add(mk(0, 1, 100))
	co.add(mk(100, 1, 100))
	co.add(mk(200, 2, 100)) // other flow
	co.add(mk(400, 2, 100)) // gap in seq
	co.add(mk(500, 2, 50))
	co.add(mk(550, 2, 50)) // after a short segment: new group
	co.add(udpInPacket(ipA, ipB, 53, "x"))
	co.finish()
	var sizes []int
	for _, g := range co.groups {
		sizes = append(sizes, g.segs)
	}
	if want := []int{2, 1, 2, 1, 1}; !equalInts(sizes, want) {
		t.Errorf("groups of %v segments, want %v", sizes, want)
	}
}

// TestCoalesceChecksBeforeMerging: a segment whose TCP checksum is wrong
// (a zero outer UDP checksum let it through) is never merged, so that the
// kernel, which trusts a merged super-packet, checks and drops it alone.
func TestCoalesceChecksBeforeMerging(t *testing.T) {
	mk := func(seq uint32, n int) []byte {
		p := tcpSuperPacket(make([]byte, n), tcpACK, nil)
		binary.BigEndian.PutUint32(p[24:28], seq)
		l4Checksum(p[:40], 20, protoTCP, p[40:], len(p)-40)
		return p
	}
	bad := mk(100, 100)
	bad[60] ^= 0x10 // a flipped payload bit
	co := &coalescer{}
	co.add(mk(0, 100))
	co.add(bad)
	co.add(mk(200, 100))
	co.add(mk(300, 100))
	co.finish()
	var sizes []int
	for _, g := range co.groups {
		sizes = append(sizes, g.segs)
	}
	if want := []int{1, 1, 2}; !equalInts(sizes, want) {
		t.Errorf("groups of %v segments, want %v", sizes, want)
	}
	if vh := co.iovs[co.groups[1].first]; string(vh) != string(make([]byte, vnetHdrLen)) {
		t.Errorf("the bad segment's virtio-net header is % x, want empty (the kernel checks it)", vh)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func BenchmarkSumBytes(b *testing.B) {
	buf := make([]byte, 1432)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		sumBytes(buf, 0)
	}
}

// FuzzSplitCoalesce feeds arbitrary packets and virtio-net headers to the
// segmenter (as a TUN could) and arbitrary datagrams to the coalescer (as a
// peer could): neither may panic, every datagram split makes is a whole
// IPv4 packet, and the coalescer writes every byte it was given once.
func FuzzSplitCoalesce(f *testing.F) {
	f.Add([]byte(tcpSuperPacket(make([]byte, 3000), tcpACK, nil)), byte(gsoTCPv4), uint16(1000), byte(vnetFlagNeedsCsum), uint16(20), uint16(16))
	f.Add(udpInPacket(ipA, ipB, 53, "hello"), byte(gsoNone), uint16(0), byte(vnetFlagNeedsCsum), uint16(20), uint16(6))
	f.Fuzz(func(t *testing.T, pkt []byte, gsoType byte, gsoSize uint16, flags byte, csumStart, csumOffset uint16) {
		var s segmenter
		h := vnetHdr{flags: flags, gsoType: gsoType, gsoSize: gsoSize, csumStart: csumStart, csumOffset: csumOffset}
		segs, _, err := s.split(nil, h, bytes.Clone(pkt))
		if err == nil && h.gsoType&^gsoECN != gsoNone {
			for _, sg := range segs {
				if dg := append(bytes.Clone(sg.hdr), sg.payload...); !validIPv4(dg) {
					t.Fatalf("split made an invalid packet % x", dg)
				}
			}
		}
		co := &coalescer{}
		var in int
		for _, sg := range segs {
			dg := append(bytes.Clone(sg.hdr), sg.payload...)
			in += len(dg)
			co.add(dg)
			co.add(pkt)
			in += len(pkt)
		}
		co.finish()
		out := 0
		for _, g := range co.groups {
			for _, p := range co.iovs[g.first+1 : g.last] {
				out += len(p)
			}
			if g.segs > 1 {
				out += len(co.iovs[g.first+1]) * (g.segs - 1) // headers of the merged segments
			}
		}
		if out != in {
			t.Fatalf("coalescer wrote %d bytes of %d", out, in)
		}
	})
}
