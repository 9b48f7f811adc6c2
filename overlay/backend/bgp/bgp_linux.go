package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/kernel"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
)

// Data is the BackendData a bgp node publishes in its lease: what its mesh
// peers need to peer with it (its address is the lease's PublicIP).
type Data struct {
	ASN uint32 `json:"ASN"`
	// RouteReflector is the node's route-reflector cluster ID (an IPv4
	// address's form) if it reflects routes; "" for a client.
	RouteReflector string `json:"RouteReflector,omitempty"`
}

// ParseData reads a bgp lease's BackendData; a lease without it (or
// without an ASN) gets the cluster's ASN.
func ParseData(raw json.RawMessage, clusterASN uint32) Data {
	var d Data
	if len(raw) > 0 && json.Unmarshal(raw, &d) != nil {
		d = Data{}
	}
	if d.ASN == 0 {
		d.ASN = clusterASN
	}
	return d
}

// Backend is the bgp backend.
type Backend struct {
	node backend.Node
	opts netconf.Backend
	// g are the options with the node's own applied: g.ASN is this node's
	// AS, g.Peers the routers it peers with; clusterASN is Backend.ASN,
	// the AS of a mesh peer that publishes none.
	g          netconf.BGP
	clusterASN uint32
	// reflector is the node's route-reflector cluster ID ("" if none).
	reflector string
	log       *slog.Logger
	// Router keeps the routes and nftables rules; it gives the backend
	// SetLease, Handle, Status, Resync, Cleanup and Close.
	*routing.Router

	kick chan struct{}

	mu         sync.Mutex
	sp         *speaker
	wantOwn    netip.Prefix // the subnet to originate
	advertised netip.Prefix // the subnet originated
	desired    map[netip.Addr]neighbor
	current    map[netip.Addr]neighbor
	// stale are the routes the kernel held when the backend started
	// (graceful restart): kept until every peer has sent its End-of-RIB
	// or staleUntil has passed.
	stale      []plan.Learned
	staleUntil time.Time
	// restarting says the kernel held twill's routes when the backend
	// started (a twilld restart, not a boot): the peers added until
	// staleUntil are told so (graceful restart's Restart State and
	// Forwarding State bits), keep this node's routes and forward on them
	// until its End-of-RIB, which the speaker sends after theirs.
	restarting bool
	// handed are the routes last handed to the Router (sorted): the same
	// again is not handed (each costs a plan and a reconcile pass).
	handed   []plan.Learned
	handedOK bool
	sessions map[netip.Addr]*session
}

// session is what the backend remembers of one peer's session.
type session struct {
	state       string
	since       time.Time
	transitions uint64
}

// NodeOptions are a node's own bgp settings (twilld --bgp-asn,
// --bgp-peer): its AS (0 for the cluster's, Backend.ASN) and routers it
// peers with besides Backend.Peers.
type NodeOptions struct {
	ASN   uint32
	Peers []netconf.BGPPeer
	// RouteReflector makes the node a route reflector with this cluster
	// ID (twilld --bgp-route-reflector): with reflectors in the cluster,
	// the others peer only with them, not with each other.
	RouteReflector string
}

