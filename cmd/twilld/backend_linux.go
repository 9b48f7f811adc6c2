package main

import (
	"fmt"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/bgp"
	"github.com/twillnet/twill/overlay/backend/hostgw"
	"github.com/twillnet/twill/overlay/backend/ipip"
	"github.com/twillnet/twill/overlay/backend/sublink"
	"github.com/twillnet/twill/overlay/backend/vxlan"
	"github.com/twillnet/twill/overlay/netconf"
)

// newKernelBackend makes a backend whose data path the kernel carries. It
// works in the namespace twilld runs in.
func newKernelBackend(node backend.Node, log *slog.Logger, nb nodeBGP) (backend.Backend, error) {
	switch t := node.Network.Backend.Type; t {
	case netconf.TypeVXLAN:
		return vxlan.New(node, log)
	case netconf.TypeHostGW:
		return hostgw.New(node, log)
	case netconf.TypeIPIP:
		return ipip.New(node, log)
	case netconf.TypeBGP:
		return bgp.New(node, log, bgp.NodeOptions{ASN: nb.ASN, Peers: nb.Peers, RouteReflector: nb.RouteReflector})
	case netconf.TypeMacvlan, netconf.TypeIPvlan:
		return sublink.New(node, log)
	default:
		return nil, fmt.Errorf("backend %q is not a kernel backend", t)
	}
}
