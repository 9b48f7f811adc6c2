package vxlan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/vxlan"
	"github.com/twillnet/twill/overlay/netconf"
)

func config(t testing.TB, backendJSON string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":` + backendJSON + `}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newVXLAN(n backend.Node, log *slog.Logger) (backend.Backend, error) {
	b, err := vxlan.New(n, log)
	if err != nil {
		return nil, err
	}
	return closing{b}, nil
}

// closing is a vxlan backend whose handles the test closes.
type closing struct{ *vxlan.Backend }

// deviceMAC is the MAC of twill.1 in the node's namespace ("" if none).
func deviceMAC(t testing.TB, n *backendtest.Node) string {
	t.Helper()
	out := n.IP(t, "-o", "link", "show")
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, " twill.1:") {
			continue
		}
		fs := strings.Fields(line)
		for i, f := range fs {
			if f == "link/ether" && i+1 < len(fs) {
				return fs[i+1]
			}
		}
	}
	return ""
}

func TestTwoNodesPodToPod(t *testing.T) {
	lab := backendtest.New(t, "vxlan", 2)
	cfg := config(t, `{"Type":"vxlan"}`)
	rs := lab.Start(t, cfg, newVXLAN)
	n1, n2 := lab.Nodes[0], lab.Nodes[1]

	// Flannel's BackendData, with the derived MAC; pods get underlay - 50.
	for _, r := range rs {
		mac := vxlan.DerivedMAC(r.Node.PublicIP, 1)
		want := fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac)
		if string(r.Prepared.BackendData) != want {
			t.Errorf("%s BackendData %s, want %s", r.Node.Name, r.Prepared.BackendData, want)
		}
		var d struct{ VNI int }
		if err := json.Unmarshal(r.Prepared.BackendData, &d); err != nil || d.VNI != 1 {
			t.Errorf("BackendData VNI: %v %v", d, err)
		}
		if r.Prepared.MTU != 1450 {
			t.Errorf("MTU %d, want 1450", r.Prepared.MTU)
		}
		if got := deviceMAC(t, r.Node); got != mac.String() {
			t.Errorf("%s twill.1 MAC %q, want %s", r.Node.Name, got, mac)
		}
		link := r.Node.IP(t, "-d", "link", "show", "twill.1")
		for _, want := range []string{"mtu 1450", "vxlan id 1 ", "local " + r.Node.PublicIP.String(), "dev eth0", "dstport 8472", "nolearning", ",UP"} {
			if !strings.Contains(link, want) {
				t.Errorf("%s twill.1 lacks %q:\n%s", r.Node.Name, want, link)
			}
		}
		if addr := r.Node.IP(t, "-4", "-o", "addr", "show", "dev", "twill.1"); !strings.Contains(addr, "inet "+r.Node.Subnet.Addr().String()+"/32") {
			t.Errorf("%s twill.1 address: %s", r.Node.Name, addr)
		}
	}
	// The kernel state of flannel's data path, marked as twill's.
	peerMAC := vxlan.DerivedMAC(n2.PublicIP, 1).String()
	if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "10.244.2.0/24 via 10.244.2.0 dev twill.1 proto 126 onlink") {
		t.Errorf("route to the peer: %q", got)
	}
	if got := n1.IP(t, "neigh", "show", "dev", "twill.1"); !strings.Contains(got, "10.244.2.0 lladdr "+peerMAC+" PERMANENT") {
		t.Errorf("neighbour of the peer: %q", got)
	}
	if got := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "bridge", "fdb", "show", "dev", "twill.1"); !strings.Contains(got, peerMAC+" dst "+n2.PublicIP.String()+" self permanent") {
		t.Errorf("fdb entry of the peer: %q", got)
	}

	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckBulkCounters(t, rs, 1450)

	// Someone deletes the device: it comes back with its MAC, and traffic flows.
	mac1 := deviceMAC(t, n1)
	n1.IP(t, "link", "del", "twill.1")
	backendtest.Eventually(t, 10*time.Second, func() string {
		if got := deviceMAC(t, n1); got != mac1 {
			return fmt.Sprintf("twill.1 MAC %q, want it back as %s", got, mac1)
		}
		if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "dev twill.1") {
			return "route to the peer not back: " + got
		}
		return ""
	})
	rs[0].WaitInSync(t)
	if got := n1.Ping(t, n2.PodIP, 3); got != 3 {
		t.Fatalf("after the device came back: %d of 3 replies", got)
	}
	if addr := n1.IP(t, "-4", "-o", "addr", "show", "dev", "twill.1"); !strings.Contains(addr, "inet 10.244.1.0/32") {
		t.Errorf("recreated twill.1 address: %s", addr)
	}

	// Neighbour and FDB entries removed by hand are repaired too.
	n1.IP(t, "neigh", "del", "10.244.2.0", "dev", "twill.1")
	backendtest.Eventually(t, 10*time.Second, func() string {
		if got := n1.IP(t, "neigh", "show", "dev", "twill.1"); !strings.Contains(got, "10.244.2.0 lladdr "+peerMAC+" PERMANENT") {
			return "neighbour not repaired: " + got
		}
		return ""
	})

	backendtest.CheckNftablesRepaired(t, rs[0], rs[1])
	backendtest.CheckUnroutablePeer(t, rs[0])
	backendtest.CheckSpoofedVXLAN(t, lab, rs[0], rs[1], 1, vxlan.DerivedMAC(n1.PublicIP, 1))

	backendtest.CheckPeerExpires(t, rs)
	if got := n1.IP(t, "neigh", "show", "dev", "twill.1"); strings.Contains(got, "10.244.2.0") {
		t.Errorf("neighbour of the expired peer left: %q", got)
	}
	if got := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "bridge", "fdb", "show", "dev", "twill.1"); strings.Contains(got, peerMAC) {
		t.Errorf("fdb entry of the expired peer left: %q", got)
	}
}

