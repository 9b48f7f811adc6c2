package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/bgp"
	"github.com/twillnet/twill/overlay/backend/hostgw"
	"github.com/twillnet/twill/overlay/backend/ipip"
	"github.com/twillnet/twill/overlay/backend/sublink"
	"github.com/twillnet/twill/overlay/backend/udp"
	"github.com/twillnet/twill/overlay/backend/vxlan"
	"github.com/twillnet/twill/overlay/backend/wireguard"
	"github.com/twillnet/twill/overlay/netconf"
)

// newKernelBackend makes a backend whose data path the kernel carries. It
// works in the namespace twilld runs in. Its Prepare and Cleanup first
// remove what a udp twilld left (afterUDP).
func newKernelBackend(node backend.Node, log *slog.Logger, nb nodeBGP) (backend.Backend, error) {
	be, err := kernelBackend(node, log, nb)
	if err != nil {
		return nil, err
	}
	return afterUDP{Backend: be, node: node, log: log}, nil
}

// afterUDP is a backend on a node that may have run udp before: a udp
// twilld leaves its data path in the kernel when it stops (the persistent
// twill0, the kernel path's pinned programs and filters), so that the
// next one takes it over; when the config changed to another backend,
// that one removes it before it prepares, and on --cleanup.
type afterUDP struct {
	backend.Backend
	node backend.Node
	log  *slog.Logger
}

func (b afterUDP) Prepare(ctx context.Context) (backend.Prepared, error) {
	if err := udp.RemoveLeftovers(b.node, b.log); err != nil {
		return backend.Prepared{}, fmt.Errorf("remove what the udp backend left: %w", err)
	}
	return b.Backend.Prepare(ctx)
}

func (b afterUDP) Cleanup(ctx context.Context) error {
	return errors.Join(udp.RemoveLeftovers(b.node, b.log), b.Backend.Cleanup(ctx))
}

// Resync passes the dashboard's resync on to the backend.
func (b afterUDP) Resync() {
	if r, ok := b.Backend.(interface{ Resync() }); ok {
		r.Resync()
	}
}

func kernelBackend(node backend.Node, log *slog.Logger, nb nodeBGP) (backend.Backend, error) {
	switch t := node.Network.Backend.Type; t {
	case netconf.TypeVXLAN:
		return vxlan.New(node, log)
	case netconf.TypeHostGW:
		return hostgw.New(node, log)
	case netconf.TypeIPIP:
		return ipip.New(node, log)
	case netconf.TypeBGP:
		return bgp.New(node, log, bgp.NodeOptions{ASN: nb.ASN, Peers: nb.Peers, RouteReflector: nb.RouteReflector})
	case netconf.TypeWireGuard:
		return wireguard.New(node, log)
	case netconf.TypeMacvlan, netconf.TypeIPvlan:
		return sublink.New(node, log)
	default:
		return nil, fmt.Errorf("backend %q is not a kernel backend", t)
	}
}
