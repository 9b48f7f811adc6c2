package udp

import (
	"encoding/binary"
	"net/netip"
)

// ipv4HeaderLen is the length of an IPv4 header without options.
const ipv4HeaderLen = 20

// validIPv4 reports whether pkt is exactly one whole IPv4 packet: version 4,
// a header length of at least 20 bytes that fits, and a total length equal
// to len(pkt). (flannel's udp sends the packet as the whole datagram, so a
// longer or shorter datagram is not one.)
func validIPv4(pkt []byte) bool {
	if len(pkt) < ipv4HeaderLen || pkt[0]>>4 != 4 {
		return false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < ipv4HeaderLen || ihl > len(pkt) {
		return false
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	return total == len(pkt) && total >= ihl
}

// decapResult is what decap decided about a datagram.
type decapResult struct {
	// peer is the peer the datagram came from; nil for an unknown peer.
	peer *peer
	// drop is the reason to drop the packet, or "" to deliver it.
	drop string
}

// decap checks a datagram that arrived from the public IP from: it must come
// from a peer, hold one whole IPv4 packet whose source is inside a subnet
// that peer holds and whose destination is inside local (this node's
// subnet). The datagram is the packet (flannel's format); decap does not
// change or keep it. It is pure: the table is immutable and decap touches no
// counters.
func decap(t *peerTable, local netip.Prefix, from netip.Addr, datagram []byte) decapResult {
	ps := t.byIP[from.Unmap()]
	if len(ps) == 0 {
		return decapResult{drop: DropUnknownPeer}
	}
	if !validIPv4(datagram) {
		return decapResult{peer: ps[0], drop: DropMalformed}
	}
	p, ok := t.from(from.Unmap(), datagram[12:16])
	if !ok {
		return decapResult{peer: p, drop: DropSpoofedSource}
	}
	if !local.Contains(netip.AddrFrom4([4]byte(datagram[16:20]))) {
		return decapResult{peer: p, drop: DropNotLocal}
	}
	return decapResult{peer: p}
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ICMP types and codes netUnreachable uses or must not answer.
const (
	protoICMP          = 1
	icmpDestUnreach    = 3
	icmpCodeNetUnreach = 0
)

// netUnreachable builds into buf the ICMP "destination net unreachable"
// (type 3 code 0) answer to pkt, a valid IPv4 packet that could not be
// routed to a peer, from the address from, and returns it; it returns nil
// when no answer is due (RFC 1122 3.2.2 and RFC 1812 4.3.2.7): pkt is an
// ICMP error itself, a non-first fragment, or comes from an address that is
// not a single host. The answer quotes pkt's header and first 8 bytes of
// payload, as RFC 792 asks. buf must hold at least 576 bytes.
func netUnreachable(buf, pkt []byte, from netip.Addr) []byte {
	ihl := int(pkt[0]&0x0f) * 4
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	if !src.IsGlobalUnicast() {
		return nil
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return nil // not the first fragment
	}
	if pkt[9] == protoICMP && len(pkt) > ihl {
		switch pkt[ihl] {
		case 0, 8, 13, 14, 15, 16, 17, 18: // echo reply/request and other queries
		default:
			return nil // an ICMP error (or unknown type): never answered
		}
	}
	quote := min(len(pkt), ihl+8)
	n := ipv4HeaderLen + 8 + quote
	out := buf[:n]
	clear(out[:ipv4HeaderLen+8])
	out[0] = 0x45
	binary.BigEndian.PutUint16(out[2:4], uint16(n))
	out[8] = 64 // TTL
	out[9] = protoICMP
	f := from.As4()
	copy(out[12:16], f[:])
	copy(out[16:20], pkt[12:16])
	binary.BigEndian.PutUint16(out[10:12], checksum(out[:ipv4HeaderLen]))
	icmp := out[ipv4HeaderLen:]
	icmp[0] = icmpDestUnreach
	icmp[1] = icmpCodeNetUnreach
	copy(icmp[8:], pkt[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	return out
}