// TestVtepMACSurvivesRestart: a backend made again in the same namespace
// publishes the same VTEP MAC (it reuses the device), and so does one made
// after the device is gone (a reboot: the MAC is derived), while an
// existing device that someone else made (flannel's, say) keeps its MAC.
func TestVtepMACSurvivesRestart(t *testing.T) {
	lab := backendtest.New(t, "vxlan", 1)
	n := lab.Nodes[0]
	cfg := config(t, `{"Type":"vxlan"}`)
	prepare := func() string {
		t.Helper()
		b, err := vxlan.New(n.BackendNode(cfg), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		p, err := b.Prepare(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return string(p.BackendData)
	}
	first := prepare()
	ifindex := n.IP(t, "-o", "link", "show", "twill.1")[:4]
	if again := prepare(); again != first {
		t.Errorf("restart: BackendData %s, was %s", again, first)
	}
	if now := n.IP(t, "-o", "link", "show", "twill.1")[:4]; now != ifindex {
		t.Errorf("restart replaced the device: ifindex %q, was %q", now, ifindex)
	}
	n.IP(t, "link", "del", "twill.1")
	if reboot := prepare(); reboot != first {
		t.Errorf("reboot: BackendData %s, was %s", reboot, first)
	}

	n.IP(t, "link", "del", "twill.1")
	n.IP(t, "link", "add", "twill.1", "address", "0a:58:0a:f4:01:00", "type", "vxlan", "id", "1", "local", n.PublicIP.String(),
		"dev", "eth0", "dstport", "8472", "nolearning")
	if got, want := prepare(), `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`; got != want {
		t.Errorf("existing device: BackendData %s, want %s", got, want)
	}
}

// TestReplacesMismatchedDevice: a twill.1 with other options (port 4789)
// is replaced by one with the configured options, keeping its MAC.
func TestReplacesMismatchedDevice(t *testing.T) {
	lab := backendtest.New(t, "vxlan", 1)
	n := lab.Nodes[0]
	n.IP(t, "link", "add", "twill.1", "address", "0a:58:0a:f4:01:01", "type", "vxlan", "id", "1", "local", n.PublicIP.String(),
		"dev", "eth0", "dstport", "4789")
	b, err := vxlan.New(n.BackendNode(config(t, `{"Type":"vxlan","MTU":1400,"Learning":true}`)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p, err := b.Prepare(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(p.BackendData) != `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}` || p.MTU != 1400 {
		t.Errorf("prepared %s mtu %d", p.BackendData, p.MTU)
	}
	link := n.IP(t, "-d", "link", "show", "twill.1")
	for _, want := range []string{"dstport 8472", "mtu 1400", "0a:58:0a:f4:01:01"} {
		if !strings.Contains(link, want) {
			t.Errorf("twill.1 lacks %q:\n%s", want, link)
		}
	}
	if strings.Contains(link, "nolearning") {
		t.Errorf("Learning is on, device says nolearning:\n%s", link)
	}
}

// TestIPMasqAndCleanup: with IPMasq the table masquerades; Cleanup removes
// the device, twill's routes and the table, and leaves the rest.
func TestIPMasqAndCleanup(t *testing.T) {
	lab := backendtest.New(t, "vxlan", 2)
	cfg := config(t, `{"Type":"vxlan"}`)
	rs := lab.Start(t, cfg, func(n backend.Node, log *slog.Logger) (backend.Backend, error) {
		n.IPMasq = true
		return newVXLAN(n, log)
	})
	n1 := lab.Nodes[0]
	table := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "table", "ip", "twill")
	if !strings.Contains(table, "masquerade") {
		t.Errorf("IPMasq on, no masquerade in the table:\n%s", table)
	}
	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, "twill.1") {
		t.Errorf("device left after Cleanup:\n%s", got)
	}
	if got := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) != "" {
		t.Errorf("twill routes left after Cleanup: %q", got)
	}
	if got := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "tables"); strings.Contains(got, "twill") {
		t.Errorf("table left after Cleanup: %q", got)
	}
	if got := n1.IP(t, "-o", "addr", "show", "dev", "cni0"); !strings.Contains(got, "10.244.1.1/24") {
		t.Errorf("Cleanup touched cni0: %q", got)
	}
}

// TestDirectRouting: with DirectRouting a peer on the segment is routed
// over eth0, without neighbour or FDB entries, and pods still reach it.
func TestDirectRouting(t *testing.T) {
	lab := backendtest.New(t, "vxlan", 2)
	rs := lab.Start(t, config(t, `{"Type":"vxlan","DirectRouting":true}`), newVXLAN)
	n1 := lab.Nodes[0]
	if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "10.244.2.0/24 via 192.168.56.12 dev eth0 proto 126") {
		t.Errorf("direct route to the peer: %q", got)
	}
	if got := n1.IP(t, "neigh", "show", "dev", "twill.1"); strings.TrimSpace(got) != "" {
		t.Errorf("neighbours on twill.1 for a direct peer: %q", got)
	}
	backendtest.CheckPodToPod(t, rs)
}

