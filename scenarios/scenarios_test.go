package scenarios

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/lease"
)

func TestScenarioFilesParse(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	names := map[string]string{}
	for _, f := range files {
		s, err := Load(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if other, dup := names[s.Name]; dup {
			t.Errorf("%s and %s are both named %q", f, other, s.Name)
		}
		names[s.Name] = f
		if want := strings.TrimSuffix(filepath.Base(f), ".yaml"); s.Name != want {
			t.Errorf("%s is named %q; name it after its file", f, s.Name)
		}
	}
}

func TestParseRefusesBadScenarios(t *testing.T) {
	base := "name: x\ncluster: {nodes: 2, backend: vxlan, podsPerNode: 1}\n"
	for _, tt := range []struct{ in, want string }{
		{base + "steps:\n  - pong-all\n", `unknown step "pong-all"`},
		{base + "steps:\n  - lease: {node: n5, holds: true}\n", `line 4: lease.node: node "n5": no such node (the lab has n1..n2)`},
		{base + "steps:\n  - tcp: {from: n1p1, to: n2p2}\n", `tcp.to = "n2p2": no such pod`},
		{base + "steps:\n  - tcp: {from: n1p1}\n", `tcp needs "to"`},
		{base + "steps:\n  - tcp: {from: n1p1, to: n2p1, size: lots}\n", `tcp.size`},
		{base + "steps:\n  - ping-all: {node: n1}\n", `ping-all takes no parameter "node"`},
		{base + "steps:\n  - sleep: forever\n", `"forever" is not a duration`},
		{base + "steps:\n  - ping: {from: n1p1, to: n2p1, expect: maybe}\n", `want ok or fail`},
		{base + "steps: []\n", "steps: none given"},
		{base + "steps:\n  - outside-to-pod\n", `outside-to-pod needs "to"`},
		{base + "steps:\n  - outside-to-pod: {to: n3p1}\n", `outside-to-pod.to = "n3p1": no such pod`},
		{base + "steps:\n  - host-to-pods: {node: n1}\n", `host-to-pods takes no parameter "node"`},
		{base + "steps:\n  - put-lease: {node: n2}\n", `put-lease needs "value"`},
		{base + "steps:\n  - put-lease: {node: n2, value: '{{.Foo}}'}\n", `line 4: put-lease.value: "{{.Foo}}"`},
		{base + "steps:\n  - put-lease: {node: n2, value: '{{.PublicIP'}\n", `put-lease.value: "{{.PublicIP"`},
		{base + "steps:\n  - put-lease: {node: n2, bits: 40, value: x}\n", `line 4: put-lease.bits: "40": want an integer from 8 to 32`},
		{base + "steps:\n  - put-lease: {node: n2, ttl: 0s, value: x}\n", `put-lease.ttl: "0s": want a positive duration`},
		{base + "steps:\n  - send-spoofed: {to: n1p1}\n", `send-spoofed.to: node "n1p1": no such node (the lab has n1..n2)`},
		{base + "steps:\n  - send-spoofed: {to: n1, count: 0}\n", `send-spoofed.count: "0": want an integer from 1`},
		{base + "steps:\n  - delete-device\n", `delete-device needs "node"`},
		{base + "steps:\n  - ping-watch: {from: n1p1}\n", `ping-watch needs "to"`},
		{base + "steps:\n  - ping-watch-end: {from: n1p1}\n", `give both from and to`},
		{base + "steps:\n  - ping-watch-end: {max-lost: -1}\n", `ping-watch-end.max-lost: "-1"`},
		{base + "steps:\n  - readyz: {expect: sometimes}\n", `readyz.expect: "sometimes": want ok or fail`},
		{"name: x\ncluster: {nodes: 2, backend: wireguard, nodeArgs: {n3: [--x]}}\nsteps:\n  - ping-all\n", `scenario: cluster.nodeArgs: node "n3": no such node (the lab has n1..n2)`},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, flannelNodes: [n3]}\nsteps:\n  - ping-all\n", `scenario: cluster.flannelNodes: node "n3": no such node (the lab has n1..n2)`},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, flannelNodes: [n2]}\nsteps:\n  - node-leases: {node: n2}\n", `node-leases.node = "n2": a flannel node has no twill API`},
		{base + "steps:\n  - node-leases\n", `node-leases needs "node"`},
		{base + "steps:\n  - new-key: {node: n1}\n", `new-key.node = "n1": not a flannel node`},
		{base + "steps:\n  - new-key\n", `new-key needs "node"`},
		{base + "steps:\n  - ping-watch-end: {max-gap: 0s}\n", `ping-watch-end.max-gap: "0s": want a positive duration`},
		{base + "steps:\n  - mtu: {from: n1p1, to: n2p1, path-mtu: 20}\n", `mtu.path-mtu: "20": want an integer from 68`},
		{base + "steps:\n  - wireguard-peers: {node: n1}\n", `wireguard-peers takes no parameter "node"`},
		{base + "steps:\n  - underlay-encrypted: {from: n1p1}\n", `underlay-encrypted needs "to"`},
		{base + "steps:\n  - data-path: {path: fast}\n", `data-path.path: "fast": want kernel, userspace or auto`},
		{base + "steps:\n  - log: {contains: ''}\n", `log.contains: empty`},
		{base + "steps:\n  - log: {node: n1}\n", `log needs "contains"`},
		{base + "steps:\n  - mtu: {from: n1p1, to: n2p1, family: ipv6}\n", `mtu.family: "ipv6": want one of the cluster's families [ipv4]`},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, podsPerNode: 1, ipFamily: ipv6}\nsteps:\n  - ping-all: {family: ipv4}\n", `ping-all.family: "ipv4": want one of the cluster's families [ipv6]`},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, ipFamily: v6}\nsteps: [ping-all]\n", `cluster.ipFamily = "v6": want ipv4, dual or ipv6`},
		{"name: x\ncluster: {nodes: 0, backend: vxlan}\nsteps: [ping-all]\n", "cluster.nodes = 0"},
		{"name: x\ncluster: {nodes: 2}\nsteps: [ping-all]\n", "cluster.backend: missing"},
		{"name: x\ncluster: {nodes: 2, backend: udp, backends: [vxlan]}\nsteps: [ping-all]\n", "not both"},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, pods: 2}\nsteps: [ping-all]\n", "field pods not found"},
	} {
		_, err := Parse([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse:\n%s\n= %v\nwant an error containing %q", tt.in, err, tt.want)
		}
	}
}

