// Package ipip is the ipip backend: the kernel's IP-in-IP tunnel device
// twill.ipip (local address the node's public IP, no fixed remote) carries
// pod traffic, each peer's subnet routed via the peer's public IP onlink on
// the device, as flannel's ipip backend does. With DirectRouting, peers on
// this node's L2 segment are routed over the underlay instead.
//
// It must not touch devices other than its own. It needs the kernel's ipip
// support; where that is missing, Prepare fails saying so. The package is
// Linux-only.
package ipip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// ErrUnsupported is returned (wrapped) when the kernel cannot create ipip
// devices.
var ErrUnsupported = errors.New("the kernel has no ipip support (module ipip not built or not loadable)")

// Backend is the ipip backend.
type Backend struct {
	node backend.Node
	opts netconf.Backend
	mtu  int
	log  *slog.Logger
	// Router keeps the routes and nftables rules; it gives the backend
	// SetLease, Handle, Run, Status, Resync, Cleanup and Close.
	*routing.Router
}

// New returns the ipip backend for node, working in node.NetNS.
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("ipip: the node has no network config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := node.Network.Backend
	opts.Type = netconf.TypeIPIP
	b := &Backend{node: node, opts: opts, mtu: routing.MTU(node, opts), log: log}
	r, err := routing.New(routing.Config{Node: node, Backend: opts, Device: plan.IPIPDevice, EnsureDevice: b.ensureDevice, Log: log})
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

// Type is "ipip".
func (b *Backend) Type() string { return netconf.TypeIPIP }

// Prepare creates the tunnel device. ipip publishes no backend data.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	if !b.node.PublicIP.Is4() {
		return backend.Prepared{}, fmt.Errorf("ipip needs an IPv4 public IP, have %v", b.node.PublicIP)
	}
	if err := b.EnsureDevice(); err != nil {
		return backend.Prepared{}, err
	}
	return backend.Prepared{MTU: b.mtu}, nil
}

func (b *Backend) ensureDevice(nl *netlink.Handle, own netip.Prefix) error {
	name := plan.IPIPDevice
	want := &netlink.Iptun{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: b.mtu},
		Local:     b.node.PublicIP.AsSlice(),
		PMtuDisc:  1,
	}
	link, err := nl.LinkByName(name)
	if err != nil && !routing.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err == nil {
		t, ok := link.(*netlink.Iptun)
		why := ""
		switch {
		case !ok:
			why = fmt.Sprintf("a %s device, not ipip", link.Type())
		case !t.Local.Equal(want.Local):
			why = fmt.Sprintf("local %s, want %s", t.Local, b.node.PublicIP)
		case t.Remote != nil && !t.Remote.IsUnspecified():
			why = fmt.Sprintf("remote %s, want none", t.Remote)
		}
		if why != "" {
			b.log.Warn("replacing device", "device", name, "reason", why)
			if err := nl.LinkDel(link); err != nil {
				return fmt.Errorf("delete %s (%s): %w", name, why, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		if err := nl.LinkAdd(want); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
				err = fmt.Errorf("%w: %w", ErrUnsupported, err)
			}
			return fmt.Errorf("create ipip device %s (local %s): %w", name, b.node.PublicIP, err)
		}
		b.log.Info("device created", "device", name, "local", b.node.PublicIP, "mtu", b.mtu)
		if link, err = nl.LinkByName(name); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", name, err)
		}
	}
	return routing.SetUpDevice(nl, link, b.mtu, nil, own)
}

var _ backend.Backend = (*Backend)(nil)
