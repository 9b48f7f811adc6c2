package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

// fakeSource hands out a snapshot the test sets.
type fakeSource struct {
	mu   sync.Mutex
	snap status.Snapshot
}

func (f *fakeSource) Snapshot() status.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func (f *fakeSource) set(fn func(*status.Snapshot)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.snap)
}

var (
	ownSubnet  = netip.MustParsePrefix("10.244.1.0/24")
	peerSubnet = netip.MustParsePrefix("10.244.2.0/24")
	expiry     = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

func mkLease(subnet netip.Prefix, ip, node string) lease.Lease {
	return lease.Lease{Subnet: subnet, Expiration: expiry, Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`),
		Twill:       &lease.NodeInfo{Node: node},
	}}
}

func testSnapshot() status.Snapshot {
	own := mkLease(ownSubnet, "192.168.56.11", "n1")
	peer := mkLease(peerSubnet, "192.168.56.12", "n2")
	res := lease.Lease{Subnet: netip.MustParsePrefix("10.244.9.0/24"), Reservation: true,
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.99")}}
	route := plan.Route{Dst: peerSubnet, Gateway: netip.MustParseAddr("10.244.2.0"), Device: "twill.1", OnLink: true}
	stale := plan.Route{Dst: netip.MustParsePrefix("10.244.7.0/24"), Gateway: netip.MustParseAddr("10.244.7.0"), Device: "twill.1", OnLink: true}
	return status.Snapshot{
		Node:  status.Node{Name: "n1", PublicIP: netip.MustParseAddr("192.168.56.11"), Iface: "eth0", Network: netip.MustParsePrefix("10.244.0.0/16"), BackendType: "vxlan", MTU: 1450},
		Lease: own, Leases: []lease.Lease{own, peer, res},
		Backend: status.Backend{
			Peers: []status.Peer{{Subnet: peerSubnet, PublicIP: netip.MustParseAddr("192.168.56.12"),
				TxPackets: 10, TxBytes: 1000, RxPackets: 20, RxBytes: 2000, Drops: map[string]uint64{"no-route": 3}}},
			Drops:  map[string]uint64{"unknown-peer": 4},
			InSync: false, Device: "twill.1", DeviceUp: true,
			Kernel: &status.Kernel{
				Desired: status.KernelTables{Routes: []plan.Route{route}},
				Actual:  status.KernelTables{Routes: []plan.Route{route, stale}},
			},
		},
		Checks:    []status.Check{{Name: "lease-held", OK: true}, {Name: "routes-in-sync", OK: true}},
		Ready:     true,
		StartedAt: time.Now().Add(-time.Hour),
	}
}

func newTestServer(t testing.TB, src Source, opts ...func(*Options)) *Server {
	t.Helper()
	o := Options{Source: src, Version: "v-test"}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t testing.TB, h http.Handler, method, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestEndpoints(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	s := newTestServer(t, src)
	s.Sample()
	h := s.Handler()
	for _, tc := range []struct {
		path, ctype string
		code        int
		want        []string
	}{
		{"/", "text/html", 200, []string{"This node", "192.168.56.11", "10.244.1.0/24", "vxlan", "1450", "lease-held", `class="topo"`}},
		{"/leases", "text/html", 200, []string{"10.244.2.0/24", `class="own"`, "reserved", "n2", `data-expires="2030-01-02T03:04:05Z"`}},
		{"/routes", "text/html", 200, []string{"out of sync", "r-extra", "10.244.7.0/24 via 10.244.7.0 dev twill.1 onlink", "r-ok"}},
		{"/tunnels", "text/html", 200, []string{`data-peer="10.244.2.0/24"`, "no-route", "unknown-peer", "192.168.56.12"}},
		{"/api/v1/node", "application/json", 200, []string{`"name": "n1"`, `"subnet": "10.244.1.0/24"`, `"mtu": 1450`, `"lease_expires_at": "2030-01-02T03:04:05Z"`, `"version": "v-test"`}},
		{"/api/v1/leases", "application/json", 200, []string{`"subnet": "10.244.9.0/24"`, `"reservation": true`, `"own": true`, `"VtepMAC"`}},
		{"/api/v1/routes", "application/json", 200, []string{`"status": "extra"`, `"status": "ok"`, `"in_sync": false`}},
		{"/api/v1/tunnels", "application/json", 200, []string{`"peer": "10.244.2.0/24"`, `"tx_packets": 10`, `"rx_bytes": 2000`, `"no-route": 3`, `"unknown-peer": 4`}},
		{"/api/v1/cluster", "application/json", 200, []string{`"reachability": "self"`, `"reachability": "unknown"`}},
		{"/api/v1/health", "application/json", 200, []string{`"ready": true`, `"name": "lease-held"`}},
		{"/metrics", "text/plain", 200, []string{`twill_tunnel_tx_bytes_total{peer="10.244.2.0/24"} 1000`}},
		{"/livez", "text/plain", 200, []string{"ok"}},
		{"/readyz", "text/plain", 200, []string{"ok"}},
		{"/readyz?verbose", "text/plain", 200, []string{"[+]lease-held ok", "[+]running ok"}},
		{"/static/app.js", "text/javascript", 200, []string{"EventSource"}},
		{"/static/app.css", "text/css", 200, []string{".topo"}},
		{"/nope", "text/plain", 404, nil},
		{"/events?page=nope", "text/plain", 400, nil},
	} {
		w := get(t, h, "GET", tc.path)
		body := w.Body.String()
		if w.Code != tc.code {
			t.Errorf("GET %s: %d, want %d\n%s", tc.path, w.Code, tc.code, body)
			continue
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, ct, tc.ctype)
		}
		for _, want := range tc.want {
			if !strings.Contains(body, want) {
				t.Errorf("GET %s: body lacks %q", tc.path, want)
			}
		}
		csp := w.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", tc.path, csp)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
			if got := w.Header().Get(k); got != v {
				t.Errorf("GET %s: %s %q, want %q", tc.path, k, got, v)
			}
		}
		if tc.ctype == "text/html" && strings.Contains(body, "<script>") {
			t.Errorf("GET %s: inline script in the page", tc.path)
		}
	}
	// The API decodes into its own types.
	var n api.NodeInfo
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/node").Body.Bytes(), &n); err != nil || n.Name != "n1" || !n.Ready || n.Peers != 1 {
		t.Errorf("node: %+v, %v", n, err)
	}
	var r api.Routes
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/routes").Body.Bytes(), &r); err != nil || len(r.Routes) != 2 || r.Routes[0].Status != "ok" || r.Routes[1].Status != "extra" {
		t.Errorf("routes: %+v, %v", r, err)
	}
}

// TestBackendMode: the backend's mode (udp's data path) is on the overview
// and in /api/v1/node, and absent when the backend has none.
func TestBackendMode(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	h := newTestServer(t, src).Handler()
	if body := get(t, h, "GET", "/api/v1/node").Body.String(); strings.Contains(body, "backend_mode") {
		t.Errorf("vxlan node reports a backend mode: %s", body)
	}
	src.set(func(s *status.Snapshot) {
		s.Node.BackendType = "udp"
		s.Backend.Mode = "userspace (kernel path: kernel 6.1 has no tcx (needs 6.6))"
	})
	if body := get(t, h, "GET", "/api/v1/node").Body.String(); !strings.Contains(body, `"backend_mode": "userspace (kernel path: kernel 6.1 has no tcx (needs 6.6))"`) {
		t.Errorf("/api/v1/node lacks the mode: %s", body)
	}
	if body := get(t, h, "GET", "/").Body.String(); !strings.Contains(body, `id="backend-mode">userspace (kernel path: kernel 6.1 has no tcx (needs 6.6))<`) {
		t.Errorf("the overview lacks the mode")
	}
}

func TestReadOnly(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	h := newTestServer(t, src).Handler()
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		for _, p := range []string{"/", "/leases", "/api/v1/node", "/api/v1/leases", "/metrics", "/static/app.js", "/static/"} {
			if w := get(t, h, m, p); w.Code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", m, p, w.Code)
			}
		}
	}
	if w := get(t, h, "POST", "/api/v1/resync"); w.Code != http.StatusForbidden {
		t.Errorf("resync without --api-token: %d, want 403", w.Code)
	}
	// The static folder serves its files, and lists nothing.
	for _, p := range []string{"/static/", "/static", "/static/nope.js", "/static/app.js/", "/static/../server.go"} {
		if w := get(t, h, "GET", p); w.Code != http.StatusNotFound || strings.Contains(w.Body.String(), "app.js") {
			t.Errorf("GET %s: %d %q, want 404 and no listing", p, w.Code, w.Body.String())
		}
	}
}

func TestResyncNeedsToken(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	calls := 0
	h := newTestServer(t, src, func(o *Options) { o.APIToken = "s3cret"; o.Resync = func() { calls++ } }).Handler()
	for _, tc := range []struct {
		auth []string
		code int
	}{
		{nil, 401},
		{[]string{"Authorization", "Bearer wrong"}, 401},
		{[]string{"Authorization", "Bearer s3cre"}, 401},
		{[]string{"Authorization", "s3cret"}, 401},
		{[]string{"Authorization", "Bearer s3cret"}, 202},
	} {
		if w := get(t, h, "POST", "/api/v1/resync", tc.auth...); w.Code != tc.code {
			t.Errorf("resync with %v: %d, want %d", tc.auth, w.Code, tc.code)
		}
	}
	if calls != 1 {
		t.Errorf("resync called %d times, want 1", calls)
	}
	if w := get(t, h, "GET", "/api/v1/resync", "Authorization", "Bearer s3cret"); w.Code != 405 {
		t.Errorf("GET resync: %d, want 405", w.Code)
	}
}

func TestNotReady(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	src.set(func(s *status.Snapshot) {
		s.Checks = append(s.Checks, status.Check{Name: "etcd-reachable", OK: false, Detail: "the last etcd request failed"})
	})
	h := newTestServer(t, src).Handler()
	if w := get(t, h, "GET", "/readyz"); w.Code != 503 || w.Body.String() != "not ready\n" {
		t.Errorf("readyz: %d %q", w.Code, w.Body.String())
	}
	w := get(t, h, "GET", "/readyz?verbose")
	if w.Code != 503 || !strings.Contains(w.Body.String(), "[-]etcd-reachable failed: the last etcd request failed") || !strings.Contains(w.Body.String(), "[+]lease-held ok") {
		t.Errorf("readyz?verbose: %d\n%s", w.Code, w.Body.String())
	}
	if w := get(t, h, "GET", "/api/v1/health"); w.Code != 503 || !strings.Contains(w.Body.String(), `"ready": false`) {
		t.Errorf("health: %d %s", w.Code, w.Body.String())
	}
	if w := get(t, h, "GET", "/livez"); w.Code != 200 {
		t.Errorf("livez: %d", w.Code)
	}
	src.set(func(s *status.Snapshot) { s.Checks = s.Checks[:2]; s.Ready = false })
	if w := get(t, h, "GET", "/readyz?verbose"); w.Code != 503 || !strings.Contains(w.Body.String(), "[-]running failed") {
		t.Errorf("readyz while starting: %d\n%s", w.Code, w.Body.String())
	}
}

// TestHostileLease: whatever a lease says shows as text.
func TestHostileLease(t *testing.T) {
	const evil = `<script>alert(1)</script>`
	src := &fakeSource{snap: testSnapshot()}
	hostile := netip.MustParsePrefix("10.244.66.0/24")
	src.set(func(s *status.Snapshot) {
		s.Node.Name = evil
		s.Leases = append(s.Leases, lease.Lease{Subnet: hostile, Expiration: expiry, Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.56.66"), BackendType: `vxlan"><img src=x onerror=alert(2)>`,
			BackendData: json.RawMessage(`{"VtepMAC":"</td><script>alert(3)</script>","x":"' onmouseover='alert(4)"}`),
			Twill:       &lease.NodeInfo{Node: evil, Dashboard: "javascript:alert(5)"},
		}})
		s.Backend.Peers = append(s.Backend.Peers, status.Peer{Subnet: hostile, Drops: map[string]uint64{evil: 1}})
		s.Backend.Problems = []string{evil}
		// A refused lease whose reason quotes what the lease said.
		s.Backend.PeerProblems = []plan.Problem{{Subnet: hostile, PublicIP: netip.MustParseAddr("192.168.56.66"), Reason: "backend type \"" + evil + "\"; skipped"}}
		s.Checks = append(s.Checks, status.Check{Name: evil, OK: true, Detail: evil})
	})
	s := newTestServer(t, src)
	s.Sample()
	// A lease's dashboard is fetched only if it is http(s).
	s.peers.probeAll(context.Background(), src.Snapshot())
	if _, probed := s.peers.result(hostile); probed {
		t.Errorf("a javascript: dashboard URL was probed")
	}
	h := s.Handler()
	bad := []string{"<script>alert", "<img", "' onmouseover", `href="javascript:`}
	for _, p := range []string{"/", "/leases", "/routes", "/tunnels"} {
		body := get(t, h, "GET", p).Body.String()
		for _, b := range bad {
			if strings.Contains(body, b) {
				i := strings.Index(body, b)
				t.Errorf("GET %s: unescaped %q: …%s…", p, b, body[max(0, i-80):min(len(body), i+80)])
			}
		}
		if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("GET %s: the hostile node name is not shown escaped", p)
		}
		if p != "/routes" && p != "/tunnels" && !strings.Contains(body, "backend type &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;; skipped") {
			t.Errorf("GET %s: the hostile reason for not routing is not shown escaped", p)
		}
		// The live regions are rendered by the same templates.
		regions, err := s.renderRegions(strings.TrimPrefix(p, "/")+map[bool]string{true: "overview"}[p == "/"], src.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		for name, html := range regions {
			for _, b := range bad {
				if strings.Contains(html, b) {
					t.Errorf("region %s of %s: unescaped %q", name, p, b)
				}
			}
		}
	}
	// JSON escapes < and > too.
	if body := get(t, h, "GET", "/api/v1/leases").Body.String(); strings.Contains(body, "<script>") {
		t.Errorf("leases JSON carries a raw <script>")
	}
}

