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