// New returns the bgp backend for node. It works in twilld's own network
// namespace only (see the package doc).
func New(node backend.Node, log *slog.Logger, own NodeOptions) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("bgp: the node has no network config")
	}
	if node.NetNS != "" {
		return nil, fmt.Errorf("bgp: runs in twilld's own network namespace only, not %s (GoBGP dials from goroutines no namespace can be pinned to; start twilld inside the namespace)", node.NetNS)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := node.Network.Backend
	if opts.BGP == nil {
		return nil, errors.New("bgp: the network config has no bgp options")
	}
	g := *opts.BGP
	clusterASN := g.ASN
	if own.ASN != 0 {
		g.ASN = own.ASN
	}
	if err := checkPeers(g.Peers, own.Peers); err != nil {
		return nil, err
	}
	g.Peers = append(slices.Clone(g.Peers), own.Peers...)
	b := &Backend{node: node, opts: opts, g: g, clusterASN: clusterASN, reflector: own.RouteReflector, log: log.With("backend", netconf.TypeBGP),
		kick: make(chan struct{}, 1), desired: map[netip.Addr]neighbor{}, current: map[netip.Addr]neighbor{},
		sessions: map[netip.Addr]*session{}}
	cfg := routing.Config{Node: node, Backend: opts, OnPlan: b.onPlan, Log: log}
	if plan.BGPUsesIPIP(opts) {
		// IPIP Always or CrossSubnet: routes off the segment (or all)
		// go through twill.ipip, onlink via the peer's address.
		mtu := routing.MTU(node, opts)
		cfg.Device = plan.IPIPDevice
		cfg.EnsureDevice = func(nl *netlink.Handle, own netip.Prefix) error {
			return routing.EnsureIPIP(nl, b.log, node.PublicIP, mtu, own)
		}
	}
	r, err := routing.New(cfg)
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

// checkPeers refuses what the config's and the node's peers cannot be
// together: an IPv6 address (the speaker carries IPv4 only) or a node's
// peer (--bgp-peer) that Backend.Peers has already.
func checkPeers(global, node []netconf.BGPPeer) error {
	var errs []error
	at := map[netip.Addr]int{}
	for i, p := range global {
		at[p.Address] = i
		if !p.Address.Is4() {
			errs = append(errs, fmt.Errorf("bgp: Backend.Peers[%d].Address = %s: the speaker carries IPv4 only; peer over the router's IPv4 address", i, p.Address))
		}
	}
	for _, p := range node {
		if !p.Address.Is4() {
			errs = append(errs, fmt.Errorf("bgp: --bgp-peer=%s:%d: the speaker carries IPv4 only; peer over the router's IPv4 address", p.Address, p.ASN))
		}
		if i, dup := at[p.Address]; dup {
			errs = append(errs, fmt.Errorf("bgp: --bgp-peer=%s:%d: duplicate peer: Backend.Peers[%d] has the same address", p.Address, p.ASN, i))
		}
	}
	return errors.Join(errs...)
}

// Type is "bgp".
func (b *Backend) Type() string { return netconf.TypeBGP }

// Prepare starts the speaker on the underlay address and takes the routes
// a previous run left in the kernel as stale (graceful restart).
func (b *Backend) Prepare(ctx context.Context) (backend.Prepared, error) {
	if b.node.Iface == "" || !b.node.IfacePrefix.IsValid() || !b.node.PublicIP.Is4() {
		return backend.Prepared{}, errors.New("bgp needs the underlay interface, its prefix and an IPv4 public IP (set --iface or --public-ip to an interface address)")
	}
	if plan.BGPUsesIPIP(b.opts) {
		if err := b.EnsureDevice(); err != nil {
			return backend.Prepared{}, fmt.Errorf("bgp IPIP %s: %w", b.g.IPIP, err)
		}
	}
	stale, preserved, err := b.kernelRoutes()
	if err != nil {
		return backend.Prepared{}, err
	}
	b.mu.Lock()
	if b.sp == nil {
		sp, err := startSpeaker(ctx, b.log, b.g.ASN, b.node.PublicIP, b.opts.Port, b.g.RestartTime)
		if err != nil {
			b.mu.Unlock()
			return backend.Prepared{}, err
		}
		b.sp = sp
		b.stale, b.staleUntil = stale, time.Now().Add(time.Duration(b.g.RestartTime)*time.Second)
		b.restarting = preserved
		if len(stale) > 0 {
			b.log.Info("keeping the kernel's routes until the peers have sent theirs (graceful restart)", "routes", len(stale))
		}
	}
	b.mu.Unlock()
	if len(stale) > 0 {
		// Plan with them from the start, so the first plan removes nothing.
		if err := b.SetLearned(stale); err != nil {
			return backend.Prepared{}, err
		}
	}
	data, _ := json.Marshal(Data{ASN: b.g.ASN, RouteReflector: b.reflector})
	return backend.Prepared{BackendData: data, MTU: routing.MTU(b.node, b.opts)}, nil
}

// kernelRoutes lists twill's routes with a gateway in the kernel now;
// preserved says the kernel holds any route of twill's (the own subnet's
// blackhole too): the node still forwards as the previous run set it up.
func (b *Backend) kernelRoutes() (_ []plan.Learned, preserved bool, _ error) {
	rs, err := b.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: kernel.Protocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, false, fmt.Errorf("list twill's routes: %w", err)
	}
	var out []plan.Learned
	for _, r := range rs {
		if r.Dst == nil || r.Gw == nil || r.Type != unix.RTN_UNICAST {
			continue
		}
		ip, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw)
		out = append(out, plan.Learned{Dst: netip.PrefixFrom(ip.Unmap(), ones), NextHop: gw.Unmap(), From: gw.Unmap()})
	}
	return out, len(rs) > 0, nil
}