func TestRatesAndHistory(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	s := newTestServer(t, src, func(o *Options) { o.HistoryLen = 3 })
	t0 := time.Now()
	add := func(at time.Duration, tx, rx uint64) {
		src.set(func(sn *status.Snapshot) {
			sn.Backend.Peers[0].TxBytes, sn.Backend.Peers[0].RxBytes = tx, rx
			sn.Backend.Peers[0].TxPackets, sn.Backend.Peers[0].RxPackets = tx/100, rx/100
		})
		s.hist.add(t0.Add(at), src.Snapshot().Backend.Peers)
	}
	add(0, 1000, 2000)
	add(2*time.Second, 5000, 2000)
	tl := s.tunnelList(src.Snapshot(), true)
	tun := tl.Tunnels[0]
	if tun.TxBytesPerSecond != 2000 || tun.RxBytesPerSecond != 0 || tun.TxPacketsPerSecond != 20 {
		t.Errorf("rates: tx %v rx %v tx pps %v, want 2000 0 20", tun.TxBytesPerSecond, tun.RxBytesPerSecond, tun.TxPacketsPerSecond)
	}
	add(4*time.Second, 9000, 6000)
	add(6*time.Second, 1000, 6000) // the peer's counters went back (restart): no negative rate
	tun = s.tunnelList(src.Snapshot(), true).Tunnels[0]
	if len(tun.History) != 3 {
		t.Errorf("history of %d points, want 3 (the samples kept)", len(tun.History))
	}
	if tun.TxBytesPerSecond != 0 {
		t.Errorf("rate after a counter reset: %v, want 0", tun.TxBytesPerSecond)
	}
	// A peer that left is forgotten.
	src.set(func(sn *status.Snapshot) { sn.Backend.Peers = nil })
	s.hist.add(t0.Add(8*time.Second), nil)
	if _, ok := s.hist.get(peerSubnet, false); ok {
		t.Errorf("history kept a departed peer")
	}
}

