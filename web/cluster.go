package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

// maxPeerBody bounds what is read from a peer's API.
const maxPeerBody = 8 << 20

// probeConcurrency bounds how many peers are asked at once.
const probeConcurrency = 16

// probeResult is what one peer's dashboard answered.
type probeResult struct {
	dashboard string
	ok        bool
	err       string
	at        time.Time
	node      *api.NodeInfo
	tunnels   []api.Tunnel
}

// prober asks the peers' dashboards (published in their leases) for their
// node and tunnels, for the cluster view.
type prober struct {
	client  *http.Client
	timeout time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	results map[netip.Prefix]probeResult
}

func newProber(c *http.Client, timeout time.Duration, log *slog.Logger) *prober {
	return &prober{client: c, timeout: timeout, log: log, results: map[netip.Prefix]probeResult{}}
}

func (p *prober) result(subnet netip.Prefix) (probeResult, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.results[subnet]
	return r, ok
}

func (p *prober) run(ctx context.Context, every time.Duration, snapshot func() status.Snapshot) {
	for {
		p.probeAll(ctx, snapshot())
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// probeAll asks every peer with a dashboard and forgets peers that left.
func (p *prober) probeAll(ctx context.Context, snap status.Snapshot) {
	targets := map[netip.Prefix]string{}
	for _, l := range snap.Leases {
		if leaseKey(l) == leaseKey(snap.Lease) || l.Attrs.Twill == nil {
			continue
		}
		if u, err := dashboardURL(l.Attrs.Twill.Dashboard); err == nil {
			targets[leaseKey(l)] = u
		}
	}
	sem := make(chan struct{}, probeConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := make(map[netip.Prefix]probeResult, len(targets))
	for subnet, u := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := p.probe(ctx, u)
			mu.Lock()
			results[subnet] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	for subnet, r := range results {
		if old, ok := p.results[subnet]; ok && old.ok != r.ok {
			p.log.Info("peer dashboard", "peer", subnet, "answers", r.ok, "err", r.err)
		}
	}
	p.results = results
	p.mu.Unlock()
}

// dashboardURL checks a URL a lease published: only http and https, no
// user info, and a host.
func dashboardURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("dashboard URL %q: want http(s)://HOST:PORT", s)
	}
	u.Path, u.RawQuery, u.Fragment = "", "", ""
	return u.String(), nil
}

func (p *prober) probe(ctx context.Context, base string) probeResult {
	r := probeResult{dashboard: base, at: time.Now()}
	var n api.NodeInfo
	var tl api.TunnelList
	if err := p.get(ctx, base+"/api/v1/node", &n); err != nil {
		r.err = err.Error()
		return r
	}
	if err := p.get(ctx, base+"/api/v1/tunnels", &tl); err != nil {
		r.err = err.Error()
		return r
	}
	r.ok, r.node, r.tunnels = true, &n, tl.Tunnels
	return r
}

func (p *prober) get(ctx context.Context, u string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("no answer within %v", p.timeout)
		}
		return fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxPeerBody)).Decode(v); err != nil {
		return fmt.Errorf("read %s: %w", u, err)
	}
	return nil
}

// cluster is every lease's node with what its API answered.
func (s *Server) cluster(snap status.Snapshot) api.Cluster {
	var c api.Cluster
	ll := leaseList(snap, time.Now())
	tl := s.tunnelList(snap, false)
	self := s.nodeInfo(snap)
	for _, l := range ll.Leases {
		n := api.ClusterNode{Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet, Name: l.Node, PublicIP: l.PublicIP, Dashboard: l.Dashboard, Reachability: "unknown", NotRouted: l.NotRouted}
		if l.Own {
			n.Self, n.Reachability, n.Node, n.Tunnels = true, "self", &self, tl.Tunnels
			n.Name = self.Name
		} else if subnet, err := netip.ParsePrefix(l.Subnet); err == nil {
			if r, ok := s.peers.result(subnet); ok {
				n.CheckedAt = timeString(r.at)
				if r.ok {
					n.Reachability, n.Node, n.Tunnels = "answers", r.node, r.tunnels
				} else {
					n.Reachability, n.Error = "no-answer", r.err
				}
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	return c
}