// dualStack is cfg with flannel's IPv6 fields: fd00:10:244::/48 in /64s.
func dualStack(cfg *netconf.Config) *netconf.Config {
	cfg.EnableIPv6, cfg.IPv6Network, cfg.IPv6SubnetLen = true, netip.MustParsePrefix("fd00:10:244::/48"), 64
	return cfg
}

// TestDualStack: with an IPv6 underlay each node has twill-v6.1 beside
// twill.1 (same VNI and port, its IPv6 address as the VTEP, MTU 1430 for
// both and the pods), publishes that device's MAC as BackendV6Data, and pods
// reach each other over both families with per-peer counters in both
// nftables tables.
func TestDualStack(t *testing.T) {
	lab := backendtest.New(t, "vxlan6", 2)
	lab.AddIPv6(t, true)
	rs := lab.Start(t, dualStack(config(t, `{"Type":"vxlan"}`)), newVXLAN)
	for _, r := range rs {
		mac6 := vxlan.DerivedMAC(r.Node.PublicIPv6, 1)
		if want := fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac6); string(r.Prepared.BackendV6Data) != want {
			t.Errorf("%s BackendV6Data %s, want %s", r.Node.Name, r.Prepared.BackendV6Data, want)
		}
		if r.Prepared.MTU != 1430 {
			t.Errorf("%s MTU %d, want 1430 (IPv6 outer header)", r.Node.Name, r.Prepared.MTU)
		}
		link := r.Node.IP(t, "-d", "link", "show", "twill-v6.1")
		for _, want := range []string{"mtu 1430", "vxlan id 1 ", "local " + r.Node.PublicIPv6.String(), "dev eth0", "dstport 8472", ",UP", mac6.String()} {
			if !strings.Contains(link, want) {
				t.Errorf("%s twill-v6.1 lacks %q:\n%s", r.Node.Name, want, link)
			}
		}
		if addrs := r.Node.IP(t, "-6", "addr", "show", "dev", "twill-v6.1"); !strings.Contains(addrs, r.Node.Subnet6.Addr().String()+"/128") {
			t.Errorf("%s twill-v6.1 lacks the subnet's address %s/128:\n%s", r.Node.Name, r.Node.Subnet6.Addr(), addrs)
		}
	}
	n1, n2 := rs[0].Node, rs[1].Node
	routes := n1.IP(t, "-6", "route", "show", "proto", "126")
	if want := fmt.Sprintf("%s via %s dev twill-v6.1", n2.Subnet6, n2.Subnet6.Addr()); !strings.Contains(routes, want) {
		t.Errorf("%s IPv6 routes lack %q:\n%s", n1.Name, want, routes)
	}
	if fdb := n1.IP(t, "neigh", "show", "dev", "twill-v6.1", "nud", "permanent"); !strings.Contains(fdb, n2.Subnet6.Addr().String()) {
		t.Errorf("%s lacks the permanent IPv6 neighbour %s:\n%s", n1.Name, n2.Subnet6.Addr(), fdb)
	}
	if fdb := backendtest.Run(t, "bridge", "-n", n1.Name, "fdb", "show", "dev", "twill-v6.1"); !strings.Contains(fdb, "dst "+n2.PublicIPv6.String()) {
		t.Errorf("%s twill-v6.1 FDB lacks dst %s:\n%s", n1.Name, n2.PublicIPv6, fdb)
	}
	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckPodToPod6(t, rs)
	// The IPv6 tunnel guard admitted the peer's IPv6 VTEP, and counted it.
	if p, _ := rs[0].Peer(n2.Subnet6); p.PublicIP != n2.PublicIPv6 {
		t.Errorf("%s's IPv6 peer status %+v, want public %s", n1.Name, p, n2.PublicIPv6)
	}
	if out := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "set", "ip6", "twill", "tunnel-sources"); !strings.Contains(out, n2.PublicIPv6.String()) {
		t.Errorf("ip6 twill tunnel-sources lacks %s:\n%s", n2.PublicIPv6, out)
	}

	// Cleanup takes both devices and both tables.
	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if links := n1.IP(t, "link", "show"); strings.Contains(links, "twill") {
		t.Errorf("devices left after Cleanup:\n%s", links)
	}
	if out := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "tables"); strings.Contains(out, "twill") {
		t.Errorf("nftables tables left after Cleanup:\n%s", out)
	}
}