func TestTunnelState(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	s := newTestServer(t, src)
	t0 := time.Now()
	step := func(i int, tx, rx uint64) string {
		src.set(func(sn *status.Snapshot) { sn.Backend.Peers[0].TxPackets, sn.Backend.Peers[0].RxPackets = tx, rx })
		s.hist.add(t0.Add(time.Duration(i)*2*time.Second), src.Snapshot().Backend.Peers)
		return s.tunnelList(src.Snapshot(), false).Tunnels[0].State
	}
	if st := step(0, 10, 20); st != api.StateIdle {
		t.Errorf("first sample: %s, want idle", st)
	}
	if st := step(1, 11, 21); st != api.StateUp {
		t.Errorf("traffic both ways: %s, want up", st)
	}
	var st string
	for i := 2; i < 8; i++ {
		st = step(i, uint64(11+i), 21)
	}
	if st != api.StateUnreachable {
		t.Errorf("12 s of sending without answers: %s, want unreachable", st)
	}
	for i := 8; i < 15; i++ {
		st = step(i, 17, 21)
	}
	if st != api.StateIdle {
		t.Errorf("quiet: %s, want idle", st)
	}
}

func TestMetrics(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	c := newCollector(src, "v-test")
	want := `
# HELP twill_tunnel_dropped_packets_total Packets dropped, by peer subnet (empty for drops that belong to no peer) and reason.
# TYPE twill_tunnel_dropped_packets_total counter
twill_tunnel_dropped_packets_total{peer="",reason="unknown-peer"} 4
twill_tunnel_dropped_packets_total{peer="10.244.2.0/24",reason="no-route"} 3
# HELP twill_tunnel_rx_bytes_total Bytes received through the tunnel from a peer subnet.
# TYPE twill_tunnel_rx_bytes_total counter
twill_tunnel_rx_bytes_total{peer="10.244.2.0/24"} 2000
# HELP twill_tunnel_rx_packets_total Packets received through the tunnel from a peer subnet.
# TYPE twill_tunnel_rx_packets_total counter
twill_tunnel_rx_packets_total{peer="10.244.2.0/24"} 20
# HELP twill_tunnel_tx_bytes_total Bytes sent through the tunnel to a peer subnet.
# TYPE twill_tunnel_tx_bytes_total counter
twill_tunnel_tx_bytes_total{peer="10.244.2.0/24"} 1000
# HELP twill_tunnel_tx_packets_total Packets sent through the tunnel to a peer subnet.
# TYPE twill_tunnel_tx_packets_total counter
twill_tunnel_tx_packets_total{peer="10.244.2.0/24"} 10
# HELP twill_lease_expiry_timestamp_seconds When this node's subnet lease expires unless renewed (absent for a reservation).
# TYPE twill_lease_expiry_timestamp_seconds gauge
twill_lease_expiry_timestamp_seconds{subnet="10.244.1.0/24"} 1.893553445e+09
# HELP twill_peers Number of peers the backend routes to.
# TYPE twill_peers gauge
twill_peers 1
`
	names := []string{"twill_tunnel_tx_bytes_total", "twill_tunnel_rx_bytes_total", "twill_tunnel_tx_packets_total", "twill_tunnel_rx_packets_total",
		"twill_tunnel_dropped_packets_total", "twill_lease_expiry_timestamp_seconds", "twill_peers"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "twill_build_info"); n != 1 {
		t.Errorf("twill_build_info: %d series, want 1", n)
	}
	// The peer leaves: its series vanish.
	src.set(func(s *status.Snapshot) { s.Backend.Peers = nil; s.Backend.Drops = nil })
	gone := `
# HELP twill_peers Number of peers the backend routes to.
# TYPE twill_peers gauge
twill_peers 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(gone), append(names[:5:5], "twill_peers")...); err != nil {
		t.Error(err)
	}
	// The registry the server uses lints clean.
	if probs, err := testutil.CollectAndLint(newCollector(&fakeSource{snap: testSnapshot()}, "v")); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

// TestEvents reads the live stream: an update on connect and one after
// each sample, with the page's regions.
func TestEvents(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	s := newTestServer(t, src)
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/events?page=tunnels", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	next := func() map[string]string {
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("read stream: %v", err)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var ev struct{ Regions map[string]string }
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					t.Fatal(err)
				}
				return ev.Regions
			}
		}
	}
	first := next()
	if !strings.Contains(first["tunnels"], `data-value="10"`) || !strings.Contains(first["status"], "ready") {
		t.Errorf("first update: %v", first)
	}
	src.set(func(sn *status.Snapshot) { sn.Backend.Peers[0].TxPackets = 4242 })
	s.Sample()
	if second := next(); !strings.Contains(second["tunnels"], `data-value="4242"`) {
		t.Errorf("update after a sample lacks the new counter")
	}
}

// TestClusterView: a peer whose dashboard answers shows its node and
// tunnels; one that does not is marked.
func TestClusterView(t *testing.T) {
	peerSrc := &fakeSource{snap: testSnapshot()}
	peerSrc.set(func(s *status.Snapshot) { s.Node.Name = "n2"; s.Lease = mkLease(peerSubnet, "192.168.56.12", "n2") })
	peer := httptest.NewServer(newTestServer(t, peerSrc).Handler())
	defer peer.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	deadSubnet := netip.MustParsePrefix("10.244.3.0/24")

	src := &fakeSource{snap: testSnapshot()}
	src.set(func(s *status.Snapshot) {
		s.Leases[1].Attrs.Twill.Dashboard = peer.URL
		d := mkLease(deadSubnet, "192.168.56.13", "n3")
		d.Attrs.Twill.Dashboard = dead
		s.Leases = append(s.Leases, d)
		s.Backend.Peers = append(s.Backend.Peers, status.Peer{Subnet: deadSubnet, PublicIP: netip.MustParseAddr("192.168.56.13")})
	})
	s := newTestServer(t, src, func(o *Options) { o.PeerTimeout = time.Second })
	s.peers.probeAll(t.Context(), src.Snapshot())
	c := s.cluster(src.Snapshot())
	got := map[string]api.ClusterNode{}
	for _, n := range c.Nodes {
		got[n.Subnet] = n
	}
	if n := got[peerSubnet.String()]; n.Reachability != "answers" || n.Node == nil || n.Node.Name != "n2" {
		t.Errorf("answering peer: %+v", n)
	}
	if n := got[deadSubnet.String()]; n.Reachability != "no-answer" || n.Error == "" {
		t.Errorf("dead peer: %+v", n)
	}
	if n := got["10.244.9.0/24"]; n.Reachability != "unknown" {
		t.Errorf("reservation: %+v", n)
	}
	tl := s.tunnelList(src.Snapshot(), false)
	for _, tun := range tl.Tunnels {
		if tun.Peer == deadSubnet.String() && tun.State != api.StateUnreachable {
			t.Errorf("tunnel to the dead peer: %s, want unreachable", tun.State)
		}
	}
	body := get(t, s.Handler(), "GET", "/").Body.String()
	for _, want := range []string{`class="node down"`, "no answer", `class="link unreachable"`} {
		if !strings.Contains(body, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
}

// TestPeerNotRouted: a peer's lease the backend skips shows on the
// overview (subnet, node, public IP, reason), is marked in the cluster
// table, the topology and the leases table, and is in the API.
func TestPeerNotRouted(t *testing.T) {
	src := &fakeSource{snap: testSnapshot()}
	skipped := netip.MustParsePrefix("10.244.5.0/24")
	const reason = `backend type "host-gw", this node runs "vxlan"; skipped`
	src.set(func(s *status.Snapshot) {
		l := mkLease(skipped, "192.168.56.15", "n5")
		l.Attrs.BackendType, l.Attrs.BackendData = "host-gw", nil
		s.Leases = append(s.Leases, l)
		p := plan.Problem{Subnet: skipped, PublicIP: l.Attrs.PublicIP, Reason: reason}
		s.Backend.PeerProblems = []plan.Problem{p}
		s.Backend.Problems = []string{p.String(), "read counters: nft said no"}
		s.Checks = append(s.Checks, status.Check{Name: "peers-routable", OK: false, Detail: p.String()})
	})
	h := newTestServer(t, src).Handler()
	esc := strings.ReplaceAll(reason, `"`, "&#34;")
	body := get(t, h, "GET", "/").Body.String()
	_, unrouted, found := strings.Cut(body, `id="unrouted"`)
	unrouted, _, _ = strings.Cut(unrouted, "</section>")
	if !found {
		t.Errorf("overview has no list of peers not routed")
	}
	for _, want := range []string{`data-subnet="10.244.5.0/24"`, "n5", "192.168.56.15", esc, "1 lease skipped"} {
		if !strings.Contains(unrouted, want) {
			t.Errorf("overview's list of peers not routed lacks %q:\n%s", want, unrouted)
		}
	}
	if strings.Contains(body, "<li>problem 10.244.5.0/24") {
		t.Errorf("the skipped peer is listed twice on the overview (also among the other problems)")
	}
	if !strings.Contains(body, "<li>read counters: nft said no</li>") {
		t.Errorf("the other problems are no longer listed")
	}
	_, row, found := strings.Cut(body, `<tr class="unrouted" data-subnet="10.244.5.0/24">`)
	row, _, _ = strings.Cut(row, "</tr>")
	if !found || !strings.Contains(row, "not routed by this node") || !strings.Contains(row, esc) {
		t.Errorf("cluster row of the skipped peer: %s", row)
	}
	if !strings.Contains(body, `<g class="node unrouted" data-subnet="10.244.5.0/24">`) {
		t.Errorf("topology does not mark the skipped peer")
	}
	if strings.Contains(body, `class="unrouted" data-subnet="10.244.2.0/24"`) {
		t.Errorf("a routed peer is marked as not routed")
	}
	leases := get(t, h, "GET", "/leases").Body.String()
	if !strings.Contains(leases, `<tr class=" unrouted" data-subnet="10.244.5.0/24">`) || !strings.Contains(leases, esc) {
		t.Errorf("leases page does not mark the skipped lease")
	}
	var n api.NodeInfo
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/node").Body.Bytes(), &n); err != nil {
		t.Fatal(err)
	}
	if want := (api.PeerProblem{Subnet: "10.244.5.0/24", Node: "n5", PublicIP: "192.168.56.15", Reason: reason}); len(n.PeerProblems) != 1 || n.PeerProblems[0] != want || n.Ready {
		t.Errorf("node API: peer problems %+v ready %v, want [%+v] and not ready", n.PeerProblems, n.Ready, want)
	}
	var c api.Cluster
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/cluster").Body.Bytes(), &c); err != nil {
		t.Fatal(err)
	}
	for _, cn := range c.Nodes {
		if want := map[bool]string{true: reason}[cn.Subnet == skipped.String()]; cn.NotRouted != want {
			t.Errorf("cluster API: %s not_routed %q, want %q", cn.Subnet, cn.NotRouted, want)
		}
	}
	if w := get(t, h, "GET", "/readyz?verbose"); w.Code != 503 || !strings.Contains(w.Body.String(), "[-]peers-routable failed: problem 10.244.5.0/24") {
		t.Errorf("readyz: %d\n%s", w.Code, w.Body.String())
	}
	// Without problems the API says so with an empty list, and nothing is marked.
	src.set(func(s *status.Snapshot) { s.Backend.PeerProblems, s.Backend.Problems = nil, nil })
	if body := get(t, h, "GET", "/api/v1/node").Body.String(); !strings.Contains(body, `"peer_problems": []`) {
		t.Errorf("node API without peer problems:\n%s", body)
	}
	if body := get(t, h, "GET", "/").Body.String(); strings.Contains(body, `id="unrouted"`) || strings.Contains(body, "unrouted") {
		t.Errorf("overview marks a peer not routed when none is")
	}
}

