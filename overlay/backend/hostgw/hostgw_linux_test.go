package hostgw_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/hostgw"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

func newHostGW(n backend.Node, log *slog.Logger) (backend.Backend, error) {
	return hostgw.New(n, log)
}

func TestTwoNodesPodToPod(t *testing.T) {
	lab := backendtest.New(t, "hostgw", 2)
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	rs := lab.Start(t, cfg, newHostGW)
	n1 := lab.Nodes[0]
	for _, r := range rs {
		if r.Prepared.MTU != 1500 || len(r.Prepared.BackendData) != 0 {
			t.Errorf("%s prepared MTU %d data %s; want 1500 and none", r.Node.Name, r.Prepared.MTU, r.Prepared.BackendData)
		}
	}
	if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "10.244.2.0/24 via 192.168.56.12 dev eth0 proto 126") {
		t.Errorf("route to the peer: %q", got)
	}

	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckBulkCounters(t, rs, 1500)

	// A peer behind a router: reported, not routed; the others stay.
	far := lease.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("10.0.9.13"), BackendType: netconf.TypeHostGW}}
	if err := rs[0].Backend.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: far}}); err != nil {
		t.Fatal(err)
	}
	rs[0].WaitInSync(t)
	st := rs[0].Backend.Status()
	found := false
	for _, p := range st.Problems {
		if strings.Contains(p, "10.244.3.0/24") && strings.Contains(p, "not on this node's L2 segment") {
			found = true
		}
	}
	if !found {
		t.Errorf("off-segment peer not reported: %q", st.Problems)
	}
	if len(st.PeerProblems) != 1 || st.PeerProblems[0].Subnet != far.Subnet || st.PeerProblems[0].PublicIP != far.Attrs.PublicIP {
		t.Errorf("off-segment peer not among the peer problems (which make the node not ready): %q", st.PeerProblems)
	}
	if _, ok := rs[0].Peer(far.Subnet); ok {
		t.Errorf("off-segment peer listed as routed")
	}
	if got := n1.IP(t, "route", "show", "10.244.3.0/24"); strings.TrimSpace(got) != "" {
		t.Errorf("off-segment peer got a route: %q", got)
	}
	// It leaves; the problem goes with it.
	if err := rs[0].Backend.Handle(context.Background(), []lease.Event{{Type: lease.Expired, Lease: far}}); err != nil {
		t.Fatal(err)
	}
	if st := rs[0].Backend.Status(); len(st.Problems) != 0 {
		t.Errorf("problems after the far peer left: %q", st.Problems)
	}
	backendtest.CheckUnroutablePeer(t, rs[0])

	// A route deleted by hand comes back.
	n1.IP(t, "route", "del", "10.244.2.0/24")
	backendtest.Eventually(t, 10*time.Second, func() string {
		if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "via 192.168.56.12") {
			return "route not repaired: " + got
		}
		return ""
	})

	backendtest.CheckPeerExpires(t, rs)

	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) != "" {
		t.Errorf("twill routes left after Cleanup: %q", got)
	}
	if got := n1.IP(t, "route", "show", "192.168.56.0/24"); !strings.Contains(got, "dev eth0") {
		t.Errorf("Cleanup removed the connected route: %q", got)
	}
}

// TestDualStack: host-gw routes each peer's IPv6 subnet via its PublicIPv6
// on eth0 beside the IPv4 route; pods reach each other over both families,
// counted in both nftables tables; a peer off the IPv6 segment is a problem.
func TestDualStack(t *testing.T) {
	lab := backendtest.New(t, "hostgw6", 2)
	lab.AddIPv6(t, true)
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.EnableIPv6, cfg.IPv6Network, cfg.IPv6SubnetLen = true, netip.MustParsePrefix("fd00:10:244::/48"), 64
	rs := lab.Start(t, cfg, newHostGW)
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	if got := n1.IP(t, "-6", "route", "show", n2.Subnet6.String()); !strings.Contains(got, "via "+n2.PublicIPv6.String()+" dev eth0 proto 126") {
		t.Errorf("IPv6 route to the peer: %q", got)
	}
	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckPodToPod6(t, rs)

	far := n2.Lease(netconf.TypeHostGW, nil)
	far.Subnet, far.IPv6Subnet = netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")
	far.Attrs.PublicIP, far.Attrs.PublicIPv6 = netip.MustParseAddr("192.168.56.13"), netip.MustParseAddr("fd00:9::13")
	if err := rs[0].Backend.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: far}}); err != nil {
		t.Fatal(err)
	}
	rs[0].WaitInSync(t)
	st := rs[0].Backend.Status()
	if len(st.PeerProblems) != 1 || st.PeerProblems[0].Subnet != far.IPv6Subnet {
		t.Errorf("peer problems %q, want the one for %s (off the IPv6 segment)", st.PeerProblems, far.IPv6Subnet)
	}
	backendtest.Eventually(t, 5*time.Second, func() string {
		if got := n1.IP(t, "route", "show", "10.244.3.0/24"); !strings.Contains(got, "via 192.168.56.13") {
			return fmt.Sprintf("the IPv4 half of the off-IPv6-segment peer is not routed: %q", got)
		}
		return ""
	})
}
