package udp

import (
	"encoding/binary"
	"errors"
)

// The virtio-net header that a TUN opened with IFF_VNET_HDR puts in front
// of every packet (struct virtio_net_hdr, in the host's byte order).
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // checksum from CsumStart to the end, stored at CsumStart+CsumOffset

	gsoNone  = 0
	gsoTCPv4 = 1
	gsoUDPL4 = 5
	gsoECN   = 0x80
)

// vnetHdr is a decoded virtio-net header.
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func decodeVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:4]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:6]),
		csumStart:  binary.NativeEndian.Uint16(b[6:8]),
		csumOffset: binary.NativeEndian.Uint16(b[8:10]),
	}
}

func (h vnetHdr) encode(b []byte) {
	b[0] = h.flags
	b[1] = h.gsoType
	binary.NativeEndian.PutUint16(b[2:4], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:6], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:8], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:10], h.csumOffset)
}

// IP protocol numbers.
const (
	protoTCP = 6
	protoUDP = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

var (
	errBadSuperPacket = errors.New("malformed offloaded packet")
	errUnsupportedGSO = errors.New("unsupported segmentation type")
)

// segment is one flannel datagram made from a super-packet: a header of
// its own (IPv4 + TCP/UDP, in the segmenter's arena) followed by a slice
// of the super-packet's payload, sent together by scatter-gather. A packet
// that needs no segmentation has the whole packet as hdr and no payload.
type segment struct {
	hdr, payload []byte
}

// segmenter turns packets read from the TUN (virtio-net header first) into
// flannel datagrams: whole IPv4 packets with valid checksums. Super-packets
// (TSO/USO) are cut into gsoSize pieces; each gets a copy of the headers
// fixed up as the kernel would (IP total length, ID and checksum; TCP
// sequence number, flags and checksum; UDP length and checksum). Payload
// bytes are read for the checksums but never copied.
type segmenter struct {
	arena []byte // headers of the current batch
}

// reset forgets the headers of the previous batch.
func (s *segmenter) reset() { s.arena = s.arena[:0] }

// header returns n bytes of arena space. The arena is allocated big enough
// for a batch (see newSegmenter) so that it never moves while segments
// point into it; if it would, a fresh one is taken (the old segments keep
// the old array alive).
func (s *segmenter) header(n int) []byte {
	if len(s.arena)+n > cap(s.arena) {
		s.arena = make([]byte, 0, max(cap(s.arena), 64<<10))
	}
	l := len(s.arena)
	s.arena = s.arena[:l+n]
	return s.arena[l : l+n : l+n]
}

// split appends to out the datagrams that the packet pkt (IPv4, starting
// after the virtio-net header h) becomes, and returns out and the gso size
// (the size of every datagram but the last; 0 when the packet is one
// datagram). pkt is changed in place when its checksum is left to us.
func (s *segmenter) split(out []segment, h vnetHdr, pkt []byte) ([]segment, int, error) {
	switch h.gsoType &^ gsoECN {
	case gsoNone:
		if h.flags&vnetFlagNeedsCsum != 0 {
			if err := completeChecksum(pkt, int(h.csumStart), int(h.csumOffset)); err != nil {
				return out, 0, err
			}
		}
		return append(out, segment{hdr: pkt}), 0, nil
	case gsoTCPv4, gsoUDPL4:
	default:
		return out, 0, errUnsupportedGSO
	}
	if len(pkt) < ipv4HeaderLen || pkt[0]>>4 != 4 {
		return out, 0, errBadSuperPacket
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < ipv4HeaderLen || len(pkt) < ihl+8 {
		return out, 0, errBadSuperPacket
	}
	proto := pkt[9]
	var l4len int
	switch {
	case h.gsoType&^gsoECN == gsoTCPv4 && proto == protoTCP:
		if len(pkt) < ihl+20 {
			return out, 0, errBadSuperPacket
		}
		l4len = int(pkt[ihl+12]>>4) * 4
		if l4len < 20 {
			return out, 0, errBadSuperPacket
		}
	case h.gsoType&^gsoECN == gsoUDPL4 && proto == protoUDP:
		l4len = 8
	default:
		return out, 0, errBadSuperPacket
	}
	hlen := ihl + l4len
	mss := int(h.gsoSize)
	if hlen > len(pkt) || mss <= 0 {
		return out, 0, errBadSuperPacket
	}
	payload := pkt[hlen:]
	if len(payload) <= mss {
		// One segment: just complete the checksum.
		binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
		ipChecksum(pkt[:ihl])
		l4Checksum(pkt[:hlen], ihl, proto, payload, len(payload))
		return append(out, segment{hdr: pkt}), 0, nil
	}
	id := binary.BigEndian.Uint16(pkt[4:6])
	var seq uint32
	var flags byte
	if proto == protoTCP {
		seq = binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8])
		flags = pkt[ihl+13]
	}
	for i, off := 0, 0; off < len(payload); i, off = i+1, off+mss {
		end := min(off+mss, len(payload))
		p := payload[off:end]
		hdr := s.header(hlen)
		copy(hdr, pkt[:hlen])
		binary.BigEndian.PutUint16(hdr[2:4], uint16(hlen+len(p)))
		binary.BigEndian.PutUint16(hdr[4:6], id+uint16(i))
		ipChecksum(hdr[:ihl])
		if proto == protoTCP {
			binary.BigEndian.PutUint32(hdr[ihl+4:ihl+8], seq+uint32(off))
			f := flags
			if end < len(payload) {
				f &^= tcpFIN | tcpPSH
			}
			if off > 0 {
				f &^= tcpCWR
			}
			hdr[ihl+13] = f
		}
		l4Checksum(hdr, ihl, proto, p, len(p))
		out = append(out, segment{hdr: hdr, payload: p})
	}
	return out, hlen + mss, nil
}

