package plan

import (
	"net/netip"
	"testing"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Two Nodes created in one second (Kubernetes' creation times are in
// seconds) whose IPv6 halves are one subnet: the subnet goes to the first
// by name, whichever changed last. Before, the revision of the last change
// broke the tie, and a status update of the other Node moved the route.
func TestSameAgeLeasesTieByNodeName(t *testing.T) {
	shared := netip.MustParsePrefix("fd00:10:244:9::/64")
	peer := func(n int, name string, rev int64) lease.Lease {
		l := dualNode(netconf.TypeHostGW, n)
		l.IPv6Subnet, l.Created, l.Revision = shared, 1_790_000_000, rev
		l.Attrs.Twill = &lease.NodeInfo{Node: name}
		return l
	}
	for _, revs := range [][2]int64{{500, 900}, {900, 500}} {
		in := input6(netconf.TypeHostGW, netconf.Backend{Type: netconf.TypeHostGW}, false,
			peer(1, "node-b", revs[0]), peer(2, "node-a", revs[1]))
		p, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		var via []string
		for _, r := range p.Routes {
			if r.Dst == shared {
				via = append(via, r.Gateway.String())
			}
		}
		if len(via) != 1 || via[0] != "fd00:56::13" {
			t.Errorf("revisions %v: %s routed via %v, want node-a's fd00:56::13 only", revs, shared, via)
		}
		found := false
		for _, pr := range p.Problems {
			found = found || (pr.Subnet == shared && pr.Node == "node-b")
		}
		if !found {
			t.Errorf("revisions %v: node-b's claim of %s not reported: %v", revs, shared, p.Problems)
		}
	}
}
