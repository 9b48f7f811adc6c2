// Package hostgw is the host-gw backend: no tunnel, each peer's subnet is
// routed via the peer's public IP on the underlay, as flannel's host-gw
// does. It needs the peers on this node's L2 segment; a peer elsewhere is
// reported (Status.Problems, logged once) and gets no route.
//
// It must not create devices nor route a peer it cannot reach directly. The
// package is Linux-only.
package hostgw

import (
	"context"
	"errors"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/netconf"
)

// Backend is the host-gw backend.
type Backend struct {
	node backend.Node
	// Router keeps the routes and nftables rules; it gives the backend
	// SetLease, Handle, Run, Status, Resync, Cleanup and Close.
	*routing.Router
}

// New returns the host-gw backend for node, working in node.NetNS.
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("host-gw: the node has no network config")
	}
	opts := netconf.Backend{Type: netconf.TypeHostGW, MTU: node.Network.Backend.MTU}
	r, err := routing.New(routing.Config{Node: node, Backend: opts, Log: log})
	if err != nil {
		return nil, err
	}
	return &Backend{node: node, Router: r}, nil
}

// Type is "host-gw".
func (b *Backend) Type() string { return netconf.TypeHostGW }

// Prepare checks that the underlay is known; pods get its MTU. host-gw
// publishes no backend data.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	if b.node.Iface == "" || !b.node.IfacePrefix.IsValid() {
		return backend.Prepared{}, errors.New("host-gw needs the underlay interface and its prefix (set --iface or --public-ip to an interface address)")
	}
	return backend.Prepared{MTU: routing.MTU(b.node, netconf.Backend{Type: netconf.TypeHostGW, MTU: b.node.Network.Backend.MTU})}, nil
}

var _ backend.Backend = (*Backend)(nil)
