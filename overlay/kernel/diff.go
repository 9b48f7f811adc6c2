package kernel

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/twillnet/twill/overlay/plan"
)

// RouteProtocol is the number behind Protocol, for code that does not
// import netlink.
const RouteProtocol = 126

// Route is a route of the main table as the kernel holds it: the plan's
// fields, and the ones that say whose it is and tell two routes to one
// destination apart.
type Route struct {
	plan.Route
	// Protocol is the route's rtm_protocol: RouteProtocol for twill's.
	Protocol int
	// Metric (the priority) and TOS are 0 on every route twill installs,
	// but for blackholes (plan.BlackholeMetric).
	Metric, TOS int
}

func (r Route) String() string {
	s := r.Route.String() + " proto " + protocolName(r.Protocol)
	if r.Metric != 0 {
		s += " metric " + strconv.Itoa(r.Metric)
	}
	if r.TOS != 0 {
		s += " tos " + strconv.Itoa(r.TOS)
	}
	return s
}

// protocolName names a routing protocol as iproute2's rt_protos does, and
// 126 as twill.
func protocolName(p int) string {
	switch p {
	case RouteProtocol:
		return "twill"
	case 2:
		return "kernel"
	case 3:
		return "boot"
	case 4:
		return "static"
	case 12:
		return "bird"
	case 186:
		return "bgp"
	}
	return strconv.Itoa(p)
}

// Tables is the kernel state Diff compares a plan with.
type Tables struct {
	// Devices are the namespace's links, by name, with their kind
	// (netlink's link type: "vxlan", "veth", "bridge", "ipip", ...).
	Devices map[string]string
	// Routes are the main table's routes, in the order the kernel listed
	// them: of two twill routes to one destination the first is kept.
	// Apply lists only twill's (Protocol); Diff leaves any other alone.
	Routes []Route
	// Neighbors and FDB are the permanent entries of the devices in
	// OwnedDevices(p); entries on other devices are left alone.
	Neighbors []plan.Neighbor
	FDB       []plan.FDBEntry
}

// Edits are what Apply writes to make the kernel hold a plan, in the order
// it writes them: route deletions, route additions and replacements, then,
// device by device, neighbours and FDB entries.
type Edits struct {
	// RouteDeletes are twill's routes that have no place in the plan.
	RouteDeletes []RouteDelete
	// RouteSets are the routes to add or replace (RTM_NEWROUTE with
	// NLM_F_REPLACE): the kernel holds one route per destination, metric
	// and TOS, so each takes the place of what sits at its key.
	RouteSets []RouteSet
	// RouteProblems are the plan's routes that cannot be installed.
	RouteProblems []error
	// Devices are the edits on the plan's devices (OwnedDevices), in order.
	Devices []DeviceEdits
}

// RouteDelete is one of twill's routes to delete.
type RouteDelete struct {
	Route Route
	// Index is the route's position in Tables.Routes.
	Index int
	// Why it goes.
	Why string
}

// RouteSet is a route to add or replace.
type RouteSet struct {
	Route plan.Route
	// Old is twill's route at the key that this replaces, if any: the
	// route is then changed rather than added.
	Old *Route
	// Foreign is a route of another protocol at the key that this
	// replaces, if any (the leases say where the subnet lives).
	Foreign *Route
}

// DeviceEdits are the edits of one device's neighbour and FDB tables.
type DeviceEdits struct {
	Device string
	// Kind is the device's link type; "" if the device does not exist, and
	// then there are no edits.
	Kind string
	// NeighborSets are the neighbours to add or replace.
	NeighborSets []NeighborSet
	// NeighborDeletes are the permanent neighbours the plan does not want.
	NeighborDeletes []plan.Neighbor
	// FDBSets are the FDB entries to add, or to move to another VTEP.
	FDBSets []FDBSet
	// FDBDeletes are the permanent FDB entries the plan does not want,
	// except the remotes FDBSets replace in place.
	FDBDeletes []plan.FDBEntry
	// Problem is what cannot be done on the device: it does not exist
	// while the plan puts entries on it, or it is not a VXLAN device while
	// the plan puts FDB entries on it.
	Problem error
}

// NeighborSet is a neighbour to add or replace (NUD_PERMANENT, NLM_F_REPLACE).
type NeighborSet struct {
	Neighbor plan.Neighbor
	// Old is the kernel's entry for the IP, if it has one.
	Old *plan.Neighbor
}

