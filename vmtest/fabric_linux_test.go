package vmtest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRoutedBIRD: a routed lab with BIRD 2 as the router: the nodes sit
// in two /28s with no on-link route to each other, every node peers with
// BIRD (birdc show protocols lists them established), BIRD's kernel
// routes each node's subnet to it, and pods in the two racks reach each
// other through the router.
func TestRoutedBIRD(t *testing.T) { testRouted(t, "b", "bird") }

// TestRoutedFRR is TestRoutedBIRD with FRR as the router (vtysh show bgp
// summary).
func TestRoutedFRR(t *testing.T) { testRouted(t, "f", "frr") }

func testRouted(t *testing.T, suffix, router string) {
	needRoot(t)
	need := map[string][]string{"bird": {"bird", "birdc"}, "frr": {"vtysh", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra"}}[router]
	for _, c := range need {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (Debian package %s)", c, map[string]string{"bird": "bird2", "frr": "frr"}[router])
		}
	}
	ctx := testCtx(t)
	name := labName("r" + suffix)
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"ConnectRetry":1}}`
	c := up(t, Spec{Name: name, Nodes: 3, NetConfig: cfg, PodsPerNode: 1, Routed: &Routed{Router: router}})
	st := c.snapshot()
	if st.Router == nil || len(st.Router.Procs) == 0 || !st.Router.Procs[0].alive() {
		t.Fatalf("no router runs: %+v", st.Router)
	}
	nodes := c.Nodes()
	// n1 and n3 in rack 0, n2 in rack 1: addresses of two /28s.
	racks := map[string]netip.Prefix{}
	for _, n := range nodes {
		out, err := c.Exec(ctx, n.Name, "ip", "-j", "-4", "addr", "show", "dev", "eth0")
		var addrs []struct {
			AddrInfo []struct {
				Local     string `json:"local"`
				PrefixLen int    `json:"prefixlen"`
			} `json:"addr_info"`
		}
		if err != nil || json.Unmarshal(out, &addrs) != nil || len(addrs) != 1 || len(addrs[0].AddrInfo) != 1 {
			t.Fatalf("%s: eth0: %v: %s", n.Name, err, out)
		}
		a := addrs[0].AddrInfo[0]
		racks[n.Name] = netip.MustParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen)).Masked()
		if a.Local != n.UnderlayIP.String() || a.PrefixLen != rackBits {
			t.Errorf("%s: eth0 has %s/%d, want %s/%d", n.Name, a.Local, a.PrefixLen, n.UnderlayIP, rackBits)
		}
	}
	if racks["n1"] != racks["n3"] || racks["n1"] == racks["n2"] {
		t.Errorf("racks %v: want n1 and n3 in one /28, n2 in another", racks)
	}
	// The router has a session with every node.
	allUp := func() string {
		deadline := time.Now().Add(30 * time.Second)
		for {
			up, tbl, err := c.RouterSessions(ctx)
			slices.Sort(up)
			if err == nil && slices.Equal(up, []string{"n1", "n2", "n3"}) {
				return tbl
			}
			if time.Now().After(deadline) {
				t.Fatalf("router sessions established: %v (%v), want n1 n2 n3:\n%s", up, err, tbl)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("%s:\n%s", router, allUp())
	// The router's kernel routes each node's subnet to that node.
	proto := map[string]string{"bird": "bird", "frr": "bgp"}[router]
	for _, n := range nodes {
		if err := eventually(func() error {
			out, _ := c.Exec(ctx, c.RouterNetNS(), "ip", "route", "show", n.Subnet.String(), "proto", proto)
			if !strings.Contains(string(out), "via "+n.UnderlayIP.String()) {
				return fmt.Errorf("the router's route to %s's subnet %s: %q", n.Name, n.Subnet, out)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
	// Pods reach each other across racks, and nothing is encapsulated.
	pods := c.Pods()
	for _, p := range pods {
		for _, q := range pods {
			if p.Name != q.Name {
				if err := eventually(func() error { return ping(ctx, c, p.NetNS, q.Addr) }); err != nil {
					t.Errorf("pod %s -> %s (%s): %v", p.Name, q.Name, q.Addr, err)
				}
			}
		}
	}
	// A restart of the router: its processes are new, and its sessions
	// come back.
	before := c.snapshot().Router.Procs
	if err := c.RestartRouter(ctx); err != nil {
		t.Fatal(err)
	}
	after := c.snapshot().Router.Procs
	if len(after) != len(before) || after[len(after)-1] == before[len(before)-1] || !after[len(after)-1].alive() {
		t.Errorf("router processes before the restart %v, after %v", before, after)
	}
	t0 := time.Now()
	allUp()
	t.Logf("%s restarted: every session back in %s", router, time.Since(t0).Round(time.Millisecond))
	if err := eventually(func() error { return ping(ctx, c, pods[0].NetNS, pods[1].Addr) }); err != nil {
		t.Errorf("after the router's restart: %v", err)
	}
	for _, n := range nodes {
		out, _ := c.Exec(ctx, n.Name, "ip", "-d", "-o", "link", "show")
		for _, kind := range []string{"ipip", "vxlan", "tun ", "wireguard"} {
			if strings.Contains(string(out), " "+kind) {
				t.Errorf("%s has a %s device:\n%s", n.Name, kind, out)
			}
		}
	}
}

func TestRoutedSpecRefused(t *testing.T) {
	for _, tt := range []struct {
		spec Spec
		want string
	}{
		{Spec{Backend: "bgp", Routed: &Routed{Router: "quagga"}}, `routed.router "quagga"`},
		{Spec{Backend: "bgp", Routed: &Routed{Racks: 4}}, "routed.racks = 4"},
		{Spec{Backend: "bgp", Nodes: 30, Routed: &Routed{Racks: 2}}, "at most 13 a rack"},
		{Spec{Backend: "bgp", Routed: &Routed{RackASNs: []uint32{65001}}}, "one AS per rack (2)"},
		{Spec{Backend: "bgp", Routed: &Routed{RackASNs: []uint32{65001, 0}}}, "routed.rack_asns[1] = 0"},
		{Spec{Backend: "macvlan", Routed: &Routed{}}, "macvlan and ipvlan need the flat one"},
		{Spec{Backend: "bgp", Nodes: 2, NodeArgs: map[string][]string{"n3": {"--x"}}}, `node_args: node "n3": no such node (the lab has n1..n2)`},
	} {
		if _, err := tt.spec.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error with %q", tt.spec, err, tt.want)
		}
	}
	// A bgp lab with a router peers with it only.
	s, err := Spec{Backend: "bgp", Routed: &Routed{Router: "bird"}}.withDefaults()
	if err != nil || !strings.Contains(s.NetConfig, `"NodeMesh":false`) {
		t.Errorf("the default config of a bgp lab with a router: %s (%v)", s.NetConfig, err)
	}
}
