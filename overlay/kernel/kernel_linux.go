package kernel

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/plan"
)

// Protocol is the routing protocol number twill's routes carry (rtm_protocol;
// `ip route show proto 126`). It marks them as twill's: only routes with it
// are ever deleted. 126 is not assigned in the kernel's rtnetlink.h nor in
// iproute2's rt_protos; `echo "126 twill" > /etc/iproute2/rt_protos.d/twill.conf`
// makes iproute2 print its name.
const Protocol netlink.RouteProtocol = RouteProtocol

// maxDumpTries bounds how often a netlink dump interrupted by a concurrent
// change (netlink.ErrDumpInterrupted) is retried.
const maxDumpTries = 10

// Handle applies plans to, and reads twill's state from, one network
// namespace. It is safe for concurrent use.
type Handle struct {
	mu  sync.Mutex
	nl  *netlink.Handle
	ns  netns.NsHandle
	log *slog.Logger
}

// Open returns a Handle for the namespace ns. The Handle keeps its own
// duplicate of ns; the caller may close theirs.
func Open(ns netns.NsHandle, log *slog.Logger) (*Handle, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate netns handle: %w", err)
	}
	own := netns.NsHandle(fd)
	h, err := netlink.NewHandleAt(own, unix.NETLINK_ROUTE)
	if err != nil {
		own.Close()
		return nil, fmt.Errorf("netlink handle in netns %s: %w", ns, err)
	}
	return &Handle{nl: h, ns: own, log: log}, nil
}

// Close releases the netlink sockets and the namespace handle.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nl.Close()
	return h.ns.Close()
}

// Apply makes the namespace hold p: it reads what the namespace holds, lets
// Diff decide the edits, and makes them. It carries on past single failures
// (a device that does not exist, a route the kernel refuses, a table it
// cannot list: its edits are then not made) and returns them joined, with
// what it did.
func (h *Handle) Apply(p plan.Plan) (Changes, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ch Changes
	links, err := h.links()
	if err != nil {
		return ch, err
	}
	t, have, rerr := h.tables(links, OwnedDevices(p))
	e := Diff(p, t)
	var errs []error
	if rerr.routes != nil {
		errs = append(errs, rerr.routes)
	} else {
		errs = append(errs, h.writeRoutes(e, have, links, &ch))
	}
	for _, d := range e.Devices {
		link, ok := links.byName[d.Device]
		if !ok {
			errs = append(errs, d.Problem)
			continue
		}
		if err := rerr.neighbors[d.Device]; err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, h.writeNeighbors(d, link, &ch))
		}
		if d.Kind != "vxlan" {
			errs = append(errs, d.Problem)
		} else if err := rerr.fdb[d.Device]; err != nil {
			errs = append(errs, err)
		} else {
			errs = append(errs, h.writeFDB(p, d, link, &ch))
		}
	}
	return ch, errors.Join(errs...)
}

// Read lists the twill-owned state of the namespace: the routes of
// Protocol in the main table, and the permanent neighbour and (on VXLAN
// devices) FDB entries of the devices named. A device that does not exist
// has no entries.
func (h *Handle) Read(devices ...string) (State, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var s State
	links, err := h.links()
	if err != nil {
		return s, err
	}
	t, _, rerr := h.tables(links, slices.Compact(slices.Sorted(slices.Values(devices))))
	for _, r := range t.Routes {
		s.Routes = append(s.Routes, r.Route)
	}
	s.Neighbors, s.FDB = t.Neighbors, t.FDB
	s.sort()
	return s, rerr.join()
}

// readErrors are the parts of Tables that could not be listed.
type readErrors struct {
	routes         error
	neighbors, fdb map[string]error // by device
}

func (r readErrors) join() error {
	errs := []error{r.routes}
	for _, m := range []map[string]error{r.neighbors, r.fdb} {
		for _, dev := range slices.Sorted(maps.Keys(m)) {
			errs = append(errs, m[dev])
		}
	}
	return errors.Join(errs...)
}

