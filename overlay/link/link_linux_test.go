package link

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestDefaultGateway(t *testing.T) {
	_, lan, _ := net.ParseCIDR("192.168.56.0/24")
	_, zero, _ := net.ParseCIDR("0.0.0.0/0")
	routes := []netlink.Route{
		{Dst: lan, Table: unix.RT_TABLE_MAIN},                                                 // on-link, no gateway
		{Dst: lan, Gw: net.ParseIP("192.168.56.9"), Table: unix.RT_TABLE_MAIN},                // not a default route
		{Dst: nil, Gw: net.ParseIP("192.168.56.7"), Table: 100},                               // default, but another table
		{Dst: zero, Gw: net.ParseIP("192.168.56.1"), Table: unix.RT_TABLE_MAIN},               // the one
		{Dst: nil, Gw: net.ParseIP("192.168.56.254"), Table: unix.RT_TABLE_MAIN, Priority: 9}, // a later one
	}
	if gw := DefaultGateway(routes); gw.String() != "192.168.56.1" {
		t.Errorf("DefaultGateway = %v, want 192.168.56.1", gw)
	}
	if gw := DefaultGateway(routes[:3]); gw.IsValid() {
		t.Errorf("DefaultGateway without a main-table default route = %v, want none", gw)
	}
}

func TestPrefix(t *testing.T) {
	for _, tc := range []struct {
		in   *net.IPNet
		want string
	}{
		{&net.IPNet{IP: net.ParseIP("192.168.56.11"), Mask: net.CIDRMask(24, 32)}, "192.168.56.11/24"}, // 16-byte form, unmapped
		{&net.IPNet{IP: net.IPv4(10, 244, 1, 0).To4(), Mask: net.CIDRMask(24, 32)}, "10.244.1.0/24"},
		{&net.IPNet{IP: net.ParseIP("fc00::1"), Mask: net.CIDRMask(64, 128)}, "fc00::1/64"},
	} {
		if p, ok := Prefix(tc.in); !ok || p.String() != tc.want {
			t.Errorf("Prefix(%v) = %v, %t; want %s", tc.in, p, ok, tc.want)
		}
	}
	if p, ok := Prefix(nil); ok {
		t.Errorf("Prefix(nil) = %v, true; want false", p)
	}
	if p, ok := Prefix(&net.IPNet{IP: net.IP{1, 2, 3}}); ok {
		t.Errorf("Prefix of a 3-byte address = %v, true; want false", p)
	}
}

func TestSubInterface(t *testing.T) {
	l, err := SubInterface("macvlan", "vepa", netlink.LinkAttrs{Name: "p0"})
	if m, ok := l.(*netlink.Macvlan); err != nil || !ok || m.Mode != netlink.MACVLAN_MODE_VEPA || m.Name != "p0" {
		t.Errorf("macvlan vepa: %#v, %v", l, err)
	}
	l, err = SubInterface("ipvlan", "l3s", netlink.LinkAttrs{})
	if v, ok := l.(*netlink.IPVlan); err != nil || !ok || v.Mode != netlink.IPVLAN_MODE_L3S {
		t.Errorf("ipvlan l3s: %#v, %v", l, err)
	}
	for _, bad := range [][2]string{{"macvlan", "l2"}, {"ipvlan", "bridge"}, {"vxlan", ""}} {
		if l, err := SubInterface(bad[0], bad[1], netlink.LinkAttrs{}); err == nil {
			t.Errorf("SubInterface(%s, %s) = %#v, want an error", bad[0], bad[1], l)
		}
	}
}
