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

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// ErrUnsupported is returned (wrapped) when the kernel cannot create ipip
// devices.
var ErrUnsupported = routing.ErrNoIPIP

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
	return routing.EnsureIPIP(nl, b.log, b.node.PublicIP, b.mtu, own)
}

var _ backend.Backend = (*Backend)(nil)