// TestIPv6OverIPv4: without an IPv6 underlay, IPv6 pod traffic rides
// twill.1 (MTU 1450), and BackendV6Data publishes twill.1's MAC.
func TestIPv6OverIPv4(t *testing.T) {
	lab := backendtest.New(t, "vx6o4", 2)
	lab.AddIPv6(t, false)
	rs := lab.Start(t, dualStack(config(t, `{"Type":"vxlan"}`)), newVXLAN)
	for _, r := range rs {
		if string(r.Prepared.BackendV6Data) != string(r.Prepared.BackendData) || r.Prepared.MTU != 1450 {
			t.Errorf("%s BackendV6Data %s, MTU %d; want %s (twill.1's) and 1450", r.Node.Name, r.Prepared.BackendV6Data, r.Prepared.MTU, r.Prepared.BackendData)
		}
		if links := r.Node.IP(t, "link", "show"); strings.Contains(links, "twill-v6") {
			t.Errorf("%s has an IPv6 VXLAN device without an IPv6 underlay:\n%s", r.Node.Name, links)
		}
	}
	backendtest.CheckPodToPod(t, rs)
	backendtest.CheckPodToPod6(t, rs)
}

// TestIPv6Only: an IPv6-only pod network (EnableIPv4 false): each node has
// twill-v6.1 and no twill.1, its leases no IPv4 subnet, and the peers (told
// apart by their IPv6 subnets alone) reach each other's pods.
func TestIPv6Only(t *testing.T) {
	lab := backendtest.New(t, "vx6only", 3)
	lab.AddIPv6(t, true)
	for _, n := range lab.Nodes {
		n.Subnet = netip.Prefix{}
	}
	cfg := dualStack(config(t, `{"Type":"vxlan"}`))
	cfg.EnableIPv4, cfg.Network, cfg.SubnetLen = false, netip.Prefix{}, 0
	rs := lab.Start(t, cfg, newVXLAN)
	for _, r := range rs {
		if links := r.Node.IP(t, "link", "show"); strings.Contains(links, "twill.1:") || !strings.Contains(links, "twill-v6.1:") {
			t.Errorf("%s devices, want twill-v6.1 and no twill.1:\n%s", r.Node.Name, links)
		}
		if len(r.Prepared.BackendData) != 0 {
			t.Errorf("%s BackendData %s, want none", r.Node.Name, r.Prepared.BackendData)
		}
		if got := len(r.Backend.Status().Peers); got != 2 {
			t.Errorf("%s routes %d peers, want 2", r.Node.Name, got)
		}
	}
	backendtest.CheckPodToPod6(t, rs)
}
