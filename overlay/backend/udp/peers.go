package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/twillnet/twill/overlay/backend"
)

// Drop reasons, as they appear in backend.PeerStatus.Drops and
// backend.Status.Drops.
const (
	// DropNoRoute: a packet from the TUN for a subnet no peer holds (answered
	// with ICMP net unreachable). Node-wide.
	DropNoRoute = "no-route"
	// DropUnknownPeer: a datagram whose outer source is no peer's public IP.
	// Node-wide.
	DropUnknownPeer = "unknown-peer"
	// DropSpoofedSource: a peer's datagram whose inner source is outside
	// every subnet that peer holds.
	DropSpoofedSource = "spoofed-source"
	// DropMalformed: not a whole IPv4 packet (version, header length, total
	// length against the datagram's size). Per peer for datagrams from a
	// peer; node-wide for packets read from the TUN.
	DropMalformed = "malformed"
	// DropNotLocal: a peer's packet whose inner destination is outside this
	// node's subnet; twill does not forward between peers.
	DropNotLocal = "not-local"
	// DropTUNWrite: the TUN refused a packet. Node-wide: a batched write does
	// not say which packet failed.
	DropTUNWrite = "tun-write-error"
	// DropUDPSend: the UDP socket refused a datagram to the peer.
	DropUDPSend = "udp-send-error"
	// DropNotIPv4: a packet from the TUN that is not IPv4 (IPv6 the kernel
	// sent to twill0); twill's udp carries IPv4 only. Node-wide.
	DropNotIPv4 = "not-ipv4"
)

var dropReasons = []string{DropNoRoute, DropUnknownPeer, DropSpoofedSource, DropMalformed, DropNotLocal, DropTUNWrite, DropUDPSend, DropNotIPv4}

// dropIndex maps a reason to its slot in a drops array.
func dropIndex(reason string) int { return slices.Index(dropReasons, reason) }

// drops counts dropped packets by reason, with atomics.
type drops [8]atomic.Uint64

func (d *drops) add(reason string, n uint64) { d[dropIndex(reason)].Add(n) }

func (d *drops) snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for i := range d {
		if v := d[i].Load(); v != 0 {
			m[dropReasons[i]] = v
		}
	}
	return m
}

// counters are one peer's traffic counters. Bytes are inner IP packet
// bytes, without the outer IPv4 and UDP headers.
type counters struct {
	txPackets, txBytes atomic.Uint64
	rxPackets, rxBytes atomic.Uint64
	lastSeen           atomic.Int64 // unix nanoseconds of the last datagram received
	drops              drops
}

// peer is one subnet a peer node holds, and where to send its packets.
type peer struct {
	subnet   netip.Prefix
	publicIP netip.Addr
	addr     *net.UDPAddr
	// sockaddr is addr as a struct sockaddr_in, for sendmmsg.
	sockaddr [16]byte
	c        *counters
}

// peerTable is the immutable forwarding table: built on every lease change,
// swapped in atomically, read lock-free by the packet loops.
type peerTable struct {
	// lens are the distinct prefix lengths of the subnets, longest first
	// (one, SubnetLen, in any sane cluster).
	lens []int
	// bySubnet is keyed by bits<<32 | masked address.
	bySubnet map[uint64]*peer
	// byIP lists the subnets each public IP holds (usually one).
	byIP map[netip.Addr][]*peer
	// peers in subnet order, for Status.
	peers []*peer
}

func subnetKey(addr uint32, bits int) uint64 {
	mask := uint32(0)
	if bits > 0 {
		mask = ^uint32(0) << (32 - bits)
	}
	return uint64(bits)<<32 | uint64(addr&mask)
}

// newPeerTable builds a table for peers (subnet -> public IP), reusing the
// counters of subnets in old so that a lease renewal keeps them. port is the
// peers' UDP port.
func newPeerTable(old *peerTable, list []peerEntry, port int) *peerTable {
	t := &peerTable{bySubnet: map[uint64]*peer{}, byIP: map[netip.Addr][]*peer{}}
	oldBy := map[netip.Prefix]*counters{}
	if old != nil {
		for _, p := range old.peers {
			oldBy[p.subnet] = p.c
		}
	}
	for _, e := range list {
		s := e.Subnet.Masked()
		if !s.Addr().Is4() || !e.PublicIP.Is4() {
			continue
		}
		c := oldBy[s]
		if c == nil {
			c = &counters{}
		}
		p := &peer{subnet: s, publicIP: e.PublicIP, c: c,
			addr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.PublicIP, uint16(port)))}
		ip4 := e.PublicIP.As4()
		binary.NativeEndian.PutUint16(p.sockaddr[0:2], 2) // AF_INET
		binary.BigEndian.PutUint16(p.sockaddr[2:4], uint16(port))
		copy(p.sockaddr[4:8], ip4[:])
		a4 := s.Addr().As4()
		t.bySubnet[subnetKey(binary.BigEndian.Uint32(a4[:]), s.Bits())] = p
		t.byIP[e.PublicIP] = append(t.byIP[e.PublicIP], p)
		t.peers = append(t.peers, p)
		if !slices.Contains(t.lens, s.Bits()) {
			t.lens = append(t.lens, s.Bits())
		}
	}
	slices.SortFunc(t.lens, func(a, b int) int { return b - a })
	slices.SortFunc(t.peers, func(a, b *peer) int { return a.subnet.Addr().Compare(b.subnet.Addr()) })
	return t
}

// peerEntry is a row of the peer table's input.
type peerEntry struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
}

// lookup finds the peer whose subnet holds the IPv4 address a (4 bytes,
// network order).
func (t *peerTable) lookup(a []byte) *peer {
	v := binary.BigEndian.Uint32(a)
	for _, bits := range t.lens {
		if p := t.bySubnet[subnetKey(v, bits)]; p != nil {
			return p
		}
	}
	return nil
}

// from finds the peer subnet of public IP ip that holds the inner source
// src; if ip is a peer but none of its subnets holds src, it returns the
// first of ip's subnets and false.
func (t *peerTable) from(ip netip.Addr, src []byte) (*peer, bool) {
	ps := t.byIP[ip]
	if len(ps) == 0 {
		return nil, false
	}
	a := netip.AddrFrom4([4]byte(src))
	for _, p := range ps {
		if p.subnet.Contains(a) {
			return p, true
		}
	}
	return ps[0], false
}

func (p *peer) status() backend.PeerStatus {
	st := backend.PeerStatus{
		Subnet:    p.subnet,
		PublicIP:  p.publicIP,
		TxPackets: p.c.txPackets.Load(),
		TxBytes:   p.c.txBytes.Load(),
		RxPackets: p.c.rxPackets.Load(),
		RxBytes:   p.c.rxBytes.Load(),
		Drops:     p.c.drops.snapshot(),
	}
	if ns := p.c.lastSeen.Load(); ns != 0 {
		st.LastSeen = time.Unix(0, ns)
	}
	return st
}

func (t *peerTable) status() []backend.PeerStatus {
	out := make([]backend.PeerStatus, 0, len(t.peers))
	for _, p := range t.peers {
		out = append(out, p.status())
	}
	return out
}
