package daemon

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
)

// Resync asks the backend to compare its kernel state with its plan and
// repair it now, if it keeps kernel state.
func (d *Daemon) Resync() {
	r, _ := d.state()
	if r == nil {
		return
	}
	if rs, ok := r.be.(interface{ Resync() }); ok {
		rs.Resync()
		d.log.Info("resync requested")
	}
}

// Snapshot returns the daemon's state now. It is safe to call at any time,
// also before Run got far.
func (d *Daemon) Snapshot() status.Snapshot {
	r, ready := d.state()
	s := status.Snapshot{Ready: ready, StartedAt: d.started, Node: status.Node{Name: d.cfg.NodeName}}
	var be backend.Backend
	if r != nil {
		be = r.be
		s.Node.PublicIP, s.Node.Iface, s.Node.MTU = r.node.PublicIP, r.node.Iface, r.prep.MTU
		s.Node.Network = r.netcfg.Network
		s.Node.PublicIPv6, s.Node.IPv6Network = r.node.PublicIPv6, r.netcfg.IPv6Network
		s.Node.BackendType = r.netcfg.Backend.Type
		s.Node.BackendMode = r.netcfg.Backend.Mode
		s.Lease = r.keeper.Current()
		s.Leases = r.watcher.Leases()
		s.Backend = be.Status()
	}
	s.Backend.PeerProblems, s.Backend.Problems = d.storeProblems(s.Backend.PeerProblems, s.Backend.Problems)
	held := s.Lease.Subnets().IsValid() && (s.Lease.Reservation || time.Now().Before(s.Lease.Expiration))
	leaseDetail := "no lease yet"
	if r != nil && r.keeper.Pending() != "" {
		leaseDetail = "no lease yet: " + r.keeper.Pending()
	}
	switch {
	case s.Lease.Reservation:
		leaseDetail = s.Lease.Subnets().String() + " (reserved)"
	case s.Lease.Subnets().IsValid():
		leaseDetail = s.Lease.Subnets().String() + " until " + s.Lease.Expiration.UTC().Format(time.RFC3339)
	}
	device := status.Check{Name: "device-up", OK: be != nil && (s.Backend.Device == "" || s.Backend.DeviceUp)}
	switch {
	case be == nil:
		device.Detail = "backend not set up yet"
	case s.Backend.Device == "":
		device.Detail = "the " + s.Node.BackendType + " backend has no device"
	case s.Backend.DeviceUp:
		device.Detail = s.Backend.Device + " is up"
	default:
		device.Detail = s.Backend.Device + " is missing or down"
	}
	routes := status.Check{Name: "routes-in-sync", OK: be != nil && s.Backend.InSync}
	if routes.OK {
		routes.Detail = "the kernel holds the planned routes"
	} else if be != nil {
		routes.Detail = "the kernel differs from the plan (see Routes)"
	}
	etcdCheck := status.Check{Name: "etcd-reachable", OK: d.reach.Reachable()}
	store := storeName(d.cfg.Registry)
	etcdCheck.Detail = store + " answered the last request"
	if !etcdCheck.OK {
		since := d.reach.Since()
		etcdCheck.Detail = fmt.Sprintf("%s has not answered since %s (%s); the data path goes on with the leases known", store,
			since.UTC().Format(time.RFC3339), time.Since(since).Round(time.Second))
	}
	peers := status.Check{Name: "peers-routable", OK: be != nil && len(s.Backend.PeerProblems) == 0, Detail: "every peer can be routed to"}
	if len(s.Backend.PeerProblems) > 0 {
		var ps []string
		for _, p := range s.Backend.PeerProblems {
			ps = append(ps, p.String())
		}
		peers.Detail = strings.Join(ps, "; ")
	}
	s.Checks = []status.Check{
		{Name: "lease-held", OK: held, Detail: leaseDetail},
		device,
		routes,
		peers,
		etcdCheck,
	}
	if s.Backend.BGP != nil {
		s.Checks = append(s.Checks, bgpCheck(s.Backend.BGP))
	}
	if s.Node.BackendType == netconf.TypeWireGuard {
		s.Checks = append(s.Checks, handshakeCheck(s.Backend.Peers))
	}
	return s
}

// handshakeCheck fails while a WireGuard peer is not handshaking, naming
// the peers and why.
func handshakeCheck(peers []status.Peer) status.Check {
	c := status.Check{Name: "peers-handshaking", OK: true}
	var stale []string
	for _, p := range peers {
		if p.HandshakeProblem != "" {
			stale = append(stale, fmt.Sprintf("%s (%s): %s", p.Subnet, p.PublicIP, p.HandshakeProblem))
		}
	}
	if len(stale) > 0 {
		c.OK, c.Detail = false, "WireGuard peers not handshaking: "+strings.Join(stale, "; ")
		return c
	}
	c.Detail = fmt.Sprintf("every WireGuard peer (%d) handshook in the last 3 minutes or is newer", len(peers))
	return c
}

// bgpCheck fails while a BGP session is down with an error (a peer that
// refuses the OPEN: wrong ASN, bad password), naming the peers.
func bgpCheck(sessions []status.BGPSession) status.Check {
	c := status.Check{Name: "bgp-sessions", OK: true}
	var stuck []string
	up := 0
	for _, s := range sessions {
		if s.State == "Established" {
			up++
		}
		if s.Stuck() {
			stuck = append(stuck, fmt.Sprintf("%s (AS %d, %s) is %s: %s", s.Peer, s.ASN, s.Type, s.State, s.LastError))
		}
	}
	if len(stuck) > 0 {
		c.OK, c.Detail = false, "bgp sessions with errors: "+strings.Join(stuck, "; ")
		return c
	}
	c.Detail = fmt.Sprintf("%d of %d sessions established, none with an error", up, len(sessions))
	return c
}

// storeProblems adds to the backend's peer problems the leases it was never
// given: those the registry holds back (lease.Refuser: a Node whose pod
// CIDRs an older Node claims) and those of other nodes that publish this
// node's public IP. Each is a problem per half, in Problems as text too.
func (d *Daemon) storeProblems(peers []plan.Problem, problems []string) ([]plan.Problem, []string) {
	var add []plan.Problem
	half := func(l lease.Lease, reason string) {
		if l.Subnet.IsValid() {
			add = append(add, plan.Problem{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, Node: l.Attrs.NodeName(), Reason: reason})
		}
		if l.IPv6Subnet.IsValid() {
			add = append(add, plan.Problem{Subnet: l.IPv6Subnet, PublicIP: l.Attrs.PublicIPv6, Node: l.Attrs.NodeName(), Reason: reason})
		}
	}
	if rf, ok := d.cfg.Registry.(lease.Refuser); ok {
		for _, f := range rf.Refused() {
			half(f.Lease, f.Reason)
		}
	}
	d.handleMu.Lock()
	for _, l := range d.impostors {
		addr := l.Attrs.PublicIP
		if !addr.IsValid() {
			addr = l.Attrs.PublicIPv6
		}
		half(l, fmt.Sprintf("node %s publishes this node's own public IP %s (a copy of its annotations, or a stale lease of this node?); not routed", l.Attrs.NodeName(), addr))
	}
	d.handleMu.Unlock()
	if len(add) == 0 {
		return peers, problems
	}
	slices.SortFunc(add, func(a, b plan.Problem) int {
		return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Node, b.Node))
	})
	peers = append(slices.Clone(peers), add...)
	problems = slices.Clone(problems)
	for _, p := range add {
		problems = append(problems, p.String())
	}
	return peers, problems
}
