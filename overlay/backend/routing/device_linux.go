package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// MTU is the MTU of the backend's device and of the node's pods: the
// configured one, else the underlay's minus the backend's overhead, the
// underlay taken as 1500 when its MTU is not known.
//
// A vxlan node with an IPv6 pod network and an IPv6 underlay address has a
// second device whose VTEP is IPv6 (40-byte outer header): the MTU of both
// devices and the pods is then plan.IPv6UnderlayExtra smaller. So is a
// wireguard node's that may reach peers over its IPv6 underlay
// (plan.WireGuardOverIPv6).
func MTU(node backend.Node, b netconf.Backend) int {
	u := node.IfaceMTU
	if u <= 0 {
		u = 1500
	}
	ipv6 := IPv6Tunnel(node, b)
	if b.Type == netconf.TypeWireGuard {
		ipv6 = plan.WireGuardOverIPv6(b, node.Network != nil && node.Network.EnableIPv6, node.PublicIPv6)
	}
	return min(plan.OverlayMTU(b, u, ipv6), 65535)
}

// IPv6Tunnel reports whether the backend tunnels the node's IPv6 pod
// network over its IPv6 underlay: vxlan with EnableIPv6 and an IPv6
// underlay address (flannel's flannel-v6.<VNI>).
func IPv6Tunnel(node backend.Node, b netconf.Backend) bool {
	return b.Type == netconf.TypeVXLAN && node.Network != nil && node.Network.EnableIPv6 && node.PublicIPv6.IsValid()
}

// UnderlayIndex is the index of the node's underlay interface in the
// namespace of nl; 0 when the node names none.
func UnderlayIndex(nl *netlink.Handle, node backend.Node) (int, error) {
	if node.Iface == "" {
		return 0, nil
	}
	l, err := nl.LinkByName(node.Iface)
	if err != nil {
		return 0, fmt.Errorf("underlay interface %s: %w", node.Iface, err)
	}
	return l.Attrs().Index, nil
}

// IsNotFound reports whether err says a link does not exist.
func IsNotFound(err error) bool {
	return errors.As(err, new(netlink.LinkNotFoundError)) || errors.Is(err, unix.ENODEV)
}

// SetUpDevice brings link to the given MTU and MAC (nil: leave it), up, and
// with the own subnet's network address as its only address of the
// subnet's family (a /32, or a /128 for an IPv6 subnet, as flannel gives
// its devices; IPv6 link-local addresses stay; own invalid: leave the
// addresses alone).
func SetUpDevice(nl *netlink.Handle, link netlink.Link, mtu int, mac net.HardwareAddr, own netip.Prefix) error {
	name := link.Attrs().Name
	var errs []error
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := nl.LinkSetMTU(link, mtu); err != nil {
			errs = append(errs, fmt.Errorf("set MTU %d on %s: %w", mtu, name, err))
		}
	}
	if mac != nil && link.Attrs().HardwareAddr.String() != mac.String() {
		if err := nl.LinkSetHardwareAddr(link, mac); err != nil {
			errs = append(errs, fmt.Errorf("set MAC %s on %s: %w", mac, name, err))
		}
	}
	if own.IsValid() {
		errs = append(errs, setAddress(nl, link, netip.PrefixFrom(own.Masked().Addr(), own.Addr().BitLen())))
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := nl.LinkSetUp(link); err != nil {
			errs = append(errs, fmt.Errorf("set %s up: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func setAddress(nl *netlink.Handle, link netlink.Link, want netip.Prefix) error {
	name := link.Attrs().Name
	family := netlink.FAMILY_V4
	if !want.Addr().Is4() {
		family = netlink.FAMILY_V6
	}
	addrs, err := nl.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	var errs []error
	have := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones) == want {
			have = true
			continue
		}
		if ip.IsLinkLocalUnicast() {
			continue // the kernel's own IPv6 link-local address
		}
		if err := nl.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", a.IPNet, name, err))
		}
	}
	if !have {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), want.Addr().BitLen())}}
		if family == netlink.FAMILY_V6 {
			a.Flags = unix.IFA_F_NODAD // a /128 nobody else holds; no wait for DAD
		}
		if err := nl.AddrAdd(link, a); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", want, name, err))
		}
	}
	return errors.Join(errs...)
}
