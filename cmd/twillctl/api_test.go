package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/twillnet/twill/web/api"
)

// twillctl leases --node names the leases the node does not route to, and
// why.
func TestLeasesNotRouted(t *testing.T) {
	ll := api.LeaseList{Leases: []api.Lease{
		{Subnet: "10.244.1.0/24", PublicIP: "192.168.56.11", Node: "n1", Backend: "vxlan", Own: true, ExpiresInSeconds: 60},
		{Subnet: "10.244.5.0/24", PublicIP: "192.168.56.15", Node: "n5", Backend: "host-gw", ExpiresInSeconds: 60,
			NotRouted: `backend type "host-gw", this node runs "vxlan"; skipped`},
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/leases" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(ll)
	}))
	defer srv.Close()
	var out strings.Builder
	if err := apiLeases(t.Context(), srv.URL, "table", &out); err != nil {
		t.Fatal(err)
	}
	want := `not routed by this node: 10.244.5.0/24 (192.168.56.15): backend type "host-gw", this node runs "vxlan"; skipped` + "\n"
	if !strings.HasSuffix(out.String(), want) || strings.Count(out.String(), "not routed") != 1 || !strings.Contains(out.String(), "n1 (this node)") {
		t.Errorf("leases:\n%s", out.String())
	}
}