// manyLeases is a snapshot of a 1000-node cluster.
func manyLeases(n int) status.Snapshot {
	snap := testSnapshot()
	snap.Leases = nil
	snap.Backend.Peers = nil
	for i := range n {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
		l := mkLease(p, fmt.Sprintf("192.168.%d.%d", i/250, i%250+1), fmt.Sprintf("node-%04d", i))
		snap.Leases = append(snap.Leases, l)
		snap.Backend.Peers = append(snap.Backend.Peers, status.Peer{Subnet: p, TxPackets: uint64(i), RxBytes: uint64(i * 1000)})
	}
	snap.Lease = snap.Leases[0]
	return snap
}

func benchmarkGet(b *testing.B, path string) {
	src := &fakeSource{snap: manyLeases(1000)}
	s := newTestServer(b, src)
	s.Sample()
	s.Sample()
	h := s.Handler()
	b.ResetTimer()
	var size int
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != 200 {
			b.Fatalf("%s: %d", path, w.Code)
		}
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size), "bytes/response")
}

func BenchmarkAPILeases1000(b *testing.B)  { benchmarkGet(b, "/api/v1/leases") }
func BenchmarkAPITunnels1000(b *testing.B) { benchmarkGet(b, "/api/v1/tunnels?history") }
func BenchmarkPageLeases1000(b *testing.B) { benchmarkGet(b, "/leases") }
func BenchmarkPageTunnels1000(b *testing.B) {
	benchmarkGet(b, "/tunnels")
}
func BenchmarkPageOverview1000(b *testing.B) { benchmarkGet(b, "/") }
func BenchmarkMetrics1000(b *testing.B)      { benchmarkGet(b, "/metrics") }

