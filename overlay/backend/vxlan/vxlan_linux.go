// Package vxlan is the vxlan backend: the kernel's VXLAN device twill.<VNI>
// carries pod traffic between nodes, as flannel's vxlan backend does and
// compatible with it on the wire (UDP port 8472, VNI 1 by default) and in
// the lease ({"VNI":1,"VtepMAC":"..."}).
//
// Per peer the node holds a route to the peer's subnet via the subnet's
// network address onlink on the device, a permanent neighbour entry giving
// that address the peer's VTEP MAC, and an FDB entry sending the MAC to the
// peer's public IP (overlay/plan computes them, overlay/backend/routing
// keeps them). The device's MAC stays the same across restarts and
// reboots: an existing device's MAC is reused, a new device gets one derived
// from the public IP and the VNI.
//
// With an IPv6 pod network (EnableIPv6) the node does what flannel does: a
// second VXLAN device, twill-v6.<VNI>, with the same VNI and port and the
// node's IPv6 underlay address as its VTEP, publishes its MAC in the
// lease's BackendV6Data and holds per peer the IPv6 route, neighbour and
// FDB entry (to the peer's PublicIPv6) on it. A node without an IPv6
// underlay address carries IPv6 on twill.<VNI> instead, over IPv4, and
// publishes that device's MAC as its BackendV6Data (twill's extension;
// flannel requires the IPv6 underlay). An IPv6-only node without an IPv4
// underlay address has no twill.<VNI>.
//
// It must not touch devices other than its own nor run outside the node's
// namespace. The package is Linux-only.
package vxlan

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// Backend is the vxlan backend.
type Backend struct {
	node   backend.Node
	opts   netconf.Backend
	device string
	mtu    int
	log    *slog.Logger
	// Router keeps the routes, neighbours, FDB and nftables rules; it gives
	// the backend SetLease, Handle, Run, Status, Resync, Cleanup and Close.
	*routing.Router

	// mac is the VTEP MAC, fixed by Prepare; mac6 the IPv6 device's (nil
	// without one).
	mac  net.HardwareAddr
	mac6 net.HardwareAddr
	// dev4 and dev6 say which devices the node has: twill.<VNI> (IPv4
	// underlay), twill-v6.<VNI> (IPv6 pod network over the IPv6 underlay).
	dev4, dev6 bool
	device6    string
}

// New returns the vxlan backend for node, working in node.NetNS. It changes
// nothing in the kernel until Prepare.
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("vxlan: the node has no network config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := node.Network.Backend
	opts.Type = netconf.TypeVXLAN
	if opts.Port == 0 {
		opts.Port = netconf.DefaultVXLANPort
	}
	b := &Backend{node: node, opts: opts, device: plan.VXLANDevice(opts.VNI), mtu: routing.MTU(node, opts), log: log}
	b.dev6 = routing.IPv6Tunnel(node, opts)
	b.dev4 = node.Network.Network.IsValid() || (node.Network.EnableIPv6 && !b.dev6)
	cfg := routing.Config{Node: node, Backend: opts, EnsureDevice: b.ensureDevices, Log: log}
	if b.dev4 {
		cfg.Device = b.device
	}
	if b.dev6 {
		b.device6 = plan.VXLANDevice6(opts.VNI)
		cfg.Device6 = b.device6
	}
	r, err := routing.New(cfg)
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

// Type is "vxlan".
func (b *Backend) Type() string { return netconf.TypeVXLAN }

// DerivedMAC is the VTEP MAC of a new device for a public IP and VNI: a
// locally administered unicast address from a hash of both, so that a
// node that lost its device (a reboot) comes back with the MAC its peers
// already know.
func DerivedMAC(publicIP netip.Addr, vni int) net.HardwareAddr {
	sum := sha256.Sum256(fmt.Appendf(nil, "twill vxlan vtep %s vni %d", publicIP, vni))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}

// Prepare creates the devices (or adopts the existing ones and their MACs)
// and publishes the VNI and VTEP MACs: BackendData for twill.<VNI>,
// BackendV6Data for the IPv6 half.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	if b.dev4 && !b.node.PublicIP.Is4() {
		return backend.Prepared{}, fmt.Errorf("vxlan needs an IPv4 public IP, have %v", b.node.PublicIP)
	}
	var err error
	if b.dev4 {
		if b.mac, err = b.vtepMAC(b.device, b.node.PublicIP); err != nil {
			return backend.Prepared{}, err
		}
	}
	if b.dev6 {
		if b.mac6, err = b.vtepMAC(b.device6, b.node.PublicIPv6); err != nil {
			return backend.Prepared{}, err
		}
	}
	if err := b.EnsureDevice(); err != nil {
		return backend.Prepared{}, err
	}
	prep := backend.Prepared{MTU: b.mtu}
	if b.dev4 && b.node.Network.Network.IsValid() {
		prep.BackendData = plan.VXLANData(b.opts.VNI, b.mac)
	}
	switch {
	case b.dev6:
		prep.BackendV6Data = plan.VXLANData(b.opts.VNI, b.mac6)
	case b.node.Network.EnableIPv6:
		prep.BackendV6Data = plan.VXLANData(b.opts.VNI, b.mac) // IPv6 over twill.<VNI>
	}
	return prep, nil
}