// l4csumField is the TCP or UDP checksum field of pkt.
func l4csumField(pkt []byte, ihl int, proto byte) []byte {
	if proto == protoTCP {
		return pkt[ihl+16 : ihl+18]
	}
	return pkt[ihl+6 : ihl+8]
}

// l4Checksum computes the TCP or UDP checksum of a packet made of hdr (IPv4
// and layer-4 headers) and payload (plen bytes; payload may be nil when the
// caller adds its sum itself through finishL4Checksum) and stores it. For
// UDP it also sets the length.
func l4Checksum(hdr []byte, ihl int, proto byte, payload []byte, plen int) {
	l4 := hdr[ihl:]
	if proto == protoUDP {
		binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)+plen))
	}
	field := l4csumField(hdr, ihl, proto)
	field[0], field[1] = 0, 0
	sum := sumBytes(l4, pseudoSum(hdr[12:16], hdr[16:20], proto, len(l4)+plen))
	if payload != nil {
		sum = sumBytes(payload, uint32(sum))
	}
	finishL4Checksum(hdr, ihl, proto, sum)
}

// finishL4Checksum stores the complement of sum as the checksum (UDP's 0
// means none, so it is sent as 0xffff).
func finishL4Checksum(hdr []byte, ihl int, proto byte, sum uint16) {
	c := ^sum
	if proto == protoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4csumField(hdr, ihl, proto), c)
}

// ipChecksum sets the IPv4 header checksum of hdr (the whole header).
func ipChecksum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:12], ^sumBytes(hdr, 0))
}

// completeChecksum finishes a checksum the kernel left partial
// (CHECKSUM_PARTIAL): the field at start+offset holds the pseudo-header
// sum; the checksum covers pkt[start:].
func completeChecksum(pkt []byte, start, offset int) error {
	if start+offset+2 > len(pkt) || start < ipv4HeaderLen {
		return errBadSuperPacket
	}
	c := ^sumBytes(pkt[start:], 0)
	if c == 0 && len(pkt) > 9 && pkt[9] == protoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[start+offset:], c)
	return nil
}

// coalescer merges consecutive TCP segments of one flow, received as
// separate flannel datagrams, into one super-packet for the TUN (GRO done
// in userspace): a virtio-net header saying TCPv4 segmentation with the
// segments' size, one copy of the first segment's headers fixed up for the
// whole (lengths, PSH from the last, the pseudo-header sum in the TCP
// checksum field, as CHECKSUM_PARTIAL wants), then the payloads, each a
// slice of its datagram, written with one writev. Anything else is written
// as it came, with an empty virtio-net header (the kernel then checks its
// checksums).
//
// Segments are merged when: both are TCP over IPv4 without IP options or
// fragmentation, with the same addresses, ports, TOS, TTL, DF, ack, window
// and TCP options (timestamps included), the next sequence number follows,
// only ACK (and PSH on the last) is set, every segment but the last has
// the first's payload size, and the whole stays within 65535 bytes.
type coalescer struct {
	// groups are the writes of the batch: each is a list of iovecs (the
	// virtio-net header, the headers, the payloads).
	groups []group
	arena  []byte // virtio-net headers and merged headers
	iovs   [][]byte
}

// group is one write to the TUN: iovs[first:last] of the coalescer.
type group struct {
	first, last int
	// for TCP groups that may grow:
	hdr      []byte // the merged headers (in arena); nil for a single packet
	mss      int
	total    int    // IP total length so far
	nextSeq  uint32 // sequence number the next segment must have
	closed   bool   // a short segment or a flag ended it
	firstPkt []byte // the first datagram, to compare the next one with
	segs     int
}

// addPlain queues pkt to be written as it is, on its own (a queue
// without virtio-net headers).
func (c *coalescer) addPlain(pkt []byte) {
	c.groups = append(c.groups, group{first: len(c.iovs), last: len(c.iovs) + 1, segs: 1})
	c.iovs = append(c.iovs, pkt)
}

func (c *coalescer) reset() {
	c.groups = c.groups[:0]
	c.arena = c.arena[:0]
	clear(c.iovs)
	c.iovs = c.iovs[:0]
}

