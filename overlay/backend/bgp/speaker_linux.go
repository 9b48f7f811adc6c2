package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/twillnet/twill/overlay/plan"
)

// v4 is the one address family twill's speaker carries.
var v4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// neighbor is a BGP peer the speaker should have.
type neighbor struct {
	Addr     netip.Addr
	ASN      uint32
	Password string
	// Kind is "mesh" (another twill node), "reflector" (a node that
	// reflects routes to this one), "client" (a node this one reflects
	// routes to), "external" (a router of Backend.Peers).
	Kind string
	// ClusterID is this node's route-reflector cluster ID, for a client.
	ClusterID string
	// Passive waits for the peer to connect. GoBGP has no connection
	// collision detection (RFC 4271 6.8): when both ends dial at once
	// each closes the other's connection, and on slow machines two twill
	// nodes can go on doing so for a minute. Of two twill nodes only the
	// one with the lower address dials.
	Passive bool
}

// speaker is the embedded GoBGP server and what twill asked of it.
type speaker struct {
	srv  *server.BgpServer
	log  *slog.Logger
	errs *lastErrors
}

// startSpeaker starts GoBGP listening on addr:port, with graceful restart.
func startSpeaker(ctx context.Context, log *slog.Logger, asn uint32, addr netip.Addr, port, restartTime int) (*speaker, error) {
	errs := &lastErrors{m: map[string]string{}}
	srv := server.NewBgpServer(server.LoggerOption(&gobgpLogger{log: log.With("part", "gobgp"), errs: errs}))
	go srv.Serve()
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: asn, RouterId: addr.String(), ListenPort: int32(port), ListenAddresses: []string{addr.String()},
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(restartTime)},
	}})
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("start BGP speaker AS %d on %s port %d: %w", asn, addr, port, err)
	}
	return &speaker{srv: srv, log: log, errs: errs}, nil
}

// peerRequest is GoBGP's form of a neighbour, graceful restart on.
func peerRequest(n neighbor, localASN uint32, port, hold, retry, restart int) *api.Peer {
	var rr *api.RouteReflector
	if n.Kind == "client" {
		rr = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: n.ClusterID}
	}
	return &api.Peer{
		RouteReflector:  rr,
		Conf:            &api.PeerConf{NeighborAddress: n.Addr.String(), PeerAsn: n.ASN, LocalAsn: localASN, AuthPassword: n.Password, Description: n.Kind},
		Timers:          &api.Timers{Config: &api.TimersConfig{HoldTime: uint64(hold), KeepaliveInterval: uint64(max(1, hold/3)), ConnectRetry: uint64(retry)}},
		Transport:       &api.Transport{RemotePort: uint32(port), PassiveMode: n.Passive},
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(restart)},
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: v4, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}},
	}
}

// originate advertises prefix with this node as next hop.
func (s *speaker) originate(ctx context.Context, prefix netip.Prefix, nextHop netip.Addr, withdraw bool) error {
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	nh, _ := anypb.New(&api.NextHopAttribute{NextHop: nextHop.String()})
	path := &api.Path{Family: v4, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}
	if withdraw {
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: v4, Path: path}); err != nil {
			return fmt.Errorf("withdraw %s: %w", prefix, err)
		}
		return nil
	}
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("advertise %s: %w", prefix, err)
	}
	return nil
}

// learned lists the best paths of the global RIB that came from peers.
func (s *speaker) learned(ctx context.Context) ([]plan.Learned, error) {
	var out []plan.Learned
	err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: v4}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if !p.Best || p.IsWithdraw || p.NeighborIp == "" || p.NeighborIp == "<nil>" {
				continue
			}
			l, ok := learnedOf(p)
			if ok {
				out = append(out, l)
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list learned routes: %w", err)
	}
	return out, nil
}

func learnedOf(p *api.Path) (plan.Learned, bool) {
	var l plan.Learned
	from, err := netip.ParseAddr(p.NeighborIp)
	if err != nil {
		return l, false
	}
	l.From = from.Unmap()
	m, err := p.Nlri.UnmarshalNew()
	if err != nil {
		return l, false
	}
	pfx, ok := m.(*api.IPAddressPrefix)
	if !ok {
		return l, false
	}
	a, err := netip.ParseAddr(pfx.Prefix)
	if err != nil {
		return l, false
	}
	l.Dst = netip.PrefixFrom(a.Unmap(), int(pfx.PrefixLen))
	for _, pa := range p.Pattrs {
		m, err := pa.UnmarshalNew()
		if err != nil {
			continue
		}
		switch a := m.(type) {
		case *api.NextHopAttribute:
			l.NextHop, _ = netip.ParseAddr(a.NextHop)
		case *api.MpReachNLRIAttribute:
			if len(a.NextHops) > 0 {
				l.NextHop, _ = netip.ParseAddr(a.NextHops[0])
			}
		}
	}
	l.NextHop = l.NextHop.Unmap()
	return l, l.NextHop.IsValid()
}

// lastErrors keeps the last error GoBGP logged per peer (its "Key").
type lastErrors struct {
	mu sync.Mutex
	m  map[string]string
	at map[string]time.Time
}

func (e *lastErrors) set(peer, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.at == nil {
		e.at = map[string]time.Time{}
	}
	e.m[peer], e.at[peer] = msg, time.Now()
}

// get returns the peer's last error and when it was logged.
func (e *lastErrors) get(peer string) (string, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[peer], e.at[peer]
}

// gobgpLogger passes GoBGP's log to slog (its info as debug: GoBGP is
// chatty) and records each peer's last warning as its session's error.
type gobgpLogger struct {
	log  *slog.Logger
	errs *lastErrors
}

func (l *gobgpLogger) attrs(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		out = append(out, k, v)
	}
	return out
}

func (l *gobgpLogger) record(msg string, f gobgplog.Fields) {
	key, _ := f["Key"].(string)
	if key == "" {
		return
	}
	if e, ok := f["Error"]; ok && e != nil {
		msg += ": " + fmt.Sprint(e)
	} else if e, ok := f["Err"]; ok && e != nil {
		msg += ": " + fmt.Sprint(e)
	} else if e, ok := f["Data"]; ok && e != nil {
		msg += ": " + fmt.Sprint(e)
	}
	l.errs.set(key, msg)
}

func (l *gobgpLogger) Panic(msg string, f gobgplog.Fields) {
	l.log.Error(msg, l.attrs(f)...)
	panic(msg)
}
func (l *gobgpLogger) Fatal(msg string, f gobgplog.Fields) { l.log.Error(msg, l.attrs(f)...) }
func (l *gobgpLogger) Error(msg string, f gobgplog.Fields) {
	l.record(msg, f)
	l.log.Warn(msg, l.attrs(f)...)
}
func (l *gobgpLogger) Warn(msg string, f gobgplog.Fields) {
	l.record(msg, f)
	l.log.Warn(msg, l.attrs(f)...)
}
func (l *gobgpLogger) Info(msg string, f gobgplog.Fields)  { l.log.Debug(msg, l.attrs(f)...) }
func (l *gobgpLogger) Debug(msg string, f gobgplog.Fields) {}
func (l *gobgpLogger) SetLevel(gobgplog.LogLevel)          {}
func (l *gobgpLogger) GetLevel() gobgplog.LogLevel         { return gobgplog.InfoLevel }
