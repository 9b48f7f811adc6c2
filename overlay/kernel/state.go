package kernel

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/twillnet/twill/overlay/plan"
)

// State is the twill-owned kernel state of a namespace, in the plan's terms
// and order, so that desired and actual can be compared and shown side by
// side.
type State struct {
	Routes    []plan.Route
	Neighbors []plan.Neighbor
	FDB       []plan.FDBEntry
}

// Changes counts what one Apply did.
type Changes struct {
	RoutesAdded, RoutesChanged, RoutesRemoved          int
	NeighborsAdded, NeighborsChanged, NeighborsRemoved int
	FDBAdded, FDBChanged, FDBRemoved                   int
}

// Total is the number of kernel objects written or deleted.
func (c Changes) Total() int {
	return c.RoutesAdded + c.RoutesChanged + c.RoutesRemoved +
		c.NeighborsAdded + c.NeighborsChanged + c.NeighborsRemoved +
		c.FDBAdded + c.FDBChanged + c.FDBRemoved
}

// Add sums two Changes.
func (c Changes) Add(d Changes) Changes {
	return Changes{
		c.RoutesAdded + d.RoutesAdded, c.RoutesChanged + d.RoutesChanged, c.RoutesRemoved + d.RoutesRemoved,
		c.NeighborsAdded + d.NeighborsAdded, c.NeighborsChanged + d.NeighborsChanged, c.NeighborsRemoved + d.NeighborsRemoved,
		c.FDBAdded + d.FDBAdded, c.FDBChanged + d.FDBChanged, c.FDBRemoved + d.FDBRemoved,
	}
}

func (c Changes) String() string {
	return fmt.Sprintf("routes +%d ~%d -%d, neighbours +%d ~%d -%d, fdb +%d ~%d -%d",
		c.RoutesAdded, c.RoutesChanged, c.RoutesRemoved,
		c.NeighborsAdded, c.NeighborsChanged, c.NeighborsRemoved,
		c.FDBAdded, c.FDBChanged, c.FDBRemoved)
}

// LogValue lets slog print Changes as attributes.
func (c Changes) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("routes_added", c.RoutesAdded), slog.Int("routes_changed", c.RoutesChanged), slog.Int("routes_removed", c.RoutesRemoved),
		slog.Int("neighbors_added", c.NeighborsAdded), slog.Int("neighbors_changed", c.NeighborsChanged), slog.Int("neighbors_removed", c.NeighborsRemoved),
		slog.Int("fdb_added", c.FDBAdded), slog.Int("fdb_changed", c.FDBChanged), slog.Int("fdb_removed", c.FDBRemoved))
}

func (s *State) sort() {
	slices.SortFunc(s.Routes, func(a, b plan.Route) int { return cmp.Compare(routeKey(a), routeKey(b)) })
	slices.SortFunc(s.Neighbors, func(a, b plan.Neighbor) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), a.IP.Compare(b.IP))
	})
	slices.SortFunc(s.FDB, func(a, b plan.FDBEntry) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), strings.Compare(a.MAC.String(), b.MAC.String()), a.Dst.Compare(b.Dst))
	})
}

// routeKey orders routes as the plan does: IPv4 before IPv6, then by
// address, then length.
func routeKey(r plan.Route) string {
	a := r.Dst.Addr().As16()
	return fmt.Sprintf("%03d %x/%03d %s", r.Dst.Addr().BitLen(), a, r.Dst.Bits(), r.Device)
}

// OwnedDevices are the devices whose permanent neighbour and FDB entries
// belong to twill under p: p.Device and the devices of p's neighbours and
// FDB entries, sorted.
func OwnedDevices(p plan.Plan) []string {
	var devs []string
	for _, d := range []string{p.Device, p.Device6} {
		if d != "" {
			devs = append(devs, d)
		}
	}
	for _, n := range p.Neighbors {
		devs = append(devs, n.Device)
	}
	for _, f := range p.FDB {
		devs = append(devs, f.Device)
	}
	slices.Sort(devs)
	return slices.Compact(devs)
}

func wantsOn(p plan.Plan, dev string) bool {
	return slices.ContainsFunc(p.Neighbors, func(n plan.Neighbor) bool { return n.Device == dev }) || hasFDB(p, dev)
}

func hasFDB(p plan.Plan, dev string) bool {
	return slices.ContainsFunc(p.FDB, func(f plan.FDBEntry) bool { return f.Device == dev })
}