// tables reads what Diff compares a plan with: the links, twill's routes in
// the kernel's order (have holds the kernel's own, index for index), and the
// permanent neighbour and, on VXLAN devices, FDB entries of the devices
// named that exist.
func (h *Handle) tables(links linkTable, devices []string) (t Tables, have []netlink.Route, rerr readErrors) {
	rerr.neighbors, rerr.fdb = map[string]error{}, map[string]error{}
	t.Devices = map[string]string{}
	for name, l := range links.byName {
		t.Devices[name] = l.Type()
	}
	have, rerr.routes = h.ownedRoutes()
	for _, r := range have {
		t.Routes = append(t.Routes, Route{Route: fromRoute(r, links), Protocol: int(r.Protocol), Metric: metric(r), TOS: r.Tos})
	}
	for _, dev := range devices {
		link, ok := links.byName[dev]
		if !ok {
			continue
		}
		var neighs []netlink.Neigh
		var nerrs []error
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			ns, err := h.ownedNeighbors(link, family)
			neighs = append(neighs, ns...)
			nerrs = append(nerrs, err)
		}
		if err := errors.Join(nerrs...); err != nil {
			rerr.neighbors[dev] = err
		}
		for _, n := range neighs {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				t.Neighbors = append(t.Neighbors, plan.Neighbor{IP: ip.Unmap(), MAC: n.HardwareAddr, Device: dev})
			}
		}
		if link.Type() != "vxlan" {
			continue
		}
		fdb, err := h.fdbOf(link)
		if err != nil {
			rerr.fdb[dev] = err
		}
		t.FDB = append(t.FDB, fdb...)
	}
	return t, have, rerr
}

// linkTable maps the namespace's links by name and index.
type linkTable struct {
	byName  map[string]netlink.Link
	byIndex map[int]string
}

func (h *Handle) links() (linkTable, error) {
	ls, err := retryDump("list links", h.nl.LinkList)
	if err != nil {
		return linkTable{}, err
	}
	t := linkTable{byName: map[string]netlink.Link{}, byIndex: map[int]string{}}
	for _, l := range ls {
		t.byName[l.Attrs().Name] = l
		t.byIndex[l.Attrs().Index] = l.Attrs().Name
	}
	return t, nil
}

// retryDump runs a netlink dump until it is not interrupted by a concurrent
// change (netlink.ErrDumpInterrupted), at most maxDumpTries times.
func retryDump[T any](what string, dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range maxDumpTries {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		var zero T
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			return zero, fmt.Errorf("%s: interrupted %d times in a row: %w", what, maxDumpTries, err)
		}
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

func (h *Handle) ownedRoutes() ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN}
	return retryDump("list twill routes", func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
}

// ipv6DefaultMetric is the metric the kernel gives an IPv6 route added
// with none (IP6_RT_PRIO_USER): an IPv6 route cannot have metric 0.
const ipv6DefaultMetric = 1024

// metric is a route's metric as Diff sees it: an IPv6 route's default
// (1024) counts as the 0 of twill's routes.
func metric(r netlink.Route) int {
	if r.Family == netlink.FAMILY_V6 && r.Priority == ipv6DefaultMetric {
		return 0
	}
	return r.Priority
}

func fromRoute(r netlink.Route, links linkTable) plan.Route {
	var pr plan.Route
	if r.Dst != nil {
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		pr.Dst = netip.PrefixFrom(ip.Unmap(), ones)
	} else if r.Family == netlink.FAMILY_V6 {
		pr.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		pr.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok {
		pr.Gateway = gw.Unmap()
	}
	pr.Device = links.byIndex[r.LinkIndex]
	if pr.Device == "" && r.LinkIndex != 0 {
		pr.Device = fmt.Sprintf("if%d", r.LinkIndex)
	}
	pr.OnLink = r.Flags&int(netlink.FLAG_ONLINK) != 0
	pr.MTU = r.MTU
	pr.Blackhole = r.Type == unix.RTN_BLACKHOLE
	return pr
}

func toRoute(r plan.Route, link netlink.Link) *netlink.Route {
	if r.Blackhole {
		return &netlink.Route{
			Dst:      &net.IPNet{IP: r.Dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
			Protocol: Protocol, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_UNIVERSE, Type: unix.RTN_BLACKHOLE,
			Priority: plan.BlackholeMetric,
		}
	}
	nr := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: r.Dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())},
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
		Type:      unix.RTN_UNICAST,
		MTU:       r.MTU,
	}
	if r.Gateway.IsValid() {
		nr.Gw = r.Gateway.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func (h *Handle) writeRoutes(e Edits, have []netlink.Route, links linkTable, ch *Changes) error {
	var errs []error
	for _, d := range e.RouteDeletes {
		if err := h.nl.RouteDel(&have[d.Index]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete %s: %w", d.Route, err))
			continue
		}
		ch.RoutesRemoved++
	}
	for _, s := range e.RouteSets {
		if err := h.nl.RouteReplace(toRoute(s.Route, links.byName[s.Route.Device])); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", s.Route, err))
			continue
		}
		if s.Old != nil {
			ch.RoutesChanged++
		} else {
			ch.RoutesAdded++
		}
	}
	return errors.Join(append(errs, e.RouteProblems...)...)
}

