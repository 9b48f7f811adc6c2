package main

import (
	"flag"
	"fmt"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
)

// nodeWireGuard is the wireguard backend's per-node setting, from a flag or
// TWILLD_WIREGUARD_IMPLEMENTATION: this node's WireGuard implementation
// whatever the network config's Backend.Implementation says (a node
// without the module in a cluster of kernel nodes, say).
type nodeWireGuard struct {
	implementation string
}

func addWireGuardFlags(fs *flag.FlagSet, w *nodeWireGuard) {
	fs.StringVar(&w.implementation, "wireguard-implementation", "", "wireguard: kernel or userspace on this node (default: the network config's Backend.Implementation, else kernel where the module is)")
}

// parse checks the setting, naming the flag and the value if it is wrong.
func (w nodeWireGuard) parse() error {
	switch w.implementation {
	case "", netconf.WireGuardKernel, netconf.WireGuardUserspace:
		return nil
	}
	return fmt.Errorf("--wireguard-implementation=%q: want %s or %s", w.implementation, netconf.WireGuardKernel, netconf.WireGuardUserspace)
}

// apply gives node the setting: a copy of its network config with the
// implementation replaced, on a wireguard network.
func (w nodeWireGuard) apply(node backend.Node) backend.Node {
	if w.implementation == "" || node.Network == nil || node.Network.Backend.Type != netconf.TypeWireGuard {
		return node
	}
	cfg := *node.Network
	cfg.Backend.Implementation = w.implementation
	node.Network = &cfg
	return node
}
