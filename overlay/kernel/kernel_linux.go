package kernel

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
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
const Protocol netlink.RouteProtocol = 126

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

// OwnedDevices are the devices whose permanent neighbour and FDB entries
// belong to twill under p: p.Device and the devices of p's neighbours and
// FDB entries, sorted.
func OwnedDevices(p plan.Plan) []string {
	var devs []string
	if p.Device != "" {
		devs = append(devs, p.Device)
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

// Apply makes the namespace hold p: it adds or replaces the routes,
// neighbour and FDB entries p wants and deletes the twill-owned ones it does
// not. It carries on past single failures (a device that does not exist, a
// route the kernel refuses) and returns them joined, with what it did.
func (h *Handle) Apply(p plan.Plan) (Changes, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ch Changes
	links, err := h.links()
	if err != nil {
		return ch, err
	}
	errR := h.applyRoutes(p.Routes, links, &ch)
	var errs []error
	for _, dev := range OwnedDevices(p) {
		link, ok := links.byName[dev]
		if !ok {
			if wantsOn(p, dev) {
				errs = append(errs, fmt.Errorf("neighbours on %s: no such device", dev))
			}
			continue
		}
		errs = append(errs, h.applyNeighbors(p.Neighbors, link, &ch))
		if link.Type() == "vxlan" {
			errs = append(errs, h.applyFDB(p.FDB, link, &ch))
		} else if hasFDB(p, dev) {
			errs = append(errs, fmt.Errorf("fdb on %s: a %s device, not vxlan", dev, link.Type()))
		}
	}
	return ch, errors.Join(append([]error{errR}, errs...)...)
}

func wantsOn(p plan.Plan, dev string) bool {
	return slices.ContainsFunc(p.Neighbors, func(n plan.Neighbor) bool { return n.Device == dev }) || hasFDB(p, dev)
}

func hasFDB(p plan.Plan, dev string) bool {
	return slices.ContainsFunc(p.FDB, func(f plan.FDBEntry) bool { return f.Device == dev })
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
	routes, err := h.ownedRoutes()
	if err != nil {
		return s, err
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, fromRoute(r, links))
	}
	slices.Sort(devices)
	for _, dev := range slices.Compact(devices) {
		link, ok := links.byName[dev]
		if !ok {
			continue
		}
		neighs, err := h.ownedNeighbors(link, unix.AF_INET)
		if err != nil {
			return s, err
		}
		for _, n := range neighs {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				s.Neighbors = append(s.Neighbors, plan.Neighbor{IP: ip.Unmap(), MAC: n.HardwareAddr, Device: dev})
			}
		}
		if link.Type() != "vxlan" {
			continue
		}
		fdb, err := h.ownedNeighbors(link, unix.AF_BRIDGE)
		if err != nil {
			return s, err
		}
		for _, n := range fdb {
			ip, _ := netip.AddrFromSlice(n.IP)
			s.FDB = append(s.FDB, plan.FDBEntry{MAC: n.HardwareAddr, Dst: ip.Unmap(), Device: dev})
		}
	}
	s.sort()
	return s, nil
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

// routeKey orders routes as the plan does: by address, then length.
func routeKey(r plan.Route) string {
	a := r.Dst.Addr().As4()
	return fmt.Sprintf("%02x%02x%02x%02x/%02d %s", a[0], a[1], a[2], a[3], r.Dst.Bits(), r.Device)
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
		return h.nl.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
}

func fromRoute(r netlink.Route, links linkTable) plan.Route {
	var pr plan.Route
	if r.Dst != nil {
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		pr.Dst = netip.PrefixFrom(ip.Unmap(), ones)
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
	return pr
}

func toRoute(r plan.Route, link netlink.Link) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: r.Dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
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

func (h *Handle) applyRoutes(want []plan.Route, links linkTable, ch *Changes) error {
	have, err := h.ownedRoutes()
	if err != nil {
		return err
	}
	// Twill installs one route per destination (metric 0); any other route
	// of Protocol to a destination is stale.
	current := map[netip.Prefix]netlink.Route{}
	var errs []error
	del := func(r netlink.Route) {
		if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", fromRoute(r, links), err))
			return
		}
		ch.RoutesRemoved++
	}
	wanted := map[netip.Prefix]bool{}
	for _, r := range want {
		wanted[r.Dst.Masked()] = true
	}
	for _, r := range have {
		dst := fromRoute(r, links).Dst
		if _, dup := current[dst]; dup || !wanted[dst] || r.Priority != 0 || r.Tos != 0 {
			del(r)
			continue
		}
		current[dst] = r
	}
	for _, r := range want {
		link, ok := links.byName[r.Device]
		if !ok {
			errs = append(errs, fmt.Errorf("add %s: no device %s", r, r.Device))
			continue
		}
		old, exists := current[r.Dst.Masked()]
		if exists && fromRoute(old, links) == r {
			continue
		}
		if err := h.nl.RouteReplace(toRoute(r, link)); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", r, err))
			continue
		}
		if exists {
			ch.RoutesChanged++
		} else {
			ch.RoutesAdded++
		}
	}
	return errors.Join(errs...)
}

