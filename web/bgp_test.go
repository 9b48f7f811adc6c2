package web

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

func bgpSnapshot() status.Snapshot {
	s := testSnapshot()
	s.Node.BackendType = "bgp"
	s.Backend.BGP = []status.BGPSession{
		{Peer: netip.MustParseAddr("192.168.56.12"), ASN: 64512, Type: "mesh", State: "Established",
			Since: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), PrefixesReceived: 1, PrefixesAdvertised: 1, Transitions: 5},
		{Peer: netip.MustParseAddr("192.168.56.1"), ASN: 65000, Type: "external", State: "Active", Transitions: 2,
			LastError: "bad peer AS 64999"},
	}
	return s
}

// The sessions reach /api/v1/bgp, /metrics and the tunnels page.
func TestBGPSessions(t *testing.T) {
	src := &fakeSource{snap: bgpSnapshot()}
	h := newTestServer(t, src).Handler()
	w := get(t, h, http.MethodGet, "/api/v1/bgp")
	var got api.BGPSessions
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got.Sessions) != 2 {
		t.Fatalf("/api/v1/bgp = %s (%v)", w.Body, err)
	}
	if s := got.Sessions[1]; s.Peer != "192.168.56.1" || s.State != "Active" || s.LastError != "bad peer AS 64999" || s.Type != "external" {
		t.Errorf("session = %+v", s)
	}
	if s := got.Sessions[0]; s.Since != "2030-01-01T00:00:00Z" || s.PrefixesReceived != 1 || s.Transitions != 5 {
		t.Errorf("session = %+v", s)
	}
	want := `
# HELP twill_bgp_prefixes_received Prefixes the peer advertised to this node.
# TYPE twill_bgp_prefixes_received gauge
twill_bgp_prefixes_received{peer="192.168.56.1"} 0
twill_bgp_prefixes_received{peer="192.168.56.12"} 1
# HELP twill_bgp_session_transitions_total State changes of the BGP session with the peer.
# TYPE twill_bgp_session_transitions_total counter
twill_bgp_session_transitions_total{peer="192.168.56.1"} 2
twill_bgp_session_transitions_total{peer="192.168.56.12"} 5
# HELP twill_bgp_session_up 1 if the BGP session with the peer is established, else 0.
# TYPE twill_bgp_session_up gauge
twill_bgp_session_up{peer="192.168.56.1"} 0
twill_bgp_session_up{peer="192.168.56.12"} 1
`
	if err := testutil.CollectAndCompare(newBGPCollector(src), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.CollectAndLint(newBGPCollector(src)); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
	page := get(t, h, http.MethodGet, "/tunnels").Body.String()
	for _, want := range []string{`id="bgp-sessions"`, "192.168.56.1", "bad peer AS 64999", "Established", "external"} {
		if !strings.Contains(page, want) {
			t.Errorf("tunnels page has no %q", want)
		}
	}
	// Another backend: no table, an empty list.
	src.set(func(s *status.Snapshot) { s.Backend.BGP = nil })
	if page := get(t, h, http.MethodGet, "/tunnels").Body.String(); strings.Contains(page, "bgp-sessions") {
		t.Error("tunnels page has a BGP table without sessions")
	}
	if b := get(t, h, http.MethodGet, "/api/v1/bgp").Body.String(); !strings.Contains(b, `"sessions": []`) {
		t.Errorf("/api/v1/bgp without bgp = %s", b)
	}
}
