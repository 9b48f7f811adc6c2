package status_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLeavesLinkNoDataPath holds the leaf packages, and the readers built on
// them, to what they may link: a reader of snapshots or of the JSON API, and
// the CNI plugin, must not drag in the backends, the kernel code, nftables,
// eBPF or the etcd client.
func TestLeavesLinkNoDataPath(t *testing.T) {
	const twill = "github.com/twillnet/twill/"
	dataPath := []string{twill + "overlay/backend", twill + "overlay/daemon", twill + "overlay/kernel",
		twill + "overlay/lease/etcd", "go.etcd.io/", "github.com/cilium/ebpf", "github.com/google/nftables"}
	for pkg, forbidden := range map[string][]string{
		"overlay/status": slices.Concat(dataPath, []string{"github.com/vishvananda/netlink", twill + "web"}),
		"web/api":        {twill},
		"overlay/link":   slices.Concat(dataPath, []string{twill + "overlay/plan", twill + "overlay/lease"}),
		"web":            dataPath,
		"cmd/twill-cni":  dataPath,
	} {
		for _, dep := range deps(t, twill+pkg) {
			for _, f := range forbidden {
				f = strings.TrimSuffix(f, "/")
				if dep != twill+pkg && (dep == f || strings.HasPrefix(dep, f+"/")) {
					t.Errorf("%s links %s (none of %s may be linked)", pkg, dep, f)
				}
			}
		}
	}
}

// deps is what go list says pkg links, the standard library left out.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go command: %v", err)
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}