// onPlan learns the mesh's peers and the own subnet from each plan.
func (b *Backend) onPlan(p routing.Planned) error {
	want := map[netip.Addr]neighbor{}
	if b.g.NodeMesh {
		want = meshNeighbors(p, b.node.PublicIP, b.clusterASN, b.reflector)
	}
	for _, peer := range b.g.Peers {
		if peer.Address.Is4() && peer.Address != b.node.PublicIP {
			want[peer.Address] = neighbor{Addr: peer.Address, ASN: peer.ASN, Password: peer.Password, Kind: "external"}
		}
	}
	b.mu.Lock()
	// Every plan comes here, also the one sync's own SetLearned makes:
	// poke only for a change, or sync would run again and again.
	changed := !maps.Equal(b.desired, want) || b.wantOwn != p.Own.Subnet
	b.desired, b.wantOwn = want, p.Own.Subnet
	b.mu.Unlock()
	if changed {
		b.poke()
	}
	return nil
}

// meshNeighbors are the node's peers among the other bgp nodes of the
// leases: every one (a full mesh) while no node reflects routes; with
// reflectors, a reflector peers with every node (the clients as its
// clients) and a client only with the reflectors.
func meshNeighbors(p routing.Planned, self netip.Addr, clusterASN uint32, reflector string) map[netip.Addr]neighbor {
	type node struct {
		ip   netip.Addr
		data Data
	}
	var nodes []node
	anyReflector := reflector != ""
	for _, l := range p.Peers {
		ip := l.Attrs.PublicIP
		if l.Attrs.Backend() != netconf.TypeBGP || !ip.Is4() || ip == self || l.Subnet == p.Own.Subnet {
			continue
		}
		d := ParseData(l.Attrs.BackendData, clusterASN)
		anyReflector = anyReflector || d.RouteReflector != ""
		nodes = append(nodes, node{ip, d})
	}
	want := map[netip.Addr]neighbor{}
	for _, n := range nodes {
		kind := "mesh"
		switch {
		case !anyReflector:
		case reflector != "" && n.data.RouteReflector == "":
			kind = "client"
		case reflector == "" && n.data.RouteReflector != "":
			kind = "reflector"
		case reflector == "":
			continue // two clients: no session
		}
		want[n.ip] = neighbor{Addr: n.ip, ASN: n.data.ASN, Kind: kind, ClusterID: reflector, Passive: self.Compare(n.ip) > 0}
	}
	return want
}

func (b *Backend) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Run keeps the kernel to the plan (the Router) and the speaker to the
// leases: its peers, the subnet it originates, and the routes it learned
// handed to the Router. When ctx ends the speaker is left running without
// a word to its peers, so that they keep this node's routes (graceful
// restart) while twilld exits.
func (b *Backend) Run(ctx context.Context) error {
	b.mu.Lock()
	sp := b.sp
	b.mu.Unlock()
	if sp == nil {
		return errors.New("bgp: Run before Prepare")
	}
	errc := make(chan error, 1)
	go func() { errc <- b.Router.Run(ctx) }()
	werr := sp.srv.WatchEvent(ctx, &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true}}},
	}, func(r *api.WatchEventResponse) {
		if pe := r.GetPeer(); pe != nil && pe.Peer != nil && pe.Peer.State != nil {
			b.peerEvent(pe.Peer)
		}
		b.poke()
	})
	if werr != nil {
		return fmt.Errorf("bgp: watch the speaker: %w", werr)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-b.kick:
		case <-tick.C:
		}
		time.Sleep(20 * time.Millisecond) // let a burst of updates settle
		if err := b.sync(ctx, sp); err != nil && ctx.Err() == nil {
			b.log.Warn("bgp sync", "err", err)
		}
	}
}

