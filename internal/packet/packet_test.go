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
