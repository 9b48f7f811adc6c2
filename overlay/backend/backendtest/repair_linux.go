package backendtest

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
)

// CheckNftablesRepaired deletes twill's nftables table on r's node and
// checks that the backend puts it back at once, with the node's masquerade
// and forward rules, without waiting for a resync (the nftables monitor
// tells the reconciler), and that the pods still reach each other.
func CheckNftablesRepaired(tb testing.TB, r *Running, peer *Running) {
	tb.Helper()
	Run(tb, "ip", "netns", "exec", r.Node.Name, "nft", "delete", "table", "ip", "twill")
	deleted := time.Now()
	Eventually(tb, 5*time.Second, func() string {
		out, err := exec.Command("ip", "netns", "exec", r.Node.Name, "nft", "list", "table", "ip", "twill").CombinedOutput()
		if err != nil {
			return fmt.Sprintf("table ip twill not back: %v: %s", err, out)
		}
		if !strings.Contains(string(out), "chain forward") {
			return "table ip twill back without its forward chain:\n" + string(out)
		}
		return ""
	})
	tb.Logf("%s: the deleted nftables table was back after %v", r.Node.Name, time.Since(deleted).Round(time.Millisecond))
	r.WaitInSync(tb)
	if got := r.Node.Ping(tb, peer.Node.PodIP, 2); got != 2 {
		tb.Errorf("after the table came back: %d of 2 replies", got)
	}
}

// CheckUnroutablePeer hands r's backend a peer lease the plan refuses (its
// subnet is outside the cluster network) and checks that the backend
// reports it among the PeerProblems (which fail the peers-routable
// readiness check), and no longer once the lease expired.
func CheckUnroutablePeer(tb testing.TB, r *Running) {
	tb.Helper()
	bad := lease.Lease{Subnet: netip.MustParsePrefix("10.99.7.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.77"), BackendType: r.Backend.Type(), BackendData: r.Prepared.BackendData}}
	ctx := context.Background()
	if err := r.Backend.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: bad}}); err != nil {
		tb.Fatal(err)
	}
	st := r.Backend.Status()
	if len(st.PeerProblems) != 1 || !strings.Contains(st.PeerProblems[0], "10.99.7.0/24") {
		tb.Errorf("%s backend: peer problems %q, want one naming 10.99.7.0/24", r.Backend.Type(), st.PeerProblems)
	}
	for _, p := range st.Peers {
		if p.Subnet == bad.Subnet {
			tb.Errorf("%s backend lists the unroutable peer among its peers", r.Backend.Type())
		}
	}
	if err := r.Backend.Handle(ctx, []lease.Event{{Type: lease.Expired, Lease: bad}}); err != nil {
		tb.Fatal(err)
	}
	if st := r.Backend.Status(); len(st.PeerProblems) != 0 {
		tb.Errorf("%s backend: peer problems %q after the lease expired", r.Backend.Type(), st.PeerProblems)
	}
}
