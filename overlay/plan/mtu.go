package plan

import "github.com/twillnet/twill/overlay/netconf"

// Overhead is how many bytes a backend's encapsulation adds to each packet
// on the underlay (IPv4 underlay):
//
//	udp     28  IPv4 20 + UDP 8 (flannel's udp has no header of its own)
//	vxlan   50  outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
//	ipip    20  outer IPv4
//	wireguard 60  IPv4 20 + UDP 8 + WireGuard data header 16 + tag 16
//	        (80 on an IPv6 underlay; flannel takes 80 whatever the family)
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

// IPv6UnderlayExtra is what an IPv6 outer header adds to a tunnel's
// overhead over an IPv4 one: 40 bytes instead of 20 (vxlan over an IPv6
// underlay: 70).
const IPv6UnderlayExtra = 20

// OverlayMTU is MTU for a node whose tunnel rides an IPv6 underlay when
// ipv6Tunnel is set (vxlan's twill-v6 device): the overlay MTU is then
// IPv6UnderlayExtra smaller, for both families, as the pods have one MTU
// for both (1500 gives vxlan 1430). A configured Backend.MTU stands as it
// is.
func OverlayMTU(b netconf.Backend, underlayMTU int, ipv6Tunnel bool) int {
	m := MTU(b, underlayMTU)
	if ipv6Tunnel && b.MTU == 0 && m > 0 && Overhead(b.Type) > 0 {
		m -= IPv6UnderlayExtra
	}
	return m
}