// ownedNeighbors lists the permanent entries of link's neighbour table
// (AF_INET) or FDB (AF_BRIDGE).
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

func (h *Handle) applyNeighbors(want []plan.Neighbor, link netlink.Link, ch *Changes) error {
	dev := link.Attrs().Name
	have, err := h.ownedNeighbors(link, unix.AF_INET)
	if err != nil {
		return err
	}
	current := map[netip.Addr]net.HardwareAddr{}
	for _, n := range have {
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			current[ip.Unmap()] = n.HardwareAddr
		}
	}
	var errs []error
	wanted := map[netip.Addr]bool{}
	for _, n := range want {
		if n.Device != dev {
			continue
		}
		wanted[n.IP] = true
		old, exists := current[n.IP]
		if exists && old.String() == n.MAC.String() {
			continue
		}
		err := h.nl.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			Type: unix.RTN_UNICAST, IP: n.IP.AsSlice(), HardwareAddr: n.MAC,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s: %w", n, err))
			continue
		}
		if exists {
			ch.NeighborsChanged++
		} else {
			ch.NeighborsAdded++
		}
	}
	for ip, mac := range current {
		if wanted[ip] {
			continue
		}
		err := h.nl.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s lladdr %s dev %s: %w", ip, mac, dev, err))
			continue
		}
		ch.NeighborsRemoved++
	}
	return errors.Join(errs...)
}

// fdbKey identifies one remote of a VXLAN FDB entry.
type fdbKey struct {
	mac string
	dst netip.Addr
}

func (h *Handle) applyFDB(want []plan.FDBEntry, link netlink.Link, ch *Changes) error {
	dev := link.Attrs().Name
	have, err := h.ownedNeighbors(link, unix.AF_BRIDGE)
	if err != nil {
		return err
	}
	current := map[fdbKey]bool{}
	macs := map[string]bool{}
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP)
		current[fdbKey{n.HardwareAddr.String(), ip.Unmap()}] = true
		macs[n.HardwareAddr.String()] = true
	}
	var errs []error
	wrote := false
	wanted := map[fdbKey]bool{}
	for _, f := range want {
		if f.Device != dev {
			continue
		}
		k := fdbKey{f.MAC.String(), f.Dst}
		wanted[k] = true
		if current[k] {
			continue
		}
		// NeighSet replaces the MAC's (first) remote: a MAC that moved to
		// another VTEP is changed in place, without a gap.
		err := h.nl.NeighSet(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s: %w", f, err))
			continue
		}
		if macs[k.mac] {
			ch.FDBChanged++
		} else {
			ch.FDBAdded++
		}
		wrote = true
	}
	if wrote {
		// A replaced remote is gone; look again rather than guess which.
		if have, err = h.ownedNeighbors(link, unix.AF_BRIDGE); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP)
		k := fdbKey{n.HardwareAddr.String(), ip.Unmap()}
		if wanted[k] {
			continue
		}
		err := h.nl.NeighDel(&netlink.Neigh{
			LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: n.IP, HardwareAddr: n.HardwareAddr,
		})
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete fdb %s dst %s dev %s: %w", n.HardwareAddr, ip, dev, err))
			continue
		}
		ch.FDBRemoved++
	}
	return errors.Join(errs...)
}