// TestParseNodeNames checks every place a scenario names a node against
// vmtest.ValidNode, the lab's own rule (vmtest.Spec checks node_args and
// flannel_nodes by it too). Before, the scenarios had a rule of their own:
// n01 and n+1 passed vmtest's and failed theirs.
func TestParseNodeNames(t *testing.T) {
	places := []struct {
		field string
		yaml  func(node string) string // the scenario, naming node there
	}{
		{"scenario: cluster.nodeArgs", func(n string) string {
			return "cluster: {nodes: %d, backend: vxlan, podsPerNode: 1, nodeArgs: {'" + n + "': [--x]}}\nsteps: [ping-all]\n"
		}},
		{"scenario: cluster.flannelNodes", func(n string) string {
			return "cluster: {nodes: %d, backend: vxlan, podsPerNode: 1, flannelNodes: ['" + n + "']}\nsteps: [ping-all]\n"
		}},
		{"scenario: steps[0]: line 4: restart-daemon.node", func(n string) string {
			return "cluster: {nodes: %d, backend: vxlan, podsPerNode: 1}\nsteps:\n  - restart-daemon: {node: '" + n + "'}\n"
		}},
		{"scenario: steps[0]: line 4: delete-route.peer", func(n string) string {
			return "cluster: {nodes: %d, backend: vxlan, podsPerNode: 1}\nsteps:\n  - delete-route: {node: n1, peer: '" + n + "'}\n"
		}},
		{"scenario: steps[0]: line 4: send-spoofed.to", func(n string) string {
			return "cluster: {nodes: %d, backend: vxlan, podsPerNode: 1}\nsteps:\n  - send-spoofed: {to: '" + n + "'}\n"
		}},
	}
	for _, tt := range []struct {
		node  string
		nodes int
		has   string // what the error says the lab has; "" accepted
	}{
		{"n1", 1, ""},
		{"n3", 3, ""},
		{"n2", 1, "n1 only"},
		{"n4", 3, "n1..n3"},
		{"n0", 3, "n1..n3"},
		{"n01", 3, "n1..n3"},
		{"n+1", 3, "n1..n3"},
		{"N1", 3, "n1..n3"},
		{"n1p1", 3, "n1..n3"},
		{"twill-n1", 3, "n1..n3"},
	} {
		for _, pl := range places {
			in := "name: x\n" + fmt.Sprintf(pl.yaml(tt.node), tt.nodes)
			_, err := Parse([]byte(in))
			if tt.has == "" {
				if err != nil {
					t.Errorf("%s %q with %d nodes: %v, want it accepted", pl.field, tt.node, tt.nodes, err)
				}
				continue
			}
			want := fmt.Sprintf("%s: node %q: no such node (the lab has %s)", pl.field, tt.node, tt.has)
			if err == nil || err.Error() != want {
				t.Errorf("%s %q with %d nodes: %v, want %q", pl.field, tt.node, tt.nodes, err, want)
			}
		}
	}
}

