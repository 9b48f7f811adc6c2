package udp

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// The test cluster's public IPs (cluster_linux_test.go).
var (
	ipA = netip.MustParseAddr("192.168.56.11")
	ipB = netip.MustParseAddr("192.168.56.12")
	// ipStranger is on node B's underlay interface but is no peer.
	ipStranger = netip.MustParseAddr("192.168.56.66")
)

var (
	testLocal = netip.MustParsePrefix("10.244.1.0/24")
	peerA     = netip.MustParseAddr("192.168.56.12")
	peerB     = netip.MustParseAddr("192.168.56.13")
)

func testTable() *peerTable {
	return newPeerTable(nil, []peerEntry{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: peerA},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: peerB},
		{Subnet: netip.MustParsePrefix("10.244.4.0/24"), PublicIP: peerB}, // a node holding two subnets
	}, 8285)
}

// ipv4Packet builds a minimal valid IPv4 packet (protocol proto) with
// payload bytes of payload.
func ipv4Packet(src, dst string, proto byte, payload int) []byte {
	p := make([]byte, 20+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8] = 64
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20]))
	return p
}

func TestDecap(t *testing.T) {
	tbl := testTable()
	good := ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40)
	long := append(ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40), 0)
	badVersion := ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40)
	badVersion[0] = 0x65
	badIHL := ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40)
	badIHL[0] = 0x44
	bigIHL := ipv4Packet("10.244.2.5", "10.244.1.2", 6, 0)
	bigIHL[0] = 0x46
	for _, tc := range []struct {
		name   string
		from   netip.Addr
		dg     []byte
		drop   string
		subnet string
	}{
		{"good", peerA, good, "", "10.244.2.0/24"},
		{"second subnet of a node", peerB, ipv4Packet("10.244.4.9", "10.244.1.2", 17, 8), "", "10.244.4.0/24"},
		{"stranger", netip.MustParseAddr("192.168.56.66"), good, DropUnknownPeer, ""},
		{"stranger, mapped v6 form", netip.MustParseAddr("::ffff:192.168.56.66"), good, DropUnknownPeer, ""},
		{"peer, mapped v6 form", netip.AddrFrom16(peerA.As16()), good, "", "10.244.2.0/24"},
		{"spoofed inner source", peerA, ipv4Packet("10.244.3.5", "10.244.1.2", 6, 40), DropSpoofedSource, "10.244.2.0/24"},
		{"not for this node", peerA, ipv4Packet("10.244.2.5", "10.244.3.2", 6, 40), DropNotLocal, "10.244.2.0/24"},
		{"empty", peerA, nil, DropMalformed, "10.244.2.0/24"},
		{"short", peerA, good[:19], DropMalformed, "10.244.2.0/24"},
		{"truncated", peerA, good[:30], DropMalformed, "10.244.2.0/24"},
		{"longer than total length", peerA, long, DropMalformed, "10.244.2.0/24"},
		{"version 6", peerA, badVersion, DropMalformed, "10.244.2.0/24"},
		{"header length 16", peerA, badIHL, DropMalformed, "10.244.2.0/24"},
		{"header length beyond packet", peerA, bigIHL, DropMalformed, "10.244.2.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := decap(tbl, testLocal, tc.from, tc.dg)
			if r.drop != tc.drop {
				t.Errorf("drop = %q, want %q", r.drop, tc.drop)
			}
			got := ""
			if r.peer != nil {
				got = r.peer.subnet.String()
			}
			if got != tc.subnet {
				t.Errorf("peer = %q, want %q", got, tc.subnet)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	tbl := testTable()
	for dst, want := range map[string]string{
		"10.244.2.0": "10.244.2.0/24", "10.244.2.255": "10.244.2.0/24", "10.244.4.7": "10.244.4.0/24",
		"10.244.5.1": "", "10.244.1.2": "", "192.168.56.12": "",
	} {
		a := netip.MustParseAddr(dst).As4()
		got := ""
		if p := tbl.lookup(a[:]); p != nil {
			got = p.subnet.String()
		}
		if got != want {
			t.Errorf("lookup(%s) = %q, want %q", dst, got, want)
		}
	}
	// Counters survive a rebuild that keeps the subnet, and go with it.
	tbl.lookup([]byte{10, 244, 2, 1}).c.txPackets.Add(3)
	next := newPeerTable(tbl, []peerEntry{{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: peerB}}, 8285)
	if p := next.lookup([]byte{10, 244, 2, 1}); p == nil || p.c.txPackets.Load() != 3 || p.publicIP != peerB {
		t.Errorf("rebuilt table lost the peer's counters or kept its old IP: %+v", p)
	}
	if next.lookup([]byte{10, 244, 3, 1}) != nil {
		t.Error("rebuilt table still routes a removed peer")
	}
}

func TestNetUnreachable(t *testing.T) {
	buf := make([]byte, 576)
	ping := ipv4Packet("10.244.1.2", "10.244.9.9", protoICMP, 64)
	ping[20] = 8 // echo request
	from := netip.MustParseAddr("10.244.9.0")
	out := netUnreachable(buf, ping, from)
	if out == nil {
		t.Fatal("no answer to an echo request")
	}
	if !validIPv4(out) || checksum(out[:20]) != 0 {
		t.Fatalf("answer is not a valid IPv4 packet: % x", out)
	}
	if got := netip.AddrFrom4([4]byte(out[12:16])); got != from {
		t.Errorf("source = %s, want %s", got, from)
	}
	if got := netip.AddrFrom4([4]byte(out[16:20])); got.String() != "10.244.1.2" {
		t.Errorf("destination = %s, want the sender", got)
	}
	icmp := out[20:]
	if icmp[0] != 3 || icmp[1] != 0 || checksum(icmp) != 0 {
		t.Errorf("ICMP type %d code %d checksum ok %v, want 3/0 valid", icmp[0], icmp[1], checksum(icmp) == 0)
	}
	if len(icmp) != 8+28 || string(icmp[8:]) != string(ping[:28]) {
		t.Errorf("quote is not the header and 8 bytes of the packet")
	}

	errPkt := ipv4Packet("10.244.1.2", "10.244.9.9", protoICMP, 36)
	errPkt[20] = 3
	if netUnreachable(buf, errPkt, from) != nil {
		t.Error("answered an ICMP error")
	}
	frag := ipv4Packet("10.244.1.2", "10.244.9.9", 17, 8)
	binary.BigEndian.PutUint16(frag[6:8], 100)
	if netUnreachable(buf, frag, from) != nil {
		t.Error("answered a non-first fragment")
	}
	if netUnreachable(buf, ipv4Packet("0.0.0.0", "10.244.9.9", 17, 8), from) != nil {
		t.Error("answered 0.0.0.0")
	}
}

// FuzzDecap feeds decap arbitrary datagrams from a peer and from strangers:
// it must not panic, must deliver only whole IPv4 packets from inside the
// sender's subnet to this node's subnet, and must blame the right party.
func FuzzDecap(f *testing.F) {
	f.Add([]byte{192, 168, 56, 12}, ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40))
	f.Add([]byte{192, 168, 56, 12}, ipv4Packet("10.244.3.5", "10.244.1.2", 6, 40))
	f.Add([]byte{192, 168, 56, 13}, ipv4Packet("10.244.4.5", "10.244.1.2", 17, 0))
	f.Add([]byte{192, 168, 56, 66}, ipv4Packet("10.244.2.5", "10.244.1.2", 6, 40))
	f.Add([]byte{192, 168, 56, 12}, []byte{0x45, 0, 0, 20})
	f.Add([]byte{192, 168, 56, 12}, []byte{})
	f.Add([]byte{192, 168, 56, 12}, []byte{0x4f, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0, 10, 244, 2, 1, 10, 244, 1, 1})
	tbl := testTable()
	f.Fuzz(func(t *testing.T, from4 []byte, dg []byte) {
		if len(from4) != 4 {
			return
		}
		from := netip.AddrFrom4([4]byte(from4))
		orig := string(dg)
		r := decap(tbl, testLocal, from, dg)
		if string(dg) != orig {
			t.Fatal("decap changed the datagram")
		}
		known := len(tbl.byIP[from]) > 0
		if !known {
			if r.drop != DropUnknownPeer || r.peer != nil {
				t.Fatalf("stranger %s: drop %q peer %v", from, r.drop, r.peer)
			}
			return
		}
		if r.peer == nil || r.peer.publicIP != from {
			t.Fatalf("datagram from peer %s blamed on %v", from, r.peer)
		}
		if r.drop != "" {
			return
		}
		if !validIPv4(dg) || int(binary.BigEndian.Uint16(dg[2:4])) != len(dg) {
			t.Fatalf("delivered a malformed packet % x", dg)
		}
		src := netip.AddrFrom4([4]byte(dg[12:16]))
		dst := netip.AddrFrom4([4]byte(dg[16:20]))
		if !r.peer.subnet.Contains(src) || !testLocal.Contains(dst) {
			t.Fatalf("delivered %s -> %s from peer subnet %s", src, dst, r.peer.subnet)
		}
		if len(dg) >= 20 && r.drop == "" {
			buf := make([]byte, 576)
			if out := netUnreachable(buf, dg, netip.MustParseAddr("10.244.9.0")); out != nil && (!validIPv4(out) || checksum(out[20:]) != 0) {
				t.Fatalf("bad ICMP answer % x", out)
			}
		}
	})
}

// udpInPacket builds an IPv4/UDP packet src:1234 -> dst:port carrying
// payload (UDP checksum 0: none, allowed over IPv4).
func udpInPacket(src, dst netip.Addr, port uint16, payload string) []byte {
	p := ipv4Packet(src.String(), dst.String(), 17, 8+len(payload))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:2], 1234)
	binary.BigEndian.PutUint16(u[2:4], port)
	binary.BigEndian.PutUint16(u[4:6], uint16(8+len(payload)))
	copy(u[8:], payload)
	return p
}