// peerEvent records a session's state change.
func (b *Backend) peerEvent(p *api.Peer) {
	addr, err := netip.ParseAddr(p.State.NeighborAddress)
	if err != nil {
		return
	}
	state := sessionState(p.State.SessionState)
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sessions[addr]
	if s == nil {
		s = &session{}
		b.sessions[addr] = s
	}
	if s.state != state {
		if s.state != "" {
			s.transitions++
		}
		s.state, s.since = state, time.Now()
		b.log.Info("bgp session", "peer", addr, "state", state)
	}
}

func sessionState(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_IDLE:
		return "Idle"
	case api.PeerState_CONNECT:
		return "Connect"
	case api.PeerState_ACTIVE:
		return "Active"
	case api.PeerState_OPENSENT:
		return "OpenSent"
	case api.PeerState_OPENCONFIRM:
		return "OpenConfirm"
	case api.PeerState_ESTABLISHED:
		return "Established"
	}
	return "Unknown"
}

// sync makes the speaker originate the own subnet and have the desired
// peers, and hands what it learned to the Router.
func (b *Backend) sync(ctx context.Context, sp *speaker) error {
	b.mu.Lock()
	want, adv := b.wantOwn, b.advertised
	desired, current := maps.Clone(b.desired), maps.Clone(b.current)
	restarting := b.restarting && time.Now().Before(b.staleUntil)
	b.mu.Unlock()
	var errs []error
	if want.IsValid() && want != adv {
		if adv.IsValid() {
			errs = append(errs, sp.originate(ctx, adv, b.node.PublicIP, true))
		}
		if err := sp.originate(ctx, want, b.node.PublicIP, false); err != nil {
			errs = append(errs, err)
		} else {
			b.log.Info("advertising the node's subnet", "subnet", want)
			adv = want
		}
	}
	for addr, n := range current {
		if d, ok := desired[addr]; ok && d == n {
			continue
		}
		if err := sp.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("unpeer %s: %w", addr, err))
			continue
		}
		b.log.Info("bgp peer removed", "peer", addr, "asn", n.ASN, "type", n.Kind)
		delete(current, addr)
	}
	for addr, n := range desired {
		if _, ok := current[addr]; ok {
			continue
		}
		req := peerRequest(n, b.g.ASN, b.opts.Port, b.g.HoldTime, b.g.ConnectRetry, b.g.RestartTime)
		if restarting {
			// Restarting with the forwarding state kept: without the bits a
			// peer (BIRD) ends graceful restart as the session comes up and
			// drops this node's routes until the speaker sends them again (a
			// router's kernel route deleted and added: pings lost). The
			// speaker sends its routes and End-of-RIB once it has the peers'
			// End-of-RIB, or after half the restart time.
			req.GracefulRestart.LocalRestarting = true
			req.GracefulRestart.DeferralTime = uint32(max(1, b.g.RestartTime/2))
		}
		if err := sp.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: req}); err != nil {
			errs = append(errs, fmt.Errorf("peer with %s AS %d: %w", addr, n.ASN, err))
			continue
		}
		b.log.Info("bgp peer added", "peer", addr, "asn", n.ASN, "type", n.Kind)
		current[addr] = n
	}
	learned, err := sp.learned(ctx)
	if err != nil {
		errs = append(errs, err)
	} else {
		learned = b.withStale(ctx, sp, learned, desired)
	}
	b.mu.Lock()
	b.advertised, b.current = adv, current
	for addr := range b.sessions {
		if _, ok := current[addr]; !ok {
			delete(b.sessions, addr)
		}
	}
	b.mu.Unlock()
	if err == nil {
		slices.SortFunc(learned, func(x, y plan.Learned) int {
			if c := x.Dst.Addr().Compare(y.Dst.Addr()); c != 0 {
				return c
			}
			if c := x.Dst.Bits() - y.Dst.Bits(); c != 0 {
				return c
			}
			if c := x.NextHop.Compare(y.NextHop); c != 0 {
				return c
			}
			return x.From.Compare(y.From)
		})
		if !b.handedOK || !slices.Equal(learned, b.handed) {
			serr := b.SetLearned(learned)
			b.handed, b.handedOK = learned, serr == nil
			errs = append(errs, serr)
		}
	}
	return errors.Join(errs...)
}

