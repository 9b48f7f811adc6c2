package web

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

// activeWindow is how recently a counter must have grown for a tunnel to
// be up; a peer that got packets but answered none for longer than
// silentAfter is unreachable.
const (
	activeWindow = 10 * time.Second
	silentAfter  = 6 * time.Second
)

func (s *Server) nodeInfo(snap status.Snapshot) api.NodeInfo {
	n := api.NodeInfo{
		Name:        snap.Node.Name,
		Iface:       snap.Node.Iface,
		Backend:     snap.Node.BackendType,
		BackendMode: snap.Backend.Mode,
		MTU:         snap.Node.MTU,
		Version:     s.opts.Version,
		StartedAt:   timeString(snap.StartedAt),
		Peers:       len(snap.Backend.Peers),
		Problems:    slices.Clone(snap.Backend.Problems),
	}
	if n.Problems == nil {
		n.Problems = []string{}
	}
	n.PeerProblems = peerProblems(snap)
	if !snap.StartedAt.IsZero() {
		n.UptimeSeconds = time.Since(snap.StartedAt).Round(time.Second).Seconds()
	}
	if snap.Node.PublicIP.IsValid() {
		n.PublicIP = snap.Node.PublicIP.String()
	}
	if snap.Node.Network.IsValid() {
		n.Network = snap.Node.Network.String()
	}
	if snap.Node.PublicIPv6.IsValid() {
		n.PublicIPv6 = snap.Node.PublicIPv6.String()
	}
	if snap.Node.IPv6Network.IsValid() {
		n.IPv6Network = snap.Node.IPv6Network.String()
	}
	if snap.Lease.IPv6Subnet.IsValid() {
		n.IPv6Subnet = snap.Lease.IPv6Subnet.String()
	}
	if key := leaseKey(snap.Lease); key.IsValid() {
		n.Subnet = key.String()
		n.Reservation = snap.Lease.Reservation
		if !snap.Lease.Reservation {
			n.LeaseExpiresAt = timeString(snap.Lease.Expiration)
		}
		if snap.Lease.Attrs.Twill != nil {
			n.Dashboard = snap.Lease.Attrs.Twill.Dashboard
		}
	}
	h := health(snap)
	n.Ready, n.Checks = h.Ready, h.Checks
	return n
}

// health is ready when the daemon says it is and every check passes.
func health(snap status.Snapshot) api.Health {
	h := api.Health{Ready: snap.Ready, Checks: []api.Check{{Name: "running", OK: snap.Ready, Detail: "twilld finished starting"}}}
	if !snap.Ready {
		h.Checks[0].Detail = "twilld is starting or stopping"
	}
	for _, c := range snap.Checks {
		h.Checks = append(h.Checks, api.Check{Name: c.Name, OK: c.OK, Detail: c.Detail})
		h.Ready = h.Ready && c.OK
	}
	return h
}

// leaseKey is the subnet a lease is known by on the dashboard: its IPv4
// subnet, or an IPv6-only lease's IPv6 subnet.
func leaseKey(l lease.Lease) netip.Prefix {
	if l.Subnet.IsValid() {
		return l.Subnet
	}
	return l.IPv6Subnet
}

// nodeNames maps both subnets of every lease to the node's name.
func nodeNames(ls []lease.Lease) map[netip.Prefix]string {
	names := map[netip.Prefix]string{}
	for _, l := range ls {
		for _, s := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if s.IsValid() {
				names[s] = l.Attrs.NodeName()
			}
		}
	}
	return names
}

// peerProblems are the peers' leases the backend does not route to, with
// the node each lease names.
func peerProblems(snap status.Snapshot) []api.PeerProblem {
	names := nodeNames(snap.Leases)
	out := make([]api.PeerProblem, 0, len(snap.Backend.PeerProblems))
	for _, p := range snap.Backend.PeerProblems {
		v := api.PeerProblem{Subnet: p.Subnet.String(), Node: cmp.Or(p.Node, names[p.Subnet]), Reason: p.Reason}
		if p.PublicIP.IsValid() {
			v.PublicIP = p.PublicIP.String()
		}
		out = append(out, v)
	}
	return out
}

// notRouted maps a skipped peer's subnet to the reason.
func notRouted(snap status.Snapshot) map[netip.Prefix]string {
	m := map[netip.Prefix]string{}
	for _, p := range snap.Backend.PeerProblems {
		if m[p.Subnet] == "" {
			m[p.Subnet] = p.Reason
		}
	}
	return m
}

