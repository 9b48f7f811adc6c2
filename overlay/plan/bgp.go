package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Learned is a route a BGP speaker learned: its best path to Dst.
type Learned struct {
	Dst netip.Prefix
	// NextHop is the path's next hop: the node that originated it (mesh,
	// route reflector) or the router that advertised it (gateway BGP).
	NextHop netip.Addr
	// From is the BGP peer the path came from (for the dashboard).
	From netip.Addr
}

func (l Learned) String() string {
	return "learned " + l.Dst.String() + " next-hop " + l.NextHop.String() + " from " + l.From.String()
}

// bgpIPIP reports whether a bgp route to a next hop goes through the ipip
// device: always with IPIP Always, off the segment with CrossSubnet.
func bgpIPIP(b netconf.Backend, onSegment bool) bool {
	if b.BGP == nil {
		return false
	}
	switch b.BGP.IPIP {
	case netconf.IPIPAlways:
		return true
	case netconf.IPIPCrossSubnet:
		return !onSegment
	}
	return false
}

// BGPUsesIPIP reports whether the bgp backend b needs the ipip device.
func BGPUsesIPIP(b netconf.Backend) bool {
	return b.Type == netconf.TypeBGP && b.BGP != nil && b.BGP.IPIP != "" && b.BGP.IPIP != netconf.IPIPNever
}

// buildBGP is Build for the bgp backend: the own subnet gets a blackhole
// route, each learned route inside the cluster network a route via its
// next hop (over the underlay, or the ipip device as IPIP says), and the
// leases only give problems and node names: routes come from BGP.
func buildBGP(in Input, p Plan) (Plan, error) {
	own := in.Own.Subnet
	segment := in.Underlay.Prefix.Masked()
	if !segment.IsValid() || in.Underlay.Device == "" {
		return Plan{}, fmt.Errorf("%w: bgp routes over the underlay and needs its device and prefix", ErrUnderlay)
	}
	if BGPUsesIPIP(in.Backend) {
		p.Device = IPIPDevice
		if in.Device != "" {
			p.Device = in.Device
		}
	} else {
		p.Device = in.Device
	}
	ownIP := in.Underlay.PublicIP
	if !ownIP.IsValid() {
		ownIP = in.Own.Attrs.PublicIP
	}
	p.Routes = append(p.Routes, Route{Dst: own, Blackhole: true})
	nodes := map[netip.Prefix]lease.Lease{}
	for _, c := range candidates(in, ipv4Family(in, p.Device), &p) {
		nodes[c.lease.Subnet] = c.lease
	}
	learned := slices.Clone(in.Learned)
	slices.SortFunc(learned, func(a, b Learned) int {
		return cmp.Or(comparePrefix(a.Dst, b.Dst), a.NextHop.Compare(b.NextHop), a.From.Compare(b.From))
	})
	seen := map[netip.Prefix]bool{}
	for _, l := range learned {
		problem := func(format string, args ...any) {
			p.Problems = append(p.Problems, Problem{Subnet: l.Dst, PublicIP: l.NextHop, Reason: fmt.Sprintf(format, args...)})
		}
		dst := l.Dst
		switch {
		case !dst.IsValid() || !dst.Addr().Is4() || dst.Masked() != dst:
			problem("learned from %s: not an IPv4 network address", l.From)
			continue
		case in.Network.IsValid() && !(in.Network.Contains(dst.Addr()) && dst.Bits() >= in.Network.Bits()):
			continue // not a pod route (a router's default, say): not ours to install
		case own.Contains(dst.Addr()) && dst.Bits() >= own.Bits():
			problem("learned from %s: inside this node's subnet %s; refused", l.From, own)
			continue
		case !l.NextHop.IsValid() || !l.NextHop.Is4() || l.NextHop.IsUnspecified():
			problem("learned from %s: next hop %v is not an IPv4 address", l.From, l.NextHop)
			continue
		case ownIP.IsValid() && l.NextHop == ownIP:
			problem("learned from %s with this node as next hop; not routed", l.From)
			continue
		}
		if seen[dst] {
			problem("learned from %s: a second path to the subnet (the speaker hands in its best only); the first is used", l.From)
			continue
		}
		seen[dst] = true
		onSegment := segment.Contains(l.NextHop)
		peer := Peer{Subnet: dst, PublicIP: l.NextHop}
		if n, ok := nodes[dst]; ok {
			peer.Node = n.Attrs.NodeName()
		}
		switch {
		case bgpIPIP(in.Backend, onSegment):
			p.Routes = append(p.Routes, Route{Dst: dst, Gateway: l.NextHop, Device: p.Device, OnLink: true})
		case onSegment:
			peer.Direct = true
			p.Routes = append(p.Routes, Route{Dst: dst, Gateway: l.NextHop, Device: in.Underlay.Device})
		default:
			problem("learned from %s: next hop %s is not on this node's segment %s and IPIP is %s; no route", l.From, l.NextHop, segment, in.Backend.BGP.IPIP)
			continue
		}
		p.Peers = append(p.Peers, peer)
	}
	p.sort()
	return p, nil
}
