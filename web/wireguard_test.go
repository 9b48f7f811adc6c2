package web

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

// wireGuardSnapshot is testSnapshot on the wireguard backend: the peer
// 10.244.2.0/24 handshook a minute ago, 10.244.3.0/24 never did.
func wireGuardSnapshot(handshake time.Time) status.Snapshot {
	snap := testSnapshot()
	snap.Node.BackendType, snap.Backend.Mode, snap.Backend.Device = "wireguard", "userspace (no wireguard module)", "twill-wg"
	snap.Backend.Peers[0].LastHandshake = handshake
	snap.Backend.Peers = append(snap.Backend.Peers, status.Peer{Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		PublicIP: netip.MustParseAddr("192.168.56.13"), TxBytes: 148, HandshakeProblem: "no handshake in the 3m5s since it became a peer"})
	return snap
}

func TestWireGuardTunnels(t *testing.T) {
	hs := time.Unix(1893553000, 500000000)
	src := &fakeSource{snap: wireGuardSnapshot(hs)}
	s := newTestServer(t, src)
	tl := s.tunnelList(src.Snapshot(), false)
	if len(tl.Tunnels) != 2 {
		t.Fatalf("%d tunnels, want 2", len(tl.Tunnels))
	}
	if got := tl.Tunnels[0]; got.LastHandshake != "2030-01-02T02:56:40.5Z" || got.HandshakeProblem != "" || got.State == api.StateNotHandshaking {
		t.Errorf("handshaking peer: last handshake %q, problem %q, state %s", got.LastHandshake, got.HandshakeProblem, got.State)
	}
	if got := tl.Tunnels[1]; got.LastHandshake != "" || got.State != api.StateNotHandshaking || !strings.Contains(got.StateDetail, "no handshake in the 3m5s") {
		t.Errorf("silent peer: last handshake %q, state %s (%s)", got.LastHandshake, got.State, got.StateDetail)
	}

	body := get(t, s.Handler(), "GET", "/tunnels").Body.String()
	for _, want := range []string{"<th>Last handshake</th>", `data-since="2030-01-02T02:56:40.5Z"`,
		`class="state not-handshaking"`, ">not handshaking</span>", "not handshaking: no handshake in the 3m5s since it became a peer"} {
		if !strings.Contains(body, want) {
			t.Errorf("/tunnels lacks %q", want)
		}
	}
	if api := get(t, s.Handler(), "GET", "/api/v1/tunnels").Body.String(); !strings.Contains(api, `"handshake_problem": "no handshake in the 3m5s since it became a peer"`) ||
		!strings.Contains(api, `"last_handshake": "2030-01-02T02:56:40.5Z"`) {
		t.Errorf("/api/v1/tunnels lacks the handshakes:\n%s", api)
	}

	// Off wireguard there is no such column.
	vx := newTestServer(t, &fakeSource{snap: testSnapshot()})
	if body := get(t, vx.Handler(), "GET", "/tunnels").Body.String(); strings.Contains(body, "Last handshake") {
		t.Error("a vxlan node's tunnels page has a last handshake column")
	}
}

func TestWireGuardMetrics(t *testing.T) {
	src := &fakeSource{snap: wireGuardSnapshot(time.Unix(1893553000, 500000000))}
	c := newWireGuardCollector(src)
	want := `
# HELP twill_wireguard_last_handshake_timestamp_seconds When the WireGuard session with the peer subnet was last set up; 0 before the first handshake.
# TYPE twill_wireguard_last_handshake_timestamp_seconds gauge
twill_wireguard_last_handshake_timestamp_seconds{peer="10.244.2.0/24"} 1.8935530005e+09
twill_wireguard_last_handshake_timestamp_seconds{peer="10.244.3.0/24"} 0
# HELP twill_wireguard_peer_handshaking 1 if the peer handshook in the last 3 minutes or has been a peer for less, else 0 (which fails readiness).
# TYPE twill_wireguard_peer_handshaking gauge
twill_wireguard_peer_handshaking{peer="10.244.2.0/24"} 1
twill_wireguard_peer_handshaking{peer="10.244.3.0/24"} 0
# HELP twill_wireguard_rx_bytes_total Bytes WireGuard received from the peer subnet's node (encrypted, with handshakes).
# TYPE twill_wireguard_rx_bytes_total counter
twill_wireguard_rx_bytes_total{peer="10.244.2.0/24"} 2000
twill_wireguard_rx_bytes_total{peer="10.244.3.0/24"} 0
# HELP twill_wireguard_tx_bytes_total Bytes WireGuard sent to the peer subnet's node (encrypted, with handshakes).
# TYPE twill_wireguard_tx_bytes_total counter
twill_wireguard_tx_bytes_total{peer="10.244.2.0/24"} 1000
twill_wireguard_tx_bytes_total{peer="10.244.3.0/24"} 148
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.CollectAndLint(c); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
	// Served on /metrics, and nothing of it off wireguard.
	if body := get(t, newTestServer(t, src).Handler(), "GET", "/metrics").Body.String(); !strings.Contains(body, `twill_wireguard_last_handshake_timestamp_seconds{peer="10.244.2.0/24"} 1.8935530005e+09`) {
		t.Error("/metrics lacks the last handshake")
	}
	if n := testutil.CollectAndCount(newWireGuardCollector(&fakeSource{snap: testSnapshot()})); n != 0 {
		t.Errorf("a vxlan node exports %d wireguard series", n)
	}
}
