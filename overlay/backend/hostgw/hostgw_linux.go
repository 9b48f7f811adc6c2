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
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Backend is the host-gw backend.
type Backend struct {
	node backend.Node
	r    *routing.Router
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
	return &Backend{node: node, r: r}, nil
}

// Close releases the namespace handles; the kernel state stays.
func (b *Backend) Close() error { return b.r.Close() }

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

// SetLease replans with the node's own lease.
func (b *Backend) SetLease(_ context.Context, own lease.Lease) error { return b.r.SetLease(own) }

// Handle applies peers' lease events.
func (b *Backend) Handle(_ context.Context, evs []lease.Event) error { return b.r.Handle(evs) }

// Run keeps the routes and nftables rules in place until ctx ends.
func (b *Backend) Run(ctx context.Context) error { return b.r.Run(ctx) }

// Status reports per-peer counters and the peers off the segment.
func (b *Backend) Status() backend.Status { return b.r.Status() }

// Resync compares and repairs the kernel state now.
func (b *Backend) Resync() { b.r.Resync() }

// Cleanup removes twill's routes and the nftables table.
func (b *Backend) Cleanup(context.Context) error { return b.r.Cleanup() }

// Router is the backend's Router (for tests and status pages).
func (b *Backend) Router() *routing.Router { return b.r }