// vtepMAC is the MAC of an existing device, reused, or the one derived
// for a new device with the VTEP address local.
func (b *Backend) vtepMAC(device string, local netip.Addr) (net.HardwareAddr, error) {
	link, err := b.Netlink().LinkByName(device)
	switch {
	case err == nil && len(link.Attrs().HardwareAddr) == 6:
		mac := link.Attrs().HardwareAddr
		b.log.Info("reusing the VTEP MAC of the existing device", "device", device, "mac", mac.String())
		return mac, nil
	case err == nil || routing.IsNotFound(err):
		return DerivedMAC(local, b.opts.VNI), nil
	default:
		return nil, fmt.Errorf("look up %s: %w", device, err)
	}
}

// ensureDevices makes the node's devices exist: twill.<VNI> with the own
// IPv4 subnet's address, twill-v6.<VNI> with the own IPv6 subnet's.
func (b *Backend) ensureDevices(nl *netlink.Handle, own netip.Prefix) error {
	var errs []error
	if b.dev4 {
		errs = append(errs, b.ensureDevice(nl, b.device, b.mac, b.node.PublicIP, own))
	}
	if b.dev6 {
		own6 := netip.Prefix{}
		if l, ok := b.OwnLease(); ok {
			own6 = l.IPv6Subnet
		}
		errs = append(errs, b.ensureDevice(nl, b.device6, b.mac6, b.node.PublicIPv6, own6))
	}
	return errors.Join(errs...)
}

// ensureDevice makes one device exist with the backend's options, MAC and
// MTU and the VTEP address local, up, with the own subnet's address. A
// device of another kind or with other options is replaced.
func (b *Backend) ensureDevice(nl *netlink.Handle, device string, mac net.HardwareAddr, local netip.Addr, own netip.Prefix) error {
	if mac == nil {
		return errors.New("vxlan: device wanted before Prepare")
	}
	under, err := routing.UnderlayIndex(nl, b.node)
	if err != nil {
		return err
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: device, MTU: b.mtu, HardwareAddr: mac},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: under,
		SrcAddr:      local.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	link, err := nl.LinkByName(device)
	if err != nil && !routing.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", device, err)
	}
	if err == nil {
		if why := mismatch(link, want); why != "" {
			b.log.Warn("replacing device", "device", device, "reason", why)
			if err := nl.LinkDel(link); err != nil {
				return fmt.Errorf("delete %s (%s): %w", device, why, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		if err := nl.LinkAdd(want); err != nil {
			return fmt.Errorf("create vxlan device %s (VNI %d, port %d, local %s): %w", device, want.VxlanId, want.Port, local, err)
		}
		b.log.Info("device created", "device", device, "vni", want.VxlanId, "port", want.Port, "mac", mac.String(), "mtu", b.mtu)
		if link, err = nl.LinkByName(device); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", device, err)
		}
	}
	return routing.SetUpDevice(nl, link, b.mtu, mac, own)
}

// mismatch says why an existing link cannot serve as want; "" if it can.
func mismatch(link netlink.Link, want *netlink.Vxlan) string {
	v, ok := link.(*netlink.Vxlan)
	switch {
	case !ok:
		return fmt.Sprintf("a %s device, not vxlan", link.Type())
	case v.VxlanId != want.VxlanId:
		return fmt.Sprintf("VNI %d, want %d", v.VxlanId, want.VxlanId)
	case v.Port != want.Port:
		return fmt.Sprintf("port %d, want %d", v.Port, want.Port)
	case !v.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local %s, want %s", v.SrcAddr, net.IP(want.SrcAddr))
	case v.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("underlay device index %d, want %d", v.VtepDevIndex, want.VtepDevIndex)
	case v.Learning != want.Learning:
		return fmt.Sprintf("learning %t, want %t", v.Learning, want.Learning)
	case v.GBP != want.GBP:
		return fmt.Sprintf("gbp %t, want %t", v.GBP, want.GBP)
	}
	return ""
}

var _ backend.Backend = (*Backend)(nil)