func leaseList(snap status.Snapshot, now time.Time) api.LeaseList {
	ls := make([]api.Lease, 0, len(snap.Leases)+1)
	own := false
	skipped := notRouted(snap)
	for _, l := range snap.Leases {
		v := leaseView(l, now)
		if leaseKey(l) == leaseKey(snap.Lease) {
			v.Own, own = true, true
		} else {
			v.NotRouted = cmp.Or(skipped[l.Subnet], skipped[l.IPv6Subnet])
		}
		ls = append(ls, v)
	}
	if !own && leaseKey(snap.Lease).IsValid() {
		v := leaseView(snap.Lease, now)
		v.Own = true
		ls = append(ls, v)
	}
	slices.SortFunc(ls, func(a, b api.Lease) int { return cmpSubnet(a.Subnet, b.Subnet) })
	return api.LeaseList{Now: timeString(now), Leases: ls}
}

func cmpSubnet(a, b string) int {
	pa, ea := netip.ParsePrefix(a)
	pb, eb := netip.ParsePrefix(b)
	if ea != nil || eb != nil {
		return cmp.Compare(a, b)
	}
	return cmp.Or(pa.Addr().Compare(pb.Addr()), cmp.Compare(pa.Bits(), pb.Bits()))
}

func leaseView(l lease.Lease, now time.Time) api.Lease {
	v := api.Lease{
		Subnet:        leaseKey(l).String(),
		Node:          l.Attrs.NodeName(),
		Backend:       l.Attrs.Backend(),
		BackendData:   l.Attrs.BackendData,
		BackendV6Data: l.Attrs.BackendV6Data,
		Reservation:   l.Reservation,
	}
	if l.Attrs.PublicIP.IsValid() {
		v.PublicIP = l.Attrs.PublicIP.String()
	}
	if l.IPv6Subnet.IsValid() {
		v.IPv6Subnet = l.IPv6Subnet.String()
	}
	if l.Attrs.PublicIPv6.IsValid() {
		v.PublicIPv6 = l.Attrs.PublicIPv6.String()
	}
	if len(v.BackendData) == 0 || string(v.BackendData) == "null" {
		v.BackendData = nil
	}
	if len(v.BackendV6Data) == 0 || string(v.BackendV6Data) == "null" {
		v.BackendV6Data = nil
	}
	if !l.Reservation && !l.Expiration.IsZero() {
		v.ExpiresAt = timeString(l.Expiration)
		v.ExpiresInSeconds = max(0, l.Expiration.Sub(now).Round(time.Second).Seconds())
	}
	if l.Attrs.Twill != nil {
		v.Dashboard = l.Attrs.Twill.Dashboard
	}
	return v
}

func routeTable(snap status.Snapshot) api.Routes {
	r := api.Routes{InSync: snap.Backend.InSync, Routes: []api.RouteRow{}, Neighbors: []api.RouteRow{}, FDB: []api.RouteRow{}}
	k := snap.Backend.Kernel
	if k == nil {
		return r
	}
	r.LastPass, r.LastError = timeString(k.LastPass), k.LastError
	r.Routes = pair(k.Desired.Routes, k.Actual.Routes, func(x plan.Route) string { return x.Dst.String() }, routeText)
	r.Neighbors = pair(k.Desired.Neighbors, k.Actual.Neighbors, func(x plan.Neighbor) string { return x.IP.String() + " dev " + x.Device }, neighText)
	r.FDB = pair(k.Desired.FDB, k.Actual.FDB, func(x plan.FDBEntry) string { return x.MAC.String() + " dev " + x.Device }, fdbText)
	return r
}

// The entries in ip(8) syntax, without the object word.
func routeText(r plan.Route) string    { return r.String()[len("route "):] }
func neighText(n plan.Neighbor) string { return n.String()[len("neigh "):] }
func fdbText(f plan.FDBEntry) string   { return f.String()[len("fdb "):] }

// pair matches desired and actual entries by key, in key order.
func pair[T any](desired, actual []T, key, text func(T) string) []api.RouteRow {
	rows := map[string]*api.RouteRow{}
	get := func(k string) *api.RouteRow {
		if rows[k] == nil {
			rows[k] = &api.RouteRow{Key: k}
		}
		return rows[k]
	}
	for _, x := range desired {
		get(key(x)).Desired = text(x)
	}
	for _, x := range actual {
		get(key(x)).Actual = text(x)
	}
	out := make([]api.RouteRow, 0, len(rows))
	for _, k := range slices.SortedFunc(maps.Keys(rows), cmpKey) {
		r := *rows[k]
		switch {
		case r.Actual == "":
			r.Status = "missing"
		case r.Desired == "":
			r.Status = "extra"
		case r.Actual != r.Desired:
			r.Status = "differs"
		default:
			r.Status = "ok"
		}
		out = append(out, r)
	}
	return out
}

