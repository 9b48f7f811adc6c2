package main

import (
	"fmt"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/alloc"
	"github.com/twillnet/twill/overlay/backend/udp"
	"github.com/twillnet/twill/overlay/netconf"
)

// newBackend picks the backend for the config: the daemon's NewBackend.
func newBackend(node backend.Node, log *slog.Logger, bgp nodeBGP) (backend.Backend, error) {
	switch t := node.Network.Backend.Type; t {
	case netconf.TypeAlloc:
		return alloc.New(node), nil
	case netconf.TypeVXLAN, netconf.TypeHostGW, netconf.TypeIPIP, netconf.TypeBGP, netconf.TypeWireGuard, netconf.TypeMacvlan, netconf.TypeIPvlan:
		return newKernelBackend(node, log, bgp)
	case netconf.TypeUDP:
		return udp.New(node, log)
	default:
		return nil, fmt.Errorf("backend %q is not available in this twilld yet", t)
	}
}