// FDBSet is an FDB entry to add or replace (NLM_F_REPLACE). The kernel
// replaces the MAC's first remote, so a MAC that moved to another VTEP is
// changed in place, without a gap. (A unicast MAC has one remote: the
// kernel appends remotes only to all-zero and multicast MACs.)
type FDBSet struct {
	Entry plan.FDBEntry
	// Old is the remote this replaces: the MAC's first in Tables.FDB (the
	// kernel lists a MAC's remotes in its order); nil if the MAC has none.
	Old *plan.FDBEntry
}

// Diff decides the edits that make tables t hold plan p. It is the whole of
// Apply's decision; it does no I/O. It never deletes a route of another
// protocol than twill's, nor a neighbour or FDB entry of a device p does not
// own. Twill installs one route per destination, metric 0, TOS 0: any other
// route of its protocol is stale.
func Diff(p plan.Plan, t Tables) Edits {
	var e Edits
	wanted := map[netip.Prefix]bool{}
	metric := map[netip.Prefix]int{}
	for _, r := range p.Routes {
		wanted[r.Dst.Masked()] = true
		if r.Blackhole {
			metric[r.Dst.Masked()] = plan.BlackholeMetric
		}
	}
	current := map[netip.Prefix]*Route{}
	foreign := map[netip.Prefix]*Route{}
	for i := range t.Routes {
		r := &t.Routes[i]
		dst := r.Dst.Masked()
		if r.Protocol != RouteProtocol {
			if _, seen := foreign[dst]; !seen && r.Metric == 0 && r.TOS == 0 {
				foreign[dst] = r
			}
			continue
		}
		why := ""
		switch _, dup := current[dst]; {
		case dup:
			why = "a second twill route to " + dst.String()
		case !wanted[dst]:
			why = "not in the plan"
		case r.Metric != metric[dst]:
			why = "metric " + strconv.Itoa(r.Metric) + ", twill's routes have 0"
			if metric[dst] != 0 {
				why = "metric " + strconv.Itoa(r.Metric) + ", twill's blackhole has " + strconv.Itoa(metric[dst])
			}
		case r.TOS != 0:
			why = "tos " + strconv.Itoa(r.TOS) + ", twill's routes have 0"
		}
		if why != "" {
			e.RouteDeletes = append(e.RouteDeletes, RouteDelete{Route: *r, Index: i, Why: why})
			continue
		}
		current[dst] = r
	}
	for _, r := range p.Routes {
		if _, ok := t.Devices[r.Device]; !ok && !r.Blackhole {
			e.RouteProblems = append(e.RouteProblems, fmt.Errorf("add %s: no device %s", r, r.Device))
			continue
		}
		old := current[r.Dst.Masked()]
		if old != nil && old.Route == r {
			continue
		}
		set := RouteSet{Route: r, Old: old}
		if old == nil {
			set.Foreign = foreign[r.Dst.Masked()]
		}
		e.RouteSets = append(e.RouteSets, set)
	}
	for _, dev := range OwnedDevices(p) {
		e.Devices = append(e.Devices, diffDevice(p, t, dev))
	}
	return e
}

func diffDevice(p plan.Plan, t Tables, dev string) DeviceEdits {
	d := DeviceEdits{Device: dev, Kind: t.Devices[dev]}
	if _, ok := t.Devices[dev]; !ok {
		if wantsOn(p, dev) {
			d.Problem = fmt.Errorf("neighbours on %s: no such device", dev)
		}
		return d
	}
	have := map[netip.Addr]*plan.Neighbor{}
	for i, n := range t.Neighbors {
		if n.Device == dev {
			have[n.IP] = &t.Neighbors[i]
		}
	}
	wanted := map[netip.Addr]bool{}
	for _, n := range p.Neighbors {
		if n.Device != dev {
			continue
		}
		wanted[n.IP] = true
		old := have[n.IP]
		if old != nil && old.MAC.String() == n.MAC.String() {
			continue
		}
		d.NeighborSets = append(d.NeighborSets, NeighborSet{Neighbor: n, Old: old})
	}
	for _, n := range t.Neighbors {
		if n.Device == dev && !wanted[n.IP] {
			d.NeighborDeletes = append(d.NeighborDeletes, n)
			wanted[n.IP] = true // listed once
		}
	}
	if d.Kind != "vxlan" {
		if hasFDB(p, dev) {
			d.Problem = fmt.Errorf("fdb on %s: a %s device, not vxlan", dev, d.Kind)
		}
		return d
	}
	d.FDBSets, d.FDBDeletes = diffFDB(p.FDB, t.FDB, dev)
	return d
}

