package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/twillnet/twill/internal/golden"
	"github.com/twillnet/twill/overlay/plan"
)

// The golden cases are a node 10.244.0.0/24 at 192.168.56.11 whose peer i
// holds 10.244.i.0/24 at 192.168.56.(11+i) with VTEP MAC 0a:58:00:00:00:0i.

func vtepMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x0a, 0x58, 0, 0, 0, byte(i)} }

func peerSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

func peerIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 56, byte(11 + i)}) }

// vxlanPlan is the vxlan plan for the peers given.
func vxlanPlan(peers ...int) plan.Plan {
	p := plan.Plan{Backend: "vxlan", Device: "twill.1", MTU: 1450}
	for _, i := range peers {
		gw := peerSubnet(i).Addr()
		p.Routes = append(p.Routes, plan.Route{Dst: peerSubnet(i), Gateway: gw, Device: "twill.1", OnLink: true})
		p.Neighbors = append(p.Neighbors, plan.Neighbor{IP: gw, MAC: vtepMAC(i), Device: "twill.1"})
		p.FDB = append(p.FDB, plan.FDBEntry{MAC: vtepMAC(i), Dst: peerIP(i), Device: "twill.1"})
	}
	return p
}

// peerSubnet6 and peerIP6 are peer i's IPv6 subnet and underlay address.
func peerSubnet6(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i))
}

