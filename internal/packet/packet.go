// Package packet builds raw packets that tests send at a node (a VXLAN
// datagram's payload as a peer's kernel would send it, or as anyone who can
// reach the port could forge it) and reads the frames tests capture (an
// Ethernet frame's UDP datagram, a WireGuard data message).
//
// It only builds and reads bytes; it must not open sockets or touch the
// network.
package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// VXLAN is a VXLAN datagram's payload carrying one inner UDP datagram
// (payload msg) from src to dst, to the VTEP MAC dstMAC on VNI vni.
func VXLAN(vni int, dstMAC net.HardwareAddr, src, dst netip.AddrPort, msg []byte) []byte {
	b := make([]byte, 0, 8+14+20+8+len(msg))
	b = append(b, 0x08, 0, 0, 0, byte(vni>>16), byte(vni>>8), byte(vni), 0)
	b = append(b, dstMAC...)
	b = append(b, 0x02, 0x00, 0x5e, 0x10, 0x66, 0x66, 0x08, 0x00) // a made-up source MAC, IPv4
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(msg)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	b = append(b, ip...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(msg)))
	b = append(b, 0, 0) // no UDP checksum (allowed over IPv4)
	return append(b, msg...)
}

// UDPOfFrame reads an Ethernet frame carrying a UDP datagram in IPv4 or in
// IPv6 (UDP the next header, no extension headers): its addresses and
// payload (as much of it as the frame holds); ok is false for any other
// frame.
func UDPOfFrame(f []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	const eth = 14
	if len(f) < eth+20 {
		return src, dst, nil, false
	}
	var s, d netip.Addr
	var udp []byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		ihl := int(f[eth]&0x0f) * 4
		if f[eth+9] != 17 || ihl < 20 || len(f) < eth+ihl+8 {
			return src, dst, nil, false
		}
		s, _ = netip.AddrFromSlice(f[eth+12 : eth+16])
		d, _ = netip.AddrFromSlice(f[eth+16 : eth+20])
		udp = f[eth+ihl:]
	case 0x86dd:
		if len(f) < eth+40+8 || f[eth+6] != 17 {
			return src, dst, nil, false
		}
		s, _ = netip.AddrFromSlice(f[eth+8 : eth+24])
		d, _ = netip.AddrFromSlice(f[eth+24 : eth+40])
		udp = f[eth+40:]
	default:
		return src, dst, nil, false
	}
	src = netip.AddrPortFrom(s, binary.BigEndian.Uint16(udp[0:2]))
	dst = netip.AddrPortFrom(d, binary.BigEndian.Uint16(udp[2:4]))
	return src, dst, udp[8:], true
}

// IsWireGuardData reports whether a UDP payload is a WireGuard transport
// data message: type 4, three reserved zero bytes, receiver index and
// counter (16 bytes), then the encrypted packet.
func IsWireGuardData(payload []byte) bool {
	return len(payload) >= 16 && payload[0] == 4 && payload[1] == 0 && payload[2] == 0 && payload[3] == 0
}
