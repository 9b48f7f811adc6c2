package plan

import "github.com/twillnet/twill/overlay/netconf"

// Overhead is how many bytes a backend's encapsulation adds to each packet
// on the underlay (IPv4 underlay):
//
//	udp     28  IPv4 20 + UDP 8 (flannel's udp has no header of its own)
//	vxlan   50  outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
//	ipip    20  outer IPv4
//	wireguard 60  IPv4 20 + UDP 8 + WireGuard data header 16 + tag 16
//	        (flannel's figure; 80 on an IPv6 underlay)
//	others   0  host-gw and the sublink backends do not encapsulate
func Overhead(backendType string) int {
	switch backendType {
	case netconf.TypeUDP:
		return 28
	case netconf.TypeVXLAN:
		return 50
	case netconf.TypeIPIP:
		return 20
	case netconf.TypeWireGuard:
		return 60
	}
	return 0
}

// MTU is the overlay MTU for a backend over an underlay of underlayMTU:
// Backend.MTU if the config sets one, else the underlay's minus the
// backend's Overhead (1500 gives udp 1472, vxlan 1450, ipip 1480, wireguard
// 1440, host-gw 1500). It is 0 when neither is known.
func MTU(b netconf.Backend, underlayMTU int) int {
	if b.MTU > 0 {
		return b.MTU
	}
	if underlayMTU <= 0 {
		return 0
	}
	if BGPUsesIPIP(b) {
		return underlayMTU - Overhead(netconf.TypeIPIP)
	}
	return underlayMTU - Overhead(b.Type)
}