func (c *coalescer) alloc(n int) []byte {
	if len(c.arena)+n > cap(c.arena) {
		c.arena = make([]byte, 0, max(cap(c.arena), 64<<10))
	}
	l := len(c.arena)
	c.arena = c.arena[:l+n]
	return c.arena[l : l+n : l+n]
}

// tcpInfo returns the header lengths and payload of pkt if it is a TCP
// segment that may be merged (see coalescer), else ok is false.
func tcpInfo(pkt []byte) (hlen int, ok bool) {
	if len(pkt) < 40 || pkt[0] != 0x45 || pkt[9] != protoTCP {
		return 0, false
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 { // MF or fragment offset
		return 0, false
	}
	thl := int(pkt[20+12]>>4) * 4
	if thl < 20 || 20+thl > len(pkt) {
		return 0, false
	}
	if pkt[20+13]&^(tcpACK|tcpPSH) != 0 || pkt[20+13]&tcpACK == 0 {
		return 0, false
	}
	return 20 + thl, true
}

// tcpChecksumOK reports whether the TCP checksum of pkt (IPv4 without
// options) is right. A merged super-packet goes to the TUN with a partial
// checksum, which the kernel trusts, so every segment is checked before it
// is merged: the outer UDP checksum cannot be relied on, as a sender may
// leave it zero (IPv4 allows it; twill's kernel path does).
func tcpChecksumOK(pkt []byte) bool {
	return sumBytes(pkt[20:], pseudoSum(pkt[12:16], pkt[16:20], protoTCP, len(pkt)-20)) == 0xffff
}

// add appends the datagram pkt (a checked IPv4 packet) to the batch.
func (c *coalescer) add(pkt []byte) {
	if n := len(c.groups); n > 0 {
		g := &c.groups[n-1]
		if g.hdr != nil && !g.closed && c.extend(g, pkt) {
			return
		}
	}
	first := len(c.iovs)
	vh := c.alloc(vnetHdrLen)
	clear(vh)
	c.iovs = append(c.iovs, vh, pkt)
	g := group{first: first, last: len(c.iovs), segs: 1}
	if hlen, ok := tcpInfo(pkt); ok && len(pkt) > hlen && pkt[20+13]&tcpPSH == 0 && tcpChecksumOK(pkt) {
		g.firstPkt = pkt
		g.mss = len(pkt) - hlen
		g.total = len(pkt)
		g.nextSeq = binary.BigEndian.Uint32(pkt[24:28]) + uint32(g.mss)
		g.hdr = []byte{} // may grow; the merged header is made on the second segment
	}
	c.groups = append(c.groups, g)
}

// extend merges pkt into g if it may.
func (c *coalescer) extend(g *group, pkt []byte) bool {
	hlen, ok := tcpInfo(pkt)
	if !ok {
		return false
	}
	f := g.firstPkt
	fh := len(f) - g.mss
	plen := len(pkt) - hlen
	if hlen != fh || plen == 0 || plen > g.mss || g.total+plen > 65535 {
		return false
	}
	if binary.BigEndian.Uint32(pkt[24:28]) != g.nextSeq {
		return false
	}
	// TOS, DF, TTL, protocol, addresses; ports; ack; window; options.
	if pkt[1] != f[1] || pkt[6]&0x40 != f[6]&0x40 || pkt[8] != f[8] ||
		string(pkt[12:24]) != string(f[12:24]) || string(pkt[28:32]) != string(f[28:32]) ||
		string(pkt[34:36]) != string(f[34:36]) || string(pkt[40:hlen]) != string(f[40:hlen]) {
		return false
	}
	if g.last != len(c.iovs) {
		return false // only the batch's last group grows
	}
	if !tcpChecksumOK(pkt) {
		return false // written alone, so that the kernel drops it
	}
	if g.segs == 1 {
		// Second segment: make the merged header and put it in place of
		// the first packet's headers.
		h := c.alloc(fh)
		copy(h, f[:fh])
		g.hdr = h
		c.iovs[g.first+1] = h
		c.iovs = append(c.iovs, f[fh:])
	}
	c.iovs = append(c.iovs, pkt[hlen:])
	g.last = len(c.iovs)
	g.total += plen
	g.nextSeq += uint32(plen)
	g.segs++
	if pkt[20+13]&tcpPSH != 0 {
		g.hdr[20+13] |= tcpPSH
		g.closed = true
	}
	if plen < g.mss {
		g.closed = true
	}
	return true
}

// finish fixes up the headers of merged groups; call it before writing.
func (c *coalescer) finish() {
	for i := range c.groups {
		g := &c.groups[i]
		if g.segs < 2 {
			continue
		}
		h := g.hdr
		fh := len(h)
		binary.BigEndian.PutUint16(h[2:4], uint16(g.total))
		ipChecksum(h[:20])
		tcpLen := g.total - 20
		binary.BigEndian.PutUint16(h[36:38], fold64(uint64(pseudoSum(h[12:16], h[16:20], protoTCP, tcpLen))))
		vnetHdr{
			flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: uint16(fh), gsoSize: uint16(g.mss),
			csumStart: 20, csumOffset: 16,
		}.encode(c.iovs[g.first])
	}
}
