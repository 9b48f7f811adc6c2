package scenarios

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/vmtest"
)

// A fault the cluster's driver cannot cause is reported as unsupported in
// the step's result and fails the scenario; it is not skipped. The cluster
// is a real netns lab given to the runner (Runner.Cluster), as the vagrant
// driver's is; its nodes share this machine's kernel, so they cannot be
// rebooted or shaped with netem.
func TestUnsupportedFaultsAreReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the netns driver creates network namespaces, links and a bridge")
	}
	bin := binaries.ForTest(t)
	lab := fmt.Sprintf("u%d", os.Getpid()%10000)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := vmtest.Up(ctx, vmtest.Spec{Name: lab, Nodes: 2, Backend: "host-gw", Bin: bin}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := vmtest.Down(context.Background(), lab); err != nil {
			t.Error(err)
		}
	})
	for _, tt := range []struct{ step, want string }{
		{"reboot-node: {node: n1}", "reboot-node: unsupported operation"},
		{"underlay-loss: {node: n1, loss: 1%}", "underlay-loss: unsupported operation"},
	} {
		s, err := Parse([]byte("name: unsupported\ncluster: {nodes: 2, backend: host-gw, podsPerNode: 1}\nsteps:\n  - ping-all\n  - " + tt.step + "\n  - ping-all\n"))
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		r := &Runner{Driver: "netns", Bin: bin, Out: &out, Cluster: c}
		rep, err := r.Run(ctx, s)
		t.Log("\n" + out.String())
		if err == nil || rep.Passed {
			t.Fatalf("%s on the netns driver passed", tt.step)
		}
		if len(rep.Steps) != 2 || !rep.Steps[0].Passed || rep.Steps[1].Passed || !rep.Steps[1].Unsupported || !strings.Contains(rep.Steps[1].Error, tt.want) {
			t.Fatalf("want ping-all passed, then %s unsupported (%q) and the scenario stopped; report: %+v", tt.step, tt.want, rep.Steps)
		}
		if !strings.Contains(out.String(), "UNSUPPORTED") {
			t.Errorf("the progress does not say UNSUPPORTED:\n%s", out.String())
		}
	}
}