func peerIP6(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:56::%d", 11+i)) }

// dualVXLANPlan is the dual-stack vxlan plan for the peers given: the IPv4
// state on twill.1 and the IPv6 state on twill-v6.1, flannel's way.
func dualVXLANPlan(peers ...int) plan.Plan {
	p := vxlanPlan(peers...)
	p.Device6 = "twill-v6.1"
	for _, i := range peers {
		gw := peerSubnet6(i).Addr()
		mac := vtepMAC(100 + i)
		p.Routes = append(p.Routes, plan.Route{Dst: peerSubnet6(i), Gateway: gw, Device: p.Device6, OnLink: true})
		p.Neighbors = append(p.Neighbors, plan.Neighbor{IP: gw, MAC: mac, Device: p.Device6})
		p.FDB = append(p.FDB, plan.FDBEntry{MAC: mac, Dst: peerIP6(i), Device: p.Device6})
	}
	return p
}

// hostGWPlan is the host-gw plan for the peers given.
func hostGWPlan(peers ...int) plan.Plan {
	p := plan.Plan{Backend: "host-gw", MTU: 1500}
	for _, i := range peers {
		p.Routes = append(p.Routes, plan.Route{Dst: peerSubnet(i), Gateway: peerIP(i), Device: "eth0"})
	}
	return p
}

// goldenDevices are the links of the golden namespaces: loopback, the underlay
// veth, the VXLAN device and a bridge standing in for the udp TUN.
func goldenDevices() map[string]string {
	return map[string]string{"lo": "device", "eth0": "veth", "twill.1": "vxlan", "twill0": "bridge"}
}

// holding is the namespace after p was applied: p's state, routes with
// twill's protocol.
func holding(p plan.Plan) Tables {
	t := Tables{Devices: goldenDevices(), Neighbors: slices.Clone(p.Neighbors), FDB: slices.Clone(p.FDB)}
	for _, r := range p.Routes {
		t.Routes = append(t.Routes, Route{Route: r, Protocol: RouteProtocol})
	}
	return t
}

// dualDevices are goldenDevices and vxlan's IPv6 device.
func dualDevices() map[string]string {
	d := goldenDevices()
	d["twill-v6.1"] = "vxlan"
	return d
}

func (t Tables) on(devices map[string]string) Tables {
	t.Devices = devices
	return t
}

func (t Tables) without(dev string) Tables {
	t.Devices = goldenDevices()
	delete(t.Devices, dev)
	return t
}

func (t Tables) plus(routes ...Route) Tables {
	t.Routes = append(slices.Clone(t.Routes), routes...)
	return t
}

func kroute(proto int, dst, gw, dev string, metric int) Route {
	r := Route{Route: plan.Route{Dst: netip.MustParsePrefix(dst), Device: dev}, Protocol: proto, Metric: metric}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

const (
	protoBoot   = 3
	protoStatic = 4
	protoBird   = 12
)

type diffStep struct {
	label  string
	plan   plan.Plan
	tables Tables
}

type diffCase struct {
	name, about string
	steps       []diffStep
}

func diffCases() []diffCase {
	three := vxlanPlan(1, 2, 3)
	moved := vxlanPlan(1, 2)
	moved.FDB[1].Dst = netip.MustParseAddr("192.168.56.99")

	stale := holding(three)
	stale.Routes = []Route{
		{Route: three.Routes[0], Protocol: RouteProtocol, Metric: 100},
		{Route: three.Routes[1], Protocol: RouteProtocol},
		{Route: three.Routes[1], Protocol: RouteProtocol},
		{Route: three.Routes[2], Protocol: RouteProtocol, TOS: 4},
		kroute(RouteProtocol, "10.244.9.0/24", "10.244.9.0", "twill.1", 0),
	}

	foreign := []Route{
		kroute(protoStatic, "10.244.200.0/24", "192.168.56.200", "eth0", 0),
		kroute(protoBoot, "10.244.201.0/24", "192.168.56.201", "eth0", 0),
		kroute(protoStatic, "10.244.1.0/24", "192.168.56.202", "eth0", 100),
		kroute(protoBird, "10.244.4.0/24", "192.168.56.203", "eth0", 0),
	}

	neighs := holding(three)
	neighs.Neighbors = []plan.Neighbor{
		three.Neighbors[0],
		{IP: three.Neighbors[1].IP, MAC: vtepMAC(7), Device: "twill.1"},
		{IP: netip.MustParseAddr("10.244.9.0"), MAC: vtepMAC(9), Device: "twill.1"},
		{IP: netip.MustParseAddr("192.168.56.50"), MAC: vtepMAC(50), Device: "eth0"},
	}

	fdb := holding(vxlanPlan(1, 2, 3, 4))
	fdb.FDB = []plan.FDBEntry{
		{MAC: vtepMAC(1), Dst: peerIP(1), Device: "twill.1"},
		{MAC: vtepMAC(2), Dst: netip.MustParseAddr("192.168.56.92"), Device: "twill.1"},
		{MAC: vtepMAC(3), Dst: peerIP(3), Device: "twill.1"},
		{MAC: vtepMAC(9), Dst: netip.MustParseAddr("192.168.56.20"), Device: "twill.1"},
		{MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, Dst: netip.MustParseAddr("192.168.56.50"), Device: "twill.1"},
		{MAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, Dst: netip.MustParseAddr("192.168.56.51"), Device: "twill.1"},
	}

	mtu := holding(hostGWPlan(1, 2))
	mtu.Routes[0].MTU = 1400
	mtuPlan := hostGWPlan(1, 2)
	mtuPlan.Routes[1].MTU = 1400

	gw := hostGWPlan(1, 2, 3)
	gw.Routes[1].Gateway = netip.MustParseAddr("192.168.56.23")

	udp := plan.Plan{Backend: "udp", Device: "twill0", MTU: 1472,
		Routes: []plan.Route{{Dst: netip.MustParsePrefix("10.244.0.0/16"), Device: "twill0"}}}

	fdbOnBridge := vxlanPlan(1)
	fdbOnBridge.FDB = append(fdbOnBridge.FDB, plan.FDBEntry{MAC: vtepMAC(5), Dst: peerIP(5), Device: "twill0"})

	dual := dualVXLANPlan(1, 2, 3)
	dualMoved := dualVXLANPlan(1, 2)
	dualMoved.FDB[len(dualMoved.FDB)-1].Dst = netip.MustParseAddr("fd00:56::99")
	dualHostGW := hostGWPlan(1, 2)
	for _, i := range []int{1, 2} {
		dualHostGW.Routes = append(dualHostGW.Routes, plan.Route{Dst: peerSubnet6(i), Gateway: peerIP6(i), Device: "eth0"})
	}

	return []diffCase{
		{"dual-stack-vxlan", "both families: IPv4 on twill.1, IPv6 on twill-v6.1 (v6 neighbours and FDB to the peers' IPv6 underlay addresses); peer 2's v6 VTEP moves, peer 3 leaves", []diffStep{
			{label: "fresh node", plan: dual, tables: Tables{Devices: dualDevices()}},
			{label: "in sync", plan: dual, tables: holding(dual).on(dualDevices())},
			{label: "peer 2 moves, peer 3 leaves", plan: dualMoved, tables: holding(dual).on(dualDevices())},
		}},
		{"dual-stack-host-gw", "IPv6 routes via the peers' IPv6 underlay addresses beside the IPv4 ones; a stale IPv6 twill route goes, a foreign one stays", []diffStep{
			{plan: dualHostGW, tables: holding(hostGWPlan(1)).plus(
				kroute(RouteProtocol, "fd00:10:244:9::/64", "fd00:56::20", "eth0", 0),
				kroute(protoStatic, "fd00:10:244:200::/64", "fd00:56::200", "eth0", 0))},
		}},
		{"vxlan-empty-to-plan", "a fresh node: every route, neighbour and FDB entry of three peers is added", []diffStep{
			{plan: three, tables: Tables{Devices: goldenDevices()}}}},
		{"vxlan-in-sync", "the kernel holds the plan: nothing to do", []diffStep{
			{plan: three, tables: holding(three)}}},
		{"vxlan-peer-moves-and-leaves", "peer 2 moves to 192.168.56.99 (its FDB remote is replaced in place, not deleted), peer 3 leaves", []diffStep{
			{plan: moved, tables: holding(three)}}},
		{"vxlan-to-empty", "an empty plan removes everything twill owns", []diffStep{
			{plan: vxlanPlan(), tables: holding(three)}}},
		{"host-gw-gateway-changes", "peer 2's route gets another gateway: replaced, not deleted and added", []diffStep{
			{plan: gw, tables: holding(hostGWPlan(1, 2, 3))}}},
		{"host-gw-to-udp", "the backend changes from host-gw to udp: three routes go, one to the TUN comes", []diffStep{
			{plan: udp, tables: holding(hostGWPlan(1, 2, 3))}}},
		{"route-mtu-changes", "a route's MTU differs from the plan's: replaced (the device's MTU is the backend's business, not Diff's)", []diffStep{
			{plan: mtuPlan, tables: mtu}}},
		{"foreign-routes", "routes of other protocols are never deleted, whatever the plan; one at a key the plan wants (10.244.4.0/24, metric 0) is replaced, one at another metric (10.244.1.0/24 metric 100) is not", []diffStep{
			{label: "plan with peers 1 to 4", plan: vxlanPlan(1, 2, 3, 4), tables: holding(three).plus(foreign...)},
			{label: "empty plan", plan: vxlanPlan(), tables: holding(three).plus(foreign...)},
		}},
		{"stale-twill-routes", "twill routes that do not fit the plan are deleted: another metric, a second route to one destination (the first is kept), a TOS, a subnet the plan no longer has", []diffStep{
			{plan: three, tables: stale}}},
		{"neighbours-changed", "a neighbour with another MAC is replaced, a missing one added, a stale one deleted; a permanent neighbour on eth0 (not a twill device) is left alone", []diffStep{
			{plan: three, tables: neighs}}},
		{"fdb-changed", "FDB remotes: MAC 2 moved (replaced in place, not deleted), MAC 4 is missing, MAC 9 and the two remotes of an all-zero default entry are stale", []diffStep{
			{plan: vxlanPlan(1, 2, 3, 4), tables: fdb}}},
		{"device-missing", "the plan's devices are not there: nothing can be written on them, and each is a problem", []diffStep{
			{label: "vxlan without twill.1", plan: three, tables: Tables{}.without("twill.1")},
			{label: "udp without twill0", plan: udp, tables: Tables{}.without("twill0")},
			{label: "fdb on a bridge", plan: fdbOnBridge, tables: Tables{Devices: goldenDevices()}},
		}},
	}
}

func renderTables(sb *strings.Builder, t Tables) {
	names := make([]string, 0, len(t.Devices))
	for name := range t.Devices {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(sb, "device %s %s\n", name, t.Devices[name])
	}
	for _, r := range t.Routes {
		sb.WriteString(r.String() + "\n")
	}
	for _, n := range t.Neighbors {
		sb.WriteString(n.String() + "\n")
	}
	for _, f := range t.FDB {
		sb.WriteString(f.String() + "\n")
	}
}

func TestDiffGolden(t *testing.T) {
	files := golden.New(t)
	for _, c := range diffCases() {
		t.Run(c.name, func(t *testing.T) {
			var sb strings.Builder
			fmt.Fprintf(&sb, "# %s\n", c.about)
			for _, s := range c.steps {
				if s.label != "" {
					fmt.Fprintf(&sb, "\n## %s\n", s.label)
				}
				e := Diff(s.plan, s.tables)
				sb.WriteString("\n-- plan --\n" + s.plan.String())
				sb.WriteString("-- kernel --\n")
				renderTables(&sb, s.tables)
				sb.WriteString("-- edits --\n")
				if text := e.String(); text != "" {
					sb.WriteString(text)
				} else {
					sb.WriteString("none\n")
				}
				sb.WriteString("-- changes --\n" + e.Changes().String() + "\n")
			}
			files.Check(t, c.name, sb.String())
		})
	}
}

// TestDiffConverges plays every golden step's edits on a model of the
// kernel (one route per destination, metric and TOS; one neighbour per IP;
// an FDB set replaces the MAC's first remote) the way Apply makes them, and
// diffs again: nothing is left to change, and where the plan had no
// problems the state is the plan.
func TestDiffConverges(t *testing.T) {
	for _, c := range diffCases() {
		for _, s := range c.steps {
			name := c.name
			if s.label != "" {
				name += "/" + s.label
			}
			e := Diff(s.plan, s.tables)
			after := play(s.plan, s.tables, e)
			again := Diff(s.plan, after)
			if ch := again.Changes(); ch.Total() != 0 {
				t.Errorf("%s: after the edits Diff still wants %v:\n%s", name, ch, again)
			}
			for i, r := range after.Routes {
				if r.Protocol != RouteProtocol && !slices.Contains(s.tables.Routes, r) {
					t.Errorf("%s: foreign %s (%d) changed", name, r, i)
				}
			}
			for _, r := range s.tables.Routes {
				if r.Protocol != RouteProtocol && !slices.Contains(after.Routes, r) && !replacedAtKey(e, r) {
					t.Errorf("%s: foreign %s deleted", name, r)
				}
			}
			if len(e.Problems()) > 0 {
				continue
			}
			var st State
			for _, r := range after.Routes {
				if r.Protocol == RouteProtocol {
					st.Routes = append(st.Routes, r.Route)
				}
			}
			for _, n := range after.Neighbors {
				if slices.Contains(OwnedDevices(s.plan), n.Device) {
					st.Neighbors = append(st.Neighbors, n)
				}
			}
			st.FDB = after.FDB
			if d := Compare(s.plan, st); !d.InSync() {
				t.Errorf("%s: after the edits the kernel differs from the plan: %+v", name, d)
			}
		}
	}
}

func replacedAtKey(e Edits, r Route) bool {
	return slices.ContainsFunc(e.RouteSets, func(s RouteSet) bool { return s.Foreign != nil && *s.Foreign == r })
}

// play makes the edits on a copy of t as the kernel would.
func play(p plan.Plan, t Tables, e Edits) Tables {
	out := Tables{Devices: t.Devices}
	for i, r := range t.Routes {
		if !slices.ContainsFunc(e.RouteDeletes, func(d RouteDelete) bool { return d.Index == i }) {
			out.Routes = append(out.Routes, r)
		}
	}
	for _, s := range e.RouteSets {
		out.Routes = slices.DeleteFunc(out.Routes, func(r Route) bool {
			return r.Dst.Masked() == s.Route.Dst.Masked() && r.Metric == 0 && r.TOS == 0
		})
		out.Routes = append(out.Routes, Route{Route: s.Route, Protocol: RouteProtocol})
	}
	out.Neighbors = slices.Clone(t.Neighbors)
	out.FDB = slices.Clone(t.FDB)
	for _, d := range e.Devices {
		for _, s := range d.NeighborSets {
			out.Neighbors = slices.DeleteFunc(out.Neighbors, func(n plan.Neighbor) bool {
				return n.Device == d.Device && n.IP == s.Neighbor.IP
			})
			out.Neighbors = append(out.Neighbors, s.Neighbor)
		}
		for _, x := range d.NeighborDeletes {
			out.Neighbors = slices.DeleteFunc(out.Neighbors, func(n plan.Neighbor) bool {
				return n.Device == d.Device && n.IP == x.IP
			})
		}
		for _, s := range d.FDBSets {
			i := slices.IndexFunc(out.FDB, func(f plan.FDBEntry) bool {
				return f.Device == d.Device && f.MAC.String() == s.Entry.MAC.String()
			})
			if i >= 0 {
				out.FDB[i].Dst = s.Entry.Dst
			} else {
				out.FDB = append(out.FDB, s.Entry)
			}
		}
		deletes := d.FDBDeletes
		if len(d.FDBSets) > 0 {
			_, deletes = diffFDB(p.FDB, out.FDB, d.Device) // as Apply reads again
		}
		for _, x := range deletes {
			out.FDB = slices.DeleteFunc(out.FDB, func(f plan.FDBEntry) bool {
				return f.Device == d.Device && f.MAC.String() == x.MAC.String() && f.Dst == x.Dst
			})
		}
	}
	return out
}
