package backendtest

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
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

// CheckUnroutablePeer hands r's backend peer leases the plan refuses (a
// subnet outside the cluster network, a supernet of the wrong prefix
// length, a lease of another backend type) and checks, for each, that the
// backend logs it at warn once (not again when the same leases come again)
// and reports it among the PeerProblems (which fail the peers-routable
// readiness check) with its subnet, public IP and reason; and that once the
// leases expired the problems are gone and logged as resolved.
func CheckUnroutablePeer(tb testing.TB, r *Running) {
	tb.Helper()
	other := netconf.TypeVXLAN
	if r.Backend.Type() == netconf.TypeVXLAN {
		other = netconf.TypeHostGW
	}
	bad := func(subnet, ip, typ string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix(subnet),
			Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ, BackendData: r.Prepared.BackendData}}
	}
	cases := []struct {
		lease  lease.Lease
		reason string
	}{
		{bad("10.99.7.0/24", "192.168.56.77", r.Backend.Type()), "outside the cluster network"},
		{bad("10.244.96.0/19", "192.168.56.78", r.Backend.Type()), "prefix length /19"},
		{bad("10.244.77.0/24", "192.168.56.79", other), fmt.Sprintf("backend type %q", other)},
	}
	var added, expired []lease.Event
	for _, c := range cases {
		added = append(added, lease.Event{Type: lease.Added, Lease: c.lease})
		expired = append(expired, lease.Event{Type: lease.Expired, Lease: c.lease})
	}
	ctx := context.Background()
	for range 2 { // the second time changes nothing and logs nothing
		if err := r.Backend.Handle(ctx, added); err != nil {
			tb.Fatal(err)
		}
	}
	st := r.Backend.Status()
	if len(st.PeerProblems) != len(cases) {
		tb.Errorf("%s backend: peer problems %v, want %d", r.Backend.Type(), st.PeerProblems, len(cases))
	}
	for _, c := range cases {
		i := slices.IndexFunc(st.PeerProblems, func(p plan.Problem) bool { return p.Subnet == c.lease.Subnet })
		if i < 0 {
			tb.Errorf("%s backend: %s not among the peer problems %v", r.Backend.Type(), c.lease.Subnet, st.PeerProblems)
			continue
		}
		if p := st.PeerProblems[i]; p.PublicIP != c.lease.Attrs.PublicIP || !strings.Contains(p.Reason, c.reason) {
			tb.Errorf("%s backend: problem %v, want public IP %s and a reason with %q", r.Backend.Type(), p, c.lease.Attrs.PublicIP, c.reason)
		}
		if !slices.ContainsFunc(st.Problems, func(s string) bool { return strings.Contains(s, c.lease.Subnet.String()) }) {
			tb.Errorf("%s backend: %s not among the problems %q", r.Backend.Type(), c.lease.Subnet, st.Problems)
		}
		for _, p := range st.Peers {
			if p.Subnet == c.lease.Subnet {
				tb.Errorf("%s backend lists the unroutable peer %s among its peers", r.Backend.Type(), p.Subnet)
			}
		}
		if lines := r.Logged("level=WARN", "peer not routed", "peer="+c.lease.Subnet.String(), "public_ip="+c.lease.Attrs.PublicIP.String()); len(lines) != 1 {
			tb.Errorf("%s backend: %d warnings for %s, want 1: %q", r.Backend.Type(), len(lines), c.lease.Subnet, lines)
		}
	}
	if err := r.Backend.Handle(ctx, expired); err != nil {
		tb.Fatal(err)
	}
	if st := r.Backend.Status(); len(st.PeerProblems) != 0 {
		tb.Errorf("%s backend: peer problems %v after the leases expired", r.Backend.Type(), st.PeerProblems)
	}
	for _, c := range cases {
		if lines := r.Logged("peer problem resolved", c.lease.Subnet.String()); len(lines) != 1 {
			tb.Errorf("%s backend: %d lines saying the problem of %s was resolved, want 1: %q", r.Backend.Type(), len(lines), c.lease.Subnet, lines)
		}
	}
}
