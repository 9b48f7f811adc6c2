package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/twillnet/twill/overlay/netconf"
)

// nodeBGP are the bgp backend's per-node settings (an AS per rack, the
// node's own routers), from flags or TWILLD_BGP_*; the node publishes its
// AS in its lease for its mesh peers.
type nodeBGP struct {
	asn   string
	peers []string
	// RouteReflector is the node's route-reflector cluster ID, "" if it
	// reflects nothing.
	RouteReflector string
	// ASN is 0 for the cluster's; Peers are parsed from peers.
	ASN   uint32
	Peers []netconf.BGPPeer
}

func addBGPFlags(fs *flag.FlagSet, b *nodeBGP) {
	fs.StringVar(&b.asn, "bgp-asn", "", "bgp: this node's AS number (default: the network config's Backend.ASN)")
	fs.StringVar(&b.RouteReflector, "bgp-route-reflector", "", "bgp: make this node a route reflector with this cluster ID (an IPv4 address's form, such as 224.0.0.1); the other nodes then peer only with the reflectors")
	fs.Var((*listFlag)(&b.peers), "bgp-peer", "bgp: a router this node peers with, ADDRESS:ASN (repeatable; besides Backend.Peers)")
}

// parse checks the settings, naming the flag and the value of each that is
// wrong.
func (b *nodeBGP) parse() error {
	var errs []error
	if b.asn != "" {
		asn, err := netconf.ParseASN(json.RawMessage(b.asn))
		if err != nil {
			errs = append(errs, fmt.Errorf("--bgp-asn=%q: must be an AS number 1..%d", b.asn, uint64(netconf.MaxASN)))
		}
		b.ASN = asn
	}
	if id := b.RouteReflector; id != "" {
		if a, err := netip.ParseAddr(id); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("--bgp-route-reflector=%q: a cluster ID has an IPv4 address's form (224.0.0.1)", id))
		}
	}
	seen := map[netip.Addr]bool{}
	for _, p := range b.peers {
		i := strings.LastIndexByte(p, ':')
		if i < 0 {
			errs = append(errs, fmt.Errorf("--bgp-peer=%q: want ADDRESS:ASN", p))
			continue
		}
		addr, err := netip.ParseAddr(p[:i])
		if err != nil || addr.Zone() != "" || addr.IsUnspecified() || addr.IsMulticast() {
			errs = append(errs, fmt.Errorf("--bgp-peer=%q: %q is not a router's IP address", p, p[:i]))
			continue
		}
		asn, err := strconv.ParseUint(p[i+1:], 10, 32)
		if err != nil || asn == 0 {
			errs = append(errs, fmt.Errorf("--bgp-peer=%q: %q must be an AS number 1..%d", p, p[i+1:], uint64(netconf.MaxASN)))
			continue
		}
		if seen[addr] {
			errs = append(errs, fmt.Errorf("--bgp-peer=%q: duplicate peer %s", p, addr))
			continue
		}
		seen[addr] = true
		b.Peers = append(b.Peers, netconf.BGPPeer{Address: addr, ASN: uint32(asn)})
	}
	return errors.Join(errs...)
}
