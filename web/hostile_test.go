package web

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
)

// TestControlCharactersInLeases: a lease read from a Node's annotations
// carries control characters and markup in its backend type, backend
// data and node name (Kubernetes allows any string there). Every page
// shows them as text, with no raw control character in the HTML, and the
// JSON API stays valid JSON that reads back the same strings. Two leases
// claiming one subnet (two Nodes with one podCIDR) are shown each under its
// own node.
func TestControlCharactersInLeases(t *testing.T) {
	const evil = "node\x00\x1b[31m\x7f\u2028<b>x</b>\u0085"
	evilType := "vxlan\x1b]0;owned\x07\r\n<i>"
	src := &fakeSource{snap: testSnapshot()}
	hostile := netip.MustParsePrefix("10.244.67.0/24")
	src.set(func(s *status.Snapshot) {
		s.Leases = append(s.Leases, lease.Lease{Subnet: hostile, Expiration: expiry, Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.56.67"), BackendType: evilType,
			BackendData: json.RawMessage(`{"VtepMAC":"\u0000\u001b[2J","x":"\u2028"}`),
			Twill:       &lease.NodeInfo{Node: evil},
		}})
		s.Backend.PeerProblems = []plan.Problem{
			{Subnet: hostile, PublicIP: netip.MustParseAddr("192.168.56.67"), Node: evil, Reason: "backend type \"" + evilType + "\"; skipped"},
			{Subnet: hostile, PublicIP: netip.MustParseAddr("192.168.56.68"), Node: "dup-new", Reason: "node \"dup-new\" spec.podCIDRs 10.244.67.0/24 are also node \"" + evil + "\"'s"},
		}
	})
	h := newTestServer(t, src).Handler()
	for _, p := range []string{"/", "/leases", "/routes", "/tunnels"} {
		body := get(t, h, "GET", p).Body.String()
		for _, c := range body {
			if (c < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7f || (c >= 0x80 && c < 0xa0) {
				i := strings.IndexRune(body, c)
				t.Errorf("GET %s: raw control character %U: …%q…", p, c, body[max(0, i-60):min(len(body), i+20)])
				break
			}
		}
		for _, b := range []string{"<b>x", "<i>"} {
			if strings.Contains(body, b) {
				t.Errorf("GET %s: unescaped %q", p, b)
			}
		}
	}
	for _, p := range []string{"/api/v1/leases", "/api/v1/node"} {
		body := get(t, h, "GET", p).Body.Bytes()
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Errorf("GET %s: not JSON: %v\n%q", p, err, body)
		}
	}
	var node struct {
		PeerProblems []struct{ Node, Subnet string } `json:"peer_problems"`
	}
	if err := json.Unmarshal(get(t, h, "GET", "/api/v1/node").Body.Bytes(), &node); err != nil {
		t.Fatal(err)
	}
	if len(node.PeerProblems) != 2 || node.PeerProblems[0].Node != evil || node.PeerProblems[1].Node != "dup-new" {
		t.Errorf("peer problems %q: want each under its own node (%q, dup-new)", node.PeerProblems, evil)
	}
}
