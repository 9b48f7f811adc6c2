package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
)

// TestSmoke runs one short round over two paths, so that the harness
// cannot rot: the labs come up, iperf3, ping and the CPU accounting
// produce figures, the table and the JSON carry them. (make bench is the
// real run.)
func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3 (make deps installs it)")
	}
	if testing.Short() {
		t.Skip("brings up labs")
	}
	bin := binaries.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r, err := Run(ctx, Options{Rounds: 1, Duration: time.Second, Bin: bin, Prefix: "bsmk",
		Paths: []string{"kernel-vxlan", "twill-udp", "twill-udp-userspace", "one-packet-per-syscall"}})
	if err != nil {
		t.Fatal(err)
	}
	var tbl, js bytes.Buffer
	if err := r.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", tbl.String())
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not read back: %v", err)
	}
	for _, p := range back.Paths {
		for _, m := range []string{TCP1, TCP4, PingAvg, PingP99, UDP64, UDP1400} {
			if v := p.Median[m]; !(v > 0) {
				t.Errorf("%s: %s = %v, want a positive figure", p.Name, m, v)
			}
		}
		// Packets cost the userspace paths CPU; twill-udp's kernel path may
		// cost twilld none (zero, not missing).
		if v, ok := p.Median[CPUPerGB]; p.Name != "kernel-vxlan" && (!ok || v < 0 || p.Name != "twill-udp" && v == 0) {
			t.Errorf("%s: CPU per GB %v (reported: %v)", p.Name, v, ok)
		}
		if p.Name == "kernel-vxlan" && p.Ratio[TCP1] != 1 {
			t.Errorf("baseline ratio %v, want 1", p.Ratio[TCP1])
		}
	}
	// No lab is left behind.
	if m, _ := filepath.Glob("/run/netns/bsmk*"); len(m) > 0 {
		t.Errorf("namespaces left: %v", m)
	}
}

// TestRoundOrder: every pair of rounds measures each path once at its
// place and once at the mirrored place, so over an even number of rounds
// no path sits nearer the start of a round than another.
func TestRoundOrder(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5} {
		pos := make([]int, n) // sum of each path's positions
		for round := range 4 {
			order := roundOrder(n, round)
			seen := map[int]bool{}
			for at, p := range order {
				if p < 0 || p >= n || seen[p] {
					t.Fatalf("roundOrder(%d, %d) = %v: not each of the %d paths once", n, round, order, n)
				}
				seen[p] = true
				pos[p] += at
			}
			if len(seen) != n {
				t.Fatalf("roundOrder(%d, %d) = %v: not each of the %d paths once", n, round, order, n)
			}
		}
		for p, sum := range pos {
			if sum != 2*(n-1) { // a mean position of (n-1)/2 over 4 rounds
				t.Errorf("%d paths: path %d at positions summing to %d over 4 rounds, want %d", n, p, sum, 2*(n-1))
			}
		}
	}
}