// addrFamily is the netlink family of an address: FAMILY_V4 or FAMILY_V6.
func addrFamily(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// ownedNeighbors lists the permanent entries of link's neighbour table
// (AF_INET, AF_INET6) or FDB (AF_BRIDGE).
func (h *Handle) ownedNeighbors(link netlink.Link, family int) ([]netlink.Neigh, error) {
	what := "list neighbours of " + link.Attrs().Name
	if family == unix.AF_BRIDGE {
		what = "list fdb of " + link.Attrs().Name
	}
	all, err := retryDump(what, func() ([]netlink.Neigh, error) { return h.nl.NeighList(link.Attrs().Index, family) })
	if err != nil {
		return nil, err
	}
	var out []netlink.Neigh
	for _, n := range all {
		if n.State&netlink.NUD_PERMANENT != 0 && n.LinkIndex == link.Attrs().Index {
			out = append(out, n)
		}
	}
	return out, nil
}

// fdbOf lists the permanent FDB entries of a VXLAN device.
func (h *Handle) fdbOf(link netlink.Link) ([]plan.FDBEntry, error) {
	ns, err := h.ownedNeighbors(link, unix.AF_BRIDGE)
	var fdb []plan.FDBEntry
	for _, n := range ns {
		ip, _ := netip.AddrFromSlice(n.IP)
		fdb = append(fdb, plan.FDBEntry{MAC: n.HardwareAddr, Dst: ip.Unmap(), Device: link.Attrs().Name})
	}
	return fdb, err
}

func (h *Handle) writeNeighbors(d DeviceEdits, link netlink.Link, ch *Changes) error {
	var errs []error
	for _, s := range d.NeighborSets {
		err := h.nl.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: addrFamily(s.Neighbor.IP), State: netlink.NUD_PERMANENT,
			Type: unix.RTN_UNICAST, IP: s.Neighbor.IP.AsSlice(), HardwareAddr: s.Neighbor.MAC,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s: %w", s.Neighbor, err))
			continue
		}
		if s.Old != nil {
			ch.NeighborsChanged++
		} else {
			ch.NeighborsAdded++
		}
	}
	for _, n := range d.NeighborDeletes {
		err := h.nl.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: addrFamily(n.IP), IP: n.IP.AsSlice()})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s: %w", n, err))
			continue
		}
		ch.NeighborsRemoved++
	}
	return errors.Join(errs...)
}

func (h *Handle) writeFDB(p plan.Plan, d DeviceEdits, link netlink.Link, ch *Changes) error {
	var errs []error
	wrote := false
	for _, s := range d.FDBSets {
		err := h.nl.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: s.Entry.Dst.AsSlice(), HardwareAddr: s.Entry.MAC,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s: %w", s.Entry, err))
			continue
		}
		if s.Old != nil {
			ch.FDBChanged++
		} else {
			ch.FDBAdded++
		}
		wrote = true
	}
	deletes := d.FDBDeletes
	if wrote {
		// Diff expects the kernel to replace a MAC's first remote; decide
		// the deletions again on what the table holds now, so that a
		// kernel that did otherwise leaves no stale remote behind.
		fdb, err := h.fdbOf(link)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		_, deletes = diffFDB(p.FDB, fdb, d.Device)
	}
	for _, f := range deletes {
		err := h.nl.NeighDel(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC,
		})
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", f, err))
			continue
		}
		ch.FDBRemoved++
	}
	return errors.Join(errs...)
}
