package scenarios

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
)

// TestUnderlayEncryptedSeesPlainText: on vxlan, which does not encrypt,
// underlay-encrypted finds the marker on the underlay and fails saying so.
func TestUnderlayEncryptedSeesPlainText(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the netns driver creates network namespaces, links and a bridge")
	}
	if testing.Short() {
		t.Skip("plays a scenario; skipped with -short")
	}
	s, err := Parse([]byte("name: plain-vxlan\ncluster:\n  nodes: 2\n  backend: vxlan\n  podsPerNode: 1\nsteps:\n  - underlay-encrypted: {from: n1p1, to: n2p1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r := &Runner{Driver: "netns", Bin: binaries.ForTest(t), Out: &out, LabName: fmt.Sprintf("w%05d", os.Getpid()%100000)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := r.Run(ctx, s)
	t.Log("\n" + out.String())
	if rep == nil || len(rep.Steps) != 1 {
		t.Fatalf("report %+v, %v", rep, err)
	}
	st := rep.Steps[0]
	if st.Passed || !strings.Contains(st.Error, "carry the marker in plain text") || st.Data["reached_pod"] != wireMarkers {
		t.Errorf("underlay-encrypted on vxlan: passed %v, error %q, data %v; want a failure for the plain text, every datagram delivered", st.Passed, st.Error, st.Data)
	}
}