// fdbKey identifies one remote of a VXLAN FDB entry.
type fdbKey struct {
	mac string
	dst netip.Addr
}

// diffFDB decides the FDB edits of device dev. have is in the kernel's
// order: a set replaces the first remote listed for its MAC.
func diffFDB(want, have []plan.FDBEntry, dev string) (sets []FDBSet, deletes []plan.FDBEntry) {
	current := map[fdbKey]bool{}
	first := map[string]*plan.FDBEntry{}
	for i, f := range have {
		if f.Device == dev {
			current[fdbKey{f.MAC.String(), f.Dst}] = true
			if first[f.MAC.String()] == nil {
				first[f.MAC.String()] = &have[i]
			}
		}
	}
	wanted := map[fdbKey]bool{}
	replaced := map[fdbKey]bool{}
	for _, f := range want {
		if f.Device != dev {
			continue
		}
		k := fdbKey{f.MAC.String(), f.Dst}
		wanted[k] = true
		if current[k] {
			continue
		}
		old := first[k.mac]
		sets = append(sets, FDBSet{Entry: f, Old: old})
		if old != nil {
			replaced[fdbKey{k.mac, old.Dst}] = true
		}
	}
	for _, f := range have {
		k := fdbKey{f.MAC.String(), f.Dst}
		if f.Device != dev || wanted[k] || replaced[k] {
			continue
		}
		deletes = append(deletes, f)
		wanted[k] = true // listed once
	}
	return sets, deletes
}

// Changes counts the edits, as Apply counts what it did when every write
// succeeds.
func (e Edits) Changes() Changes {
	var c Changes
	c.RoutesRemoved = len(e.RouteDeletes)
	for _, s := range e.RouteSets {
		if s.Old != nil {
			c.RoutesChanged++
		} else {
			c.RoutesAdded++
		}
	}
	for _, d := range e.Devices {
		c.NeighborsRemoved += len(d.NeighborDeletes)
		for _, s := range d.NeighborSets {
			if s.Old != nil {
				c.NeighborsChanged++
			} else {
				c.NeighborsAdded++
			}
		}
		c.FDBRemoved += len(d.FDBDeletes)
		for _, s := range d.FDBSets {
			if s.Old != nil {
				c.FDBChanged++
			} else {
				c.FDBAdded++
			}
		}
	}
	return c
}

// Problems are the errors of the edits that cannot be made, routes first.
func (e Edits) Problems() []error {
	errs := append([]error(nil), e.RouteProblems...)
	for _, d := range e.Devices {
		if d.Problem != nil {
			errs = append(errs, d.Problem)
		}
	}
	return errs
}

// String lists the edits one a line, in Apply's order: "- " deletes, "+ "
// adds, "~ " changes (with what was there), "! " a problem. No edits is "".
func (e Edits) String() string {
	var sb strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&sb, format+"\n", args...) }
	// set writes an addition, or a change when there was something.
	set := func(x fmt.Stringer, was string) {
		if was != "" {
			line("~ %s (was %s)", x, was)
		} else {
			line("+ %s", x)
		}
	}
	for _, d := range e.RouteDeletes {
		line("- %s (%s)", d.Route, d.Why)
	}
	for _, s := range e.RouteSets {
		switch {
		case s.Old != nil:
			set(s.Route, strings.TrimPrefix(s.Old.Route.String(), "route "+s.Old.Dst.String()+" "))
		case s.Foreign != nil:
			line("+ %s (replaces %s)", s.Route, s.Foreign)
		default:
			set(s.Route, "")
		}
	}
	for _, p := range e.RouteProblems {
		line("! %v", p)
	}
	for _, d := range e.Devices {
		for _, s := range d.NeighborSets {
			set(s.Neighbor, s.was())
		}
		for _, n := range d.NeighborDeletes {
			line("- %s", n)
		}
		for _, s := range d.FDBSets {
			set(s.Entry, s.was())
		}
		for _, f := range d.FDBDeletes {
			line("- %s", f)
		}
		if d.Problem != nil {
			line("! %v", d.Problem)
		}
	}
	return sb.String()
}

func (s NeighborSet) was() string {
	if s.Old == nil {
		return ""
	}
	return "lladdr " + s.Old.MAC.String()
}

func (s FDBSet) was() string {
	if s.Old == nil {
		return ""
	}
	return "dst " + s.Old.Dst.String()
}