// cmpKey orders keys that start with an address or prefix by it.
func cmpKey(a, b string) int {
	pa, ea := netip.ParsePrefix(firstWord(a))
	pb, eb := netip.ParsePrefix(firstWord(b))
	if ea == nil && eb == nil {
		return cmp.Or(pa.Addr().Compare(pb.Addr()), cmp.Compare(a, b))
	}
	aa, ea := netip.ParseAddr(firstWord(a))
	ab, eb := netip.ParseAddr(firstWord(b))
	if ea == nil && eb == nil {
		return cmp.Or(aa.Compare(ab), cmp.Compare(a, b))
	}
	return cmp.Compare(a, b)
}

func firstWord(s string) string {
	for i := range len(s) {
		if s[i] == ' ' {
			return s[:i]
		}
	}
	return s
}

func (s *Server) tunnelList(snap status.Snapshot, withHistory bool) api.TunnelList {
	tl := api.TunnelList{
		SampledAt:       timeString(s.hist.sampledAt()),
		IntervalSeconds: s.opts.SampleInterval.Seconds(),
		Tunnels:         make([]api.Tunnel, 0, len(snap.Backend.Peers)),
		Drops:           maps.Clone(snap.Backend.Drops),
	}
	if tl.Drops == nil {
		tl.Drops = map[string]uint64{}
	}
	names := nodeNames(snap.Leases)
	// A peer's IPv6 tunnel is probed as its node: by the lease's key.
	keys := map[netip.Prefix]netip.Prefix{}
	for _, l := range snap.Leases {
		keys[l.IPv6Subnet] = leaseKey(l)
	}
	for _, p := range snap.Backend.Peers {
		tl.Tunnels = append(tl.Tunnels, s.tunnel(p, names[p.Subnet], cmp.Or(keys[p.Subnet], p.Subnet), withHistory))
	}
	slices.SortFunc(tl.Tunnels, func(a, b api.Tunnel) int { return cmpSubnet(a.Peer, b.Peer) })
	return tl
}

func (s *Server) tunnel(p status.Peer, node string, probeKey netip.Prefix, withHistory bool) api.Tunnel {
	t := api.Tunnel{
		Peer: p.Subnet.String(), Node: node,
		TxPackets: p.TxPackets, TxBytes: p.TxBytes, RxPackets: p.RxPackets, RxBytes: p.RxBytes,
		UserspaceTxBytes: p.UserspaceTxBytes, UserspaceRxBytes: p.UserspaceRxBytes,
		Drops: maps.Clone(p.Drops),
	}
	if t.Drops == nil {
		t.Drops = map[string]uint64{}
	}
	if t.Node == "" {
		t.Node = p.PublicIP.String()
	}
	if p.PublicIP.IsValid() {
		t.PublicIP = p.PublicIP.String()
	}
	lastSeen := p.LastSeen
	r, ok := s.hist.get(p.Subnet, withHistory)
	if ok {
		if r.last.hasRate {
			t.TxBytesPerSecond, t.RxBytesPerSecond = r.last.txRate, r.last.rxRate
			t.TxPacketsPerSecond, t.RxPacketsPerSecond = r.last.txpRate, r.last.rxpRate
		}
		if r.lastRx.After(lastSeen) {
			lastSeen = r.lastRx
		}
		for _, x := range r.series {
			if x.hasRate {
				t.History = append(t.History, api.RatePoint{At: timeString(x.at), TxBytesPerSecond: x.txRate, RxBytesPerSecond: x.rxRate})
			}
		}
	}
	t.LastSeen = timeString(lastSeen)
	t.LastHandshake, t.HandshakeProblem = timeString(p.LastHandshake), p.HandshakeProblem
	t.State, t.StateDetail = s.tunnelState(p, probeKey, r, ok)
	return t
}

// tunnelState says whether a tunnel is up (packets flowed lately), idle (no
// packets lately), unreachable (the peer's dashboard does not answer, or
// packets went out for a while and none came back) or, for WireGuard,
// not-handshaking.
func (s *Server) tunnelState(p status.Peer, probeKey netip.Prefix, r peerRates, ok bool) (string, string) {
	if p.HandshakeProblem != "" {
		return api.StateNotHandshaking, "WireGuard: " + p.HandshakeProblem
	}
	if pr, probed := s.peers.result(probeKey); probed && !pr.ok {
		return api.StateUnreachable, "its dashboard does not answer: " + pr.err
	}
	if !ok {
		return api.StateIdle, "no samples yet"
	}
	now := r.last.at
	sending := !r.lastTx.IsZero() && now.Sub(r.lastTx) < activeWindow
	if sending && (r.lastRx.IsZero() || r.lastTx.Sub(r.lastRx) > silentAfter) {
		return api.StateUnreachable, "packets sent, none received back"
	}
	if sending || (!r.lastRx.IsZero() && now.Sub(r.lastRx) < activeWindow) {
		return api.StateUp, "packets in the last 10 s"
	}
	return api.StateIdle, "no packets in the last 10 s"
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
