package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
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
		lab := fmt.Sprintf("s%d%c", os.Getpid()%1000, 'a'+i)
		t.Run(s.Name, func(t *testing.T) {
			if len(s.Drivers) > 0 && !slices.Contains(s.Drivers, "netns") {
				t.Skipf("runs only on the %s driver: this host's kernel lacks what it needs", strings.Join(s.Drivers, ", "))
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
