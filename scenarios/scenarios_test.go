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
		{base + "steps:\n  - lease: {node: n5, holds: true}\n", `lease.node = "n5": no such node (nodes are n1..n2)`},
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
		{base + "steps:\n  - send-spoofed: {to: n1p1}\n", `send-spoofed.to = "n1p1": no such node`},
		{base + "steps:\n  - send-spoofed: {to: n1, count: 0}\n", `send-spoofed.count: "0": want an integer from 1`},
		{base + "steps:\n  - delete-device\n", `delete-device needs "node"`},
		{base + "steps:\n  - ping-watch: {from: n1p1}\n", `ping-watch needs "to"`},
		{base + "steps:\n  - ping-watch-end: {from: n1p1}\n", `give both from and to`},
		{base + "steps:\n  - ping-watch-end: {max-lost: -1}\n", `ping-watch-end.max-lost: "-1"`},
		{base + "steps:\n  - readyz: {expect: sometimes}\n", `readyz.expect: "sometimes": want ok or fail`},
		{"name: x\ncluster: {nodes: 2, backend: wireguard, nodeArgs: {n3: [--x]}}\nsteps:\n  - ping-all\n", `cluster.nodeArgs.n3: no such node (the cluster has n1..n2)`},
		{"name: x\ncluster: {nodes: 2, backend: vxlan, flannelNodes: [n3]}\nsteps:\n  - ping-all\n", `cluster.flannelNodes: "n3": no such node (the cluster has n1..n2)`},
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

func TestParsePingWatch(t *testing.T) {
	out := `PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.
[1764583200.000100] 64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.1 ms
[1764583200.010100] 64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.1 ms
[1764583200.010200] 64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.1 ms (DUP!)
[1764583200.050100] 64 bytes from 10.244.2.2: icmp_seq=6 ttl=62 time=0.1 ms
[1764583200.060100] 64 bytes from 10.244.2.2: icmp_seq=7 ttl=62 time=0.1 ms

--- 10.244.2.2 ping statistics ---
8 packets transmitted, 4 received, +1 duplicates, 50% packet loss, time 70ms
`
	r, err := parsePingWatch(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 8 || r.Received != 4 || r.Lost != 3 || r.InFlight != 1 || r.LongestGap != 40*time.Millisecond {
		t.Errorf("got %+v, want 8 sent, 4 received, 3 lost (3, 4, 5), the 8th in flight, a 40 ms gap", r)
	}
	// A loss that goes on to the end: only the drain's requests are in
	// flight, the ones before it are lost.
	long := strings.Replace(out, "8 packets transmitted", "107 packets transmitted", 1)
	if r, err := parsePingWatch(long); err != nil || r.Lost != 3+50 || r.InFlight != 50 || r.Unanswered != 50 {
		t.Errorf("a loss to the end: got %+v, %v; want 53 lost (3, 4, 5 and 8..57), 50 in flight (58..107), 50 unanswered before them", r, err)
	}
	if _, err := parsePingWatch("ping: connect: Network is unreachable\n"); err == nil {
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
