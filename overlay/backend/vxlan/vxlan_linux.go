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

	// mac is the VTEP MAC, fixed by Prepare.
	mac net.HardwareAddr
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
	r, err := routing.New(routing.Config{Node: node, Backend: opts, Device: b.device, EnsureDevice: b.ensureDevice, Log: log})
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

// Prepare creates the device (or adopts the existing one and its MAC) and
// publishes the VNI and VTEP MAC.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	if !b.node.PublicIP.Is4() {
		return backend.Prepared{}, fmt.Errorf("vxlan needs an IPv4 public IP, have %v", b.node.PublicIP)
	}
	nl := b.Netlink()
	link, err := nl.LinkByName(b.device)
	switch {
	case err == nil && len(link.Attrs().HardwareAddr) == 6:
		b.mac = link.Attrs().HardwareAddr
		b.log.Info("reusing the VTEP MAC of the existing device", "device", b.device, "mac", b.mac.String())
	case err == nil || routing.IsNotFound(err):
		b.mac = DerivedMAC(b.node.PublicIP, b.opts.VNI)
	default:
		return backend.Prepared{}, fmt.Errorf("look up %s: %w", b.device, err)
	}
	if err := b.EnsureDevice(); err != nil {
		return backend.Prepared{}, err
	}
	return backend.Prepared{BackendData: plan.VXLANData(b.opts.VNI, b.mac), MTU: b.mtu}, nil
}

// ensureDevice makes the device exist with the backend's options, MAC and
// MTU, up, with the own subnet's address. A device of another kind or with
// other options is replaced.
func (b *Backend) ensureDevice(nl *netlink.Handle, own netip.Prefix) error {
	if b.mac == nil {
		return errors.New("vxlan: device wanted before Prepare")
	}
	under, err := routing.UnderlayIndex(nl, b.node)
	if err != nil {
		return err
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: b.device, MTU: b.mtu, HardwareAddr: b.mac},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: under,
		SrcAddr:      b.node.PublicIP.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	link, err := nl.LinkByName(b.device)
	if err != nil && !routing.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", b.device, err)
	}
	if err == nil {
		if why := mismatch(link, want); why != "" {
			b.log.Warn("replacing device", "device", b.device, "reason", why)
			if err := nl.LinkDel(link); err != nil {
				return fmt.Errorf("delete %s (%s): %w", b.device, why, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		if err := nl.LinkAdd(want); err != nil {
			return fmt.Errorf("create vxlan device %s (VNI %d, port %d, local %s): %w", b.device, want.VxlanId, want.Port, b.node.PublicIP, err)
		}
		b.log.Info("device created", "device", b.device, "vni", want.VxlanId, "port", want.Port, "mac", b.mac.String(), "mtu", b.mtu)
		if link, err = nl.LinkByName(b.device); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", b.device, err)
		}
	}
	return routing.SetUpDevice(nl, link, b.mtu, b.mac, own)
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