func TestPlaysPerBackend(t *testing.T) {
	s, err := Parse([]byte("name: x\ncluster: {nodes: 2, backends: [vxlan, udp]}\nsteps: [ping-all]\n"))
	if err != nil {
		t.Fatal(err)
	}
	plays := s.Plays()
	if len(plays) != 2 || plays[0].Name != "x-vxlan" || plays[0].Cluster.Backend != "vxlan" || plays[1].Name != "x-udp" || plays[1].Cluster.Backend != "udp" {
		t.Errorf("plays: %+v %+v", plays[0], plays[1])
	}
}

func TestParseStep(t *testing.T) {
	s, err := Parse([]byte("name: x\ncluster: {nodes: 3, backend: vxlan, podsPerNode: 2, subnetLeaseTTL: 6s}\nsteps:\n  - ping-all\n  - tcp: {from: n1p1, to: n3p2, size: 64MiB}\n  - sleep: 2s\n  - lease: {node: n2, holds: false, within: 9s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Steps) != 4 || s.Steps[1].Size != 64<<20 || s.Steps[2].For != Duration(2*time.Second) ||
		*s.Steps[3].Holds || s.Steps[3].Within != Duration(9*time.Second) || s.Cluster.SubnetLeaseTTL != Duration(6*time.Second) {
		t.Errorf("parsed %+v", s)
	}
}

func TestParseHostileSteps(t *testing.T) {
	s, err := Parse([]byte("name: x\ncluster: {nodes: 2, backend: vxlan, podsPerNode: 1}\nsteps:\n" +
		"  - put-lease: {node: n2, bits: 19, ttl: 1m, value: '{\"PublicIP\":\"{{.PublicIP}}\"}'}\n" +
		"  - send-spoofed: {to: n1}\n  - log: {contains: x}\n  - log: {contains: x, count: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	put, spoof, anyLog, noLog := s.Steps[0], s.Steps[1], s.Steps[2], s.Steps[3]
	if put.Bits != 19 || put.TTL != Duration(time.Minute) || put.value == nil {
		t.Errorf("put-lease: %+v", put)
	}
	if spoof.Node != "n1" || spoof.To != "" || *spoof.Count != 5 {
		t.Errorf("send-spoofed: node %q to %q count %d, want n1, none, 5 (the default)", spoof.Node, spoof.To, *spoof.Count)
	}
	if anyLog.Count != nil || noLog.Count == nil || *noLog.Count != 0 {
		t.Errorf("log counts: %v %v", anyLog.Count, noLog.Count)
	}
}

// TestParsePingWatch reads real ping output, recorded by
// testdata/ping-watch/capture.sh as a watch runs ping and ends it: the
// count printed on SIGQUIT at the end step, 0.5 s of drain, SIGINT. On this
// machine ping -i 0.01 sends a request every 16 to 18 ms, so the drain held
// 27 or 28 requests, not the 50 the old rule excused (min(trailing
// unanswered, watchDrain/watchInterval)): in loss-before-end it counted 9
// of the 32 requests lost before the end step.
func TestParsePingWatch(t *testing.T) {
	for _, tt := range []struct {
		file                                  string
		sent, beforeEnd, lost, leading, unans int
		inFlight                              int
		gap                                   time.Duration // the longest gap, to the millisecond
		says                                  string        // in the step's line
	}{
		// The drop starts, 32 requests (121..152) get no reply before the
		// end step, and the drop goes on: all 32 count, the 27 of the
		// drain are in flight.
		{"loss-before-end", 179, 152, 32, 0, 32, 27, 31 * time.Millisecond,
			"152 sent, 120 answered, 32 lost (then 27 in the drain, 27 of them in flight when ping was interrupted); longest gap between replies 32ms; the last 32 requests before the end got no reply"},
		// The drop starts with the end step: nothing of the watched time is
		// lost, the drain's 27 unanswered requests are in flight.
		{"loss-after-end", 142, 114, 0, 0, 0, 27, 84 * time.Millisecond, "114 sent, 114 answered, 0 lost (then 28 in the drain, 27 of them in flight"},
		// 30 requests (124..153) dropped before the end step, replies again
		// in the drain: the 30 count, the gap spans them.
		{"healed-in-drain", 180, 153, 30, 0, 30, 0, 608 * time.Millisecond, "(then 27 in the drain, all answered)"},
		// 30 requests (1..30) dropped from the start: no gap between
		// replies shows them.
		{"loss-from-start", 113, 86, 30, 30, 0, 0, 53 * time.Millisecond, "; the first 30 requests got no reply"},
		{"clean", 149, 118, 0, 0, 0, 0, 48 * time.Millisecond, "118 sent, 118 answered, 0 lost (then 31 in the drain, all answered); longest gap between replies 48ms"},
		// As loss-before-end, but the last 30 requests are answered
		// with ICMP host unreachable (7 error lines: the target limits its
		// rate), as by a node without a route. With -w ping would have
		// ended at the first error and the outage counted as 1 loss.
		{"unreachable", 186, 155, 30, 0, 30, 31, 20 * time.Millisecond, "155 sent, 125 answered, 30 lost"},
	} {
		out, err := os.ReadFile(filepath.Join("testdata", "ping-watch", tt.file+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		r, err := parsePingWatch(string(out), false)
		if err != nil {
			t.Errorf("%s: %v", tt.file, err)
			continue
		}
		if r.Sent != tt.sent || r.SentBeforeEnd != tt.beforeEnd || r.Lost != tt.lost || r.Leading != tt.leading || r.Unanswered != tt.unans ||
			r.InFlight != tt.inFlight || r.LongestGap.Truncate(time.Millisecond) != tt.gap {
			t.Errorf("%s: got %d sent, %d before the end, %d lost (%d from the start, %d to the end), %d in flight, a %v gap\nwant %d sent, %d before the end, %d lost (%d from the start, %d to the end), %d in flight, a %v gap",
				tt.file, r.Sent, r.SentBeforeEnd, r.Lost, r.Leading, r.Unanswered, r.InFlight, r.LongestGap,
				tt.sent, tt.beforeEnd, tt.lost, tt.leading, tt.unans, tt.inFlight, tt.gap)
		}
		if !strings.Contains(r.String(), tt.says) {
			t.Errorf("%s: %q, want it to say %q", tt.file, r, tt.says)
		}
	}
	// Without the count of the end step there is no telling the watched
	// time from the drain: an error, unless ping had ended by itself
	// before the end step (then every request is of the watched time).
	out, err := os.ReadFile(filepath.Join("testdata", "ping-watch", "loss-before-end.txt"))
	if err != nil {
		t.Fatal(err)
	}
	unmarked := pingMarkRE.ReplaceAllString(string(out), "")
	if _, err := parsePingWatch(unmarked, false); err == nil || !strings.Contains(err.Error(), "no count of requests at the end step") {
		t.Errorf("output without the end step's count: %v, want an error", err)
	}
	if r, err := parsePingWatch(unmarked, true); err != nil || r.SentBeforeEnd != 179 || r.Lost != 59 || r.InFlight != 0 {
		t.Errorf("a ping that ended before the end step: %s (%v); want all 59 unanswered of 179 lost", r, err)
	}
	if _, err := parsePingWatch("ping: connect: Network is unreachable\n", false); err == nil {
		t.Error("output without statistics: no error")
	}
}

func TestRoutableLeases(t *testing.T) {
	l := func(s string, created int64) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix(s), Created: created, Revision: created}
	}
	network, own := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24")
	got := routableLeases([]lease.Lease{
		l("10.244.96.0/19", 9), // a supernet over the older 10.244.97.0/24: refused
		l("10.244.97.0/24", 5),
		l("10.244.1.0/24", 1), // own
		l("10.245.3.0/24", 2), // outside the network
		l("10.244.0.0/23", 3), // overlaps own
		l("10.244.4.0/24", 4),
	}, network, own)
	var subnets []string
	for _, g := range got {
		subnets = append(subnets, g.Subnet.String())
	}
	if want := []string{"10.244.4.0/24", "10.244.97.0/24"}; !slices.Equal(subnets, want) {
		t.Errorf("routable: %v, want %v", subnets, want)
	}
}

// TestScenarios plays every scenario on the netns driver.
func TestScenarios(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the netns driver creates network namespaces, links and a bridge")
	}
	if testing.Short() {
		t.Skip("plays whole scenarios; skipped with -short")
	}
	bin := binaries.ForTest(t)
	files, _ := filepath.Glob("*.yaml")
	reports := filepath.Join(os.TempDir(), "twill-scenario-reports")
	var plays []*Scenario
	for _, f := range files {
		s, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		plays = append(plays, s.Plays()...)
	}
	for i, s := range plays {
		lab := fmt.Sprintf("s%03d%03d", os.Getpid()%1000, i) // more plays than letters
		t.Run(s.Name, func(t *testing.T) {
			if len(s.Drivers) > 0 && !slices.Contains(s.Drivers, "netns") {
				t.Skipf("runs only on the %s driver: this host's kernel lacks what it needs", strings.Join(s.Drivers, ", "))
			}
			if s.Cluster.Store == "kube" {
				if _, err := kubeapi.Binary(kubeapi.APIServerBinary); err != nil {
					t.Skipf("store kube needs a real kube-apiserver: %v", err)
				}
			}
			if len(s.Cluster.FlannelNodes) > 0 {
				if _, err := binaries.FlannelDir(); err != nil {
					t.Skipf("plays flanneld on %v: %v", s.Cluster.FlannelNodes, err)
				}
			}
			var out strings.Builder
			r := &Runner{Driver: "netns", Bin: bin, Out: &out, ReportDir: reports, LabName: lab}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			rep, err := r.Run(ctx, s)
			t.Log("\n" + out.String())
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Passed || len(rep.Steps) != len(s.Steps) {
				t.Fatalf("report: passed %v, %d of %d steps", rep.Passed, len(rep.Steps), len(s.Steps))
			}
		})
	}
}

// TestParsePingWatchGap: ping-watch-end with max-gap alone bounds the gap
// and not the count (a loss the gap bounds); with max-lost too, both.
func TestParsePingWatchGap(t *testing.T) {
	base := "name: x\ncluster: {nodes: 2, backend: vxlan, podsPerNode: 1}\nsteps:\n"
	s, err := Parse([]byte(base + "  - ping-watch-end: {max-gap: 18s}\n  - ping-watch-end: {max-gap: 2s, max-lost: 5}\n  - ping-watch-end\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		lost int
		gap  time.Duration
	}{{-1, 18 * time.Second}, {5, 2 * time.Second}, {0, 0}} {
		if st := s.Steps[i]; st.MaxLost != want.lost || time.Duration(st.MaxGap) != want.gap {
			t.Errorf("step %d: max-lost %d, max-gap %v; want %d, %v", i+1, st.MaxLost, time.Duration(st.MaxGap), want.lost, want.gap)
		}
	}
}