// TestDualStack: the dashboard and the API show both families: the node's
// IPv6 subnet and address, each lease's IPv6 half (and an IPv6-only lease
// by its IPv6 subnet), IPv6 routes, and a peer's IPv6 tunnel named after
// its node and joined to its IPv4 link in the topology.
func TestDualStack(t *testing.T) {
	snap := testSnapshot()
	own6, peer6 := netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("fd00:10:244:2::/64")
	only6 := lease.Lease{IPv6Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"), Expiration: expiry, Attrs: lease.Attrs{
		PublicIPv6: netip.MustParseAddr("fd00:56::13"), BackendType: "vxlan", BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:03"}`),
		Twill: &lease.NodeInfo{Node: "n3"}}}
	snap.Lease.IPv6Subnet, snap.Lease.Attrs.PublicIPv6 = own6, netip.MustParseAddr("fd00:56::11")
	snap.Leases[0] = snap.Lease
	snap.Leases[1].IPv6Subnet, snap.Leases[1].Attrs.PublicIPv6 = peer6, netip.MustParseAddr("fd00:56::12")
	snap.Leases[1].Attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}`)
	snap.Leases = append(snap.Leases, only6)
	snap.Node.PublicIPv6, snap.Node.IPv6Network = netip.MustParseAddr("fd00:56::11"), netip.MustParsePrefix("fd00:10:244::/56")
	snap.Backend.Peers = append(snap.Backend.Peers, status.Peer{Subnet: peer6, PublicIP: netip.MustParseAddr("fd00:56::12"), TxPackets: 5, TxBytes: 520})
	route6 := plan.Route{Dst: peer6, Gateway: peer6.Addr(), Device: "twill-v6.1", OnLink: true}
	snap.Backend.Kernel.Desired.Routes = append(snap.Backend.Kernel.Desired.Routes, route6)
	snap.Backend.Kernel.Actual.Routes = append(snap.Backend.Kernel.Actual.Routes, route6)
	src := &fakeSource{snap: snap}
	s := newTestServer(t, src)
	s.Sample()
	h := s.Handler()
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/", []string{"fd00:10:244:1::/64", "fd00:10:244::/56", "fd00:56::11"}},
		{"/leases", []string{"fd00:10:244:2::/64", "fd00:56::12", "aa:bb:cc:dd:ee:02", `data-subnet="fd00:10:244:3::/64"`}},
		{"/routes", []string{"fd00:10:244:2::/64 via fd00:10:244:2:: dev twill-v6.1 onlink"}},
		{"/tunnels", []string{`data-peer="fd00:10:244:2::/64"`, "fd00:56::12"}},
		{"/api/v1/node", []string{`"ipv6_subnet": "fd00:10:244:1::/64"`, `"public_ipv6": "fd00:56::11"`, `"ipv6_network": "fd00:10:244::/56"`}},
		{"/api/v1/leases", []string{`"ipv6_subnet": "fd00:10:244:2::/64"`, `"public_ipv6": "fd00:56::12"`, `"backend_v6_data"`, `"subnet": "fd00:10:244:3::/64"`}},
		{"/api/v1/cluster", []string{`"ipv6_subnet": "fd00:10:244:2::/64"`}},
	} {
		if body := get(t, h, "GET", tc.path).Body.String(); !containsAll(body, tc.want) {
			t.Errorf("GET %s lacks one of %q:\n%s", tc.path, tc.want, body)
		}
	}
	var tl api.TunnelList
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/tunnels").Body.Bytes(), &tl); err != nil {
		t.Fatal(err)
	}
	if len(tl.Tunnels) != 2 || tl.Tunnels[1].Peer != peer6.String() || tl.Tunnels[1].Node != "n2" {
		t.Errorf("tunnels %+v, want the IPv6 one of n2 after the IPv4 one", tl.Tunnels)
	}
	// One link between n1 and n2 in the topology, whatever the family.
	if got := strings.Count(get(t, h, "GET", "/").Body.String(), `<g class="link`); got != 1 {
		t.Errorf("topology has %d links, want 1 (both families' tunnels to n2 on one)", got)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
