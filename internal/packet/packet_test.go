package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

func TestVXLAN(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	b := VXLAN(0x010203, mac, netip.MustParseAddrPort("10.244.1.2:4444"), netip.MustParseAddrPort("10.244.2.3:7777"), []byte("hi"))
	if len(b) != 8+14+20+8+2 {
		t.Fatalf("length %d", len(b))
	}
	if b[0] != 0x08 || b[4] != 1 || b[5] != 2 || b[6] != 3 {
		t.Errorf("VXLAN header % x", b[:8])
	}
	if net.HardwareAddr(b[8:14]).String() != mac.String() {
		t.Errorf("inner destination MAC % x", b[8:14])
	}
	ip := b[22:42]
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Errorf("IPv4 header checksum does not verify: %#x", sum)
	}
	if src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])); src.String() != "10.244.1.2" || dst.String() != "10.244.2.3" {
		t.Errorf("inner addresses %s -> %s", src, dst)
	}
	if binary.BigEndian.Uint16(b[44:]) != 7777 || string(b[50:]) != "hi" {
		t.Errorf("inner UDP % x", b[42:])
	}
}

func TestUDPOfFrame(t *testing.T) {
	payload := []byte{4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	f := make([]byte, 14+20+8)
	f[12], f[13] = 0x08, 0x00
	f[14], f[14+9] = 0x45, 17
	copy(f[14+12:], []byte{192, 168, 56, 11, 192, 168, 56, 12})
	f[34], f[35], f[36], f[37] = 0xca, 0x6c, 0xca, 0x6c // 51820 both ways
	f = append(f, payload...)
	src, dst, got, ok := UDPOfFrame(f)
	if !ok || src.String() != "192.168.56.11:51820" || dst.String() != "192.168.56.12:51820" || !IsWireGuardData(got) {
		t.Errorf("UDPOfFrame: %v %v %x %v", src, dst, got, ok)
	}
	f[14+9] = 6 // TCP
	if _, _, _, ok := UDPOfFrame(f); ok {
		t.Error("a TCP frame read as UDP")
	}
	// IPv6: fd00:56::11 port 51821 to fd00:56::12 port 51821.
	f6 := make([]byte, 14+40+8)
	f6[12], f6[13] = 0x86, 0xdd
	f6[14], f6[14+6] = 0x60, 17
	src6, dst6 := netip.MustParseAddr("fd00:56::11").As16(), netip.MustParseAddr("fd00:56::12").As16()
	copy(f6[14+8:], src6[:])
	copy(f6[14+24:], dst6[:])
	f6[54], f6[55], f6[56], f6[57] = 0xca, 0x6d, 0xca, 0x6d
	f6 = append(f6, payload...)
	src, dst, got, ok = UDPOfFrame(f6)
	if !ok || src.String() != "[fd00:56::11]:51821" || dst.String() != "[fd00:56::12]:51821" || !IsWireGuardData(got) {
		t.Errorf("UDPOfFrame IPv6: %v %v %x %v", src, dst, got, ok)
	}
	f6[14+6] = 58 // ICMPv6
	if _, _, _, ok := UDPOfFrame(f6); ok {
		t.Error("an ICMPv6 frame read as UDP")
	}
	if IsWireGuardData([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Error("a handshake initiation (type 1) read as data")
	}
}
