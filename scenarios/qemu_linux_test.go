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

// qemuScenarios are the scenarios the qemu tier plays: the basic one on
// each tunnel backend (udp on its kernel path, classic tc on the VMs'
// 6.1, and on its userspace path; wireguard in the kernel, and mixed with
// userspace nodes; dual stack on vxlan and on kernel WireGuard), the
// faults only a VM has, bgp's IPIP CrossSubnet (ipip is not in this
// host's kernel), the Kubernetes store with twilld in the VMs, and twill's
// kernel WireGuard next to flannel's own (flanneld's wireguard backend
// needs the module).
var qemuScenarios = []string{"basic-udp", "basic-udp-userspace", "basic-vxlan", "basic-ipip", "vm-faults", "underlay-ipvlan-l2", "underlay-ipvlan-l3", "restart-under-traffic",
	"basic-wireguard", "wireguard-mixed", "restart-under-traffic-wireguard", "dual-stack-vxlan", "bgp-ipip-crosssubnet", "bgp-ipip-always", "bgp-gateway-reboot", "dual-stack-wireguard", "kube-vxlan",
	"flannel-mixed-wireguard"}

// TestScenariosQEMU plays qemuScenarios on clusters of 2 or 3 VMs. It is the qemu
// tier: opt in with TWILL_QEMU=1 (make vmtest does, and make test runs
// make vmtest). Opted in, a machine without QEMU or the kernel fails the
// test with what to install; it is never skipped.
func TestScenariosQEMU(t *testing.T) {
	if os.Getenv("TWILL_QEMU") != "1" {
		t.Skip("the qemu tier boots VMs (several minutes): run it with make vmtest, or TWILL_QEMU=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the qemu tier needs root: it makes a namespace with a bridge and tap devices")
	}
	if err := vmtest.CheckVMTools(); err != nil {
		t.Fatal(err)
	}
	if only := os.Getenv("TWILL_QEMU_SCENARIOS"); only != "" {
		qemuScenarios = strings.Fields(only)
	}
	bin := binaries.ForTest(t)
	reports := os.Getenv("TWILL_QEMU_REPORTS")
	if reports == "" {
		reports = t.TempDir()
	}
	var summary strings.Builder
	began := time.Now()
	var plays []*Scenario
	for _, name := range qemuScenarios {
		s, err := Load(name + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		plays = append(plays, s.Plays()...) // one per backend of a multi-backend file
	}
	for i, s := range plays {
		lab := fmt.Sprintf("q%d%c", os.Getpid()%1000, 'a'+i)
		t.Run(s.Name, func(t *testing.T) {
			var out strings.Builder
			r := &Runner{Driver: "qemu", Bin: bin, Out: &out, ReportDir: reports, LabName: lab}
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			rep, err := r.Run(ctx, s)
			t.Log("\n" + out.String())
			if rep != nil {
				fmt.Fprintf(&summary, "  %-20s %-4s %6.1fs  (consoles: %s)\n", s.Name, map[bool]string{true: "PASS", false: "FAIL"}[rep.Passed], rep.Seconds,
					fmt.Sprintf("%s/twill-vm-consoles/%s", os.TempDir(), lab))
			}
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Passed || len(rep.Steps) != len(s.Steps) {
				t.Fatalf("report: passed %v, %d of %d steps", rep.Passed, len(rep.Steps), len(s.Steps))
			}
		})
	}
	t.Logf("qemu tier: %d scenarios (%d plays) in %.1fs (reports in %s):\n%s", len(qemuScenarios), len(plays), time.Since(began).Seconds(), reports, summary.String())
}
