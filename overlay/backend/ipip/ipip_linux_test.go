package ipip_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/ipip"
	"github.com/twillnet/twill/overlay/netconf"
)

// needIPIP skips the test when the kernel cannot create ipip devices,
// which it finds out by creating one in the lab's first node.
func needIPIP(t *testing.T, lab *backendtest.Lab, cfg *netconf.Config) {
	t.Helper()
	b, err := ipip.New(lab.Nodes[0].BackendNode(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.Prepare(context.Background())
	if errors.Is(err, ipip.ErrUnsupported) {
		t.Skipf("needs the kernel's ipip support: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestTwoNodesPodToPod(t *testing.T) {
	lab := backendtest.New(t, "ipip", 2)
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}`))
	if err != nil {
		t.Fatal(err)
	}
	needIPIP(t, lab, cfg)
	rs := lab.Start(t, cfg, func(n backend.Node, log *slog.Logger) (backend.Backend, error) { return ipip.New(n, log) })
	n1 := lab.Nodes[0]
	for _, r := range rs {
		if r.Prepared.MTU != 1480 {
			t.Errorf("%s MTU %d, want 1480", r.Node.Name, r.Prepared.MTU)
		}
		link := r.Node.IP(t, "-d", "link", "show", "twill.ipip")
		for _, want := range []string{"mtu 1480", "ipip", "local " + r.Node.PublicIP.String(), ",UP"} {
			if !strings.Contains(link, want) {
				t.Errorf("%s twill.ipip lacks %q:\n%s", r.Node.Name, want, link)
			}
		}
	}
	if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "10.244.2.0/24 via 192.168.56.12 dev twill.ipip proto 126 onlink") {
		t.Errorf("route to the peer: %q", got)
	}
	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckUnroutablePeer(t, rs[0])
	backendtest.CheckPeerExpires(t, rs)

	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, "twill.ipip") {
		t.Errorf("device left after Cleanup:\n%s", got)
	}
}

// TestDirectRouting: with DirectRouting, a peer on the segment is routed
// over eth0 and needs no tunnel; the device is still made for the others.
func TestDirectRouting(t *testing.T) {
	lab := backendtest.New(t, "ipip", 2)
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"ipip","DirectRouting":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	needIPIP(t, lab, cfg)
	rs := lab.Start(t, cfg, func(n backend.Node, log *slog.Logger) (backend.Backend, error) { return ipip.New(n, log) })
	if got := lab.Nodes[0].IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "via 192.168.56.12 dev eth0 proto 126") {
		t.Errorf("direct route to the peer: %q", got)
	}
	backendtest.CheckPodToPod(t, rs)
}