// withStale adds the stale routes (graceful restart) for the subnets not
// learned yet, until every desired peer has sent its End-of-RIB or the
// restart time has passed.
func (b *Backend) withStale(ctx context.Context, sp *speaker, learned []plan.Learned, desired map[netip.Addr]neighbor) []plan.Learned {
	b.mu.Lock()
	stale, until := b.stale, b.staleUntil
	b.mu.Unlock()
	if len(stale) == 0 {
		return learned
	}
	done := time.Now().After(until)
	if !done && len(desired) > 0 {
		eor := 0
		_ = sp.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			for _, a := range p.AfiSafis {
				if a.MpGracefulRestart != nil && a.MpGracefulRestart.State != nil && a.MpGracefulRestart.State.EndOfRibReceived {
					eor++
					return
				}
			}
		})
		done = eor >= len(desired)
	}
	if done {
		b.mu.Lock()
		b.stale = nil
		b.mu.Unlock()
		b.log.Info("graceful restart over: the kernel holds what the peers advertise")
		return learned
	}
	have := map[netip.Prefix]bool{}
	for _, l := range learned {
		have[l.Dst] = true
	}
	for _, s := range stale {
		if !have[s.Dst] {
			learned = append(learned, s)
		}
	}
	return learned
}

// Session is one BGP session as Status reports it.
type Session = status.BGPSession

// Sessions lists the speaker's sessions, sorted by peer.
func (b *Backend) Sessions(ctx context.Context) []Session {
	b.mu.Lock()
	sp := b.sp
	b.mu.Unlock()
	if sp == nil {
		return nil
	}
	var out []Session
	_ = sp.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if p.State == nil || p.Conf == nil {
			return
		}
		addr, err := netip.ParseAddr(p.State.NeighborAddress)
		if err != nil {
			return
		}
		s := Session{Peer: addr, ASN: p.Conf.PeerAsn, Type: p.Conf.Description, State: sessionState(p.State.SessionState)}
		for _, a := range p.AfiSafis {
			if a.State != nil {
				s.PrefixesReceived += a.State.Received
				s.PrefixesAdvertised += a.State.Advertised
			}
		}
		b.mu.Lock()
		if rec := b.sessions[addr]; rec != nil {
			s.Since, s.Transitions = rec.since, rec.transitions
		}
		b.mu.Unlock()
		if msg, at := sp.errs.get(addr.String()); msg != "" && (s.State != "Established" || at.After(s.Since)) {
			s.LastError = msg
		}
		out = append(out, s)
	})
	slices.SortFunc(out, func(x, y Session) int { return x.Peer.Compare(y.Peer) })
	return out
}

// Status is the Router's, with the sessions, and a problem for every
// session that is down with an error.
func (b *Backend) Status() backend.Status {
	st := b.Router.Status()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st.BGP = b.Sessions(ctx)
	if st.BGP == nil {
		st.BGP = []Session{}
	}
	for _, s := range st.BGP {
		if s.Stuck() {
			st.Problems = append(st.Problems, fmt.Sprintf("bgp session with %s (AS %d, %s) is %s: %s", s.Peer, s.ASN, s.Type, s.State, s.LastError))
		}
	}
	return st
}

// Close stops the speaker (its peers see the session end) and the Router.
func (b *Backend) Close() error {
	b.mu.Lock()
	sp := b.sp
	b.sp = nil
	b.mu.Unlock()
	if sp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = sp.srv.StopBgp(ctx, &api.StopBgpRequest{})
		cancel()
		sp.srv.Stop()
	}
	return b.Router.Close()
}

var _ backend.Backend = (*Backend)(nil)
