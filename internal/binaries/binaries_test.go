package binaries

import (
	"context"
	"debug/buildinfo"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func copyTo(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// The binaries come static, a second build (another test process's) leaves
// them as they are, and a directory is current only with all three, each
// what the source builds.
func TestDir(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries; skipped with -short")
	}
	ctx := context.Background()
	dir := ForTest(t)
	t.Logf("binaries in %s", dir)
	for _, n := range Names {
		info, err := buildinfo.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		cgo := ""
		for _, s := range info.Settings {
			if s.Key == "CGO_ENABLED" {
				cgo = s.Value
			}
		}
		if cgo != "0" || info.Path != Module+"/cmd/"+n {
			t.Errorf("%s: package %s, CGO_ENABLED=%q; want %s/cmd/%s, static", n, info.Path, cgo, Module, n)
		}
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if !current(ctx, root, dir) {
		t.Fatalf("%s is not current right after Dir", dir)
	}

	// The shared build, built again as another package's test process
	// would: go build finds the binaries up to date and relinks nothing (a
	// relink renames a new file in).
	shared := filepath.Join(root, "build", "bin")
	if err := build(ctx, root, shared); err != nil {
		t.Fatal(err)
	}
	before := map[string]uint64{}
	for _, n := range Names {
		before[n] = inode(t, filepath.Join(shared, n))
	}
	if err := build(ctx, root, shared); err != nil {
		t.Fatal(err)
	}
	for _, n := range Names {
		if got := inode(t, filepath.Join(shared, n)); got != before[n] {
			t.Errorf("%s was written again by a second build of the same source", n)
		}
	}

	// A copy elsewhere is current; one with a wrong binary, or one short,
	// is not.
	other := t.TempDir()
	for _, n := range Names {
		copyTo(t, filepath.Join(dir, n), filepath.Join(other, n))
	}
	if !current(ctx, root, other) {
		t.Errorf("a copy of current binaries is not current")
	}
	copyTo(t, filepath.Join(dir, "twilld"), filepath.Join(other, "twillctl"))
	if current(ctx, root, other) {
		t.Errorf("a directory whose twillctl is a twilld is current")
	}
	if err := os.Remove(filepath.Join(other, "twill-cni")); err != nil {
		t.Fatal(err)
	}
	if current(ctx, root, other) {
		t.Errorf("a directory without twill-cni is current")
	}
}

func TestModulePath(t *testing.T) {
	for in, want := range map[string]string{
		"module github.com/twillnet/twill\n\ngo 1.26\n": Module,
		"// x\nmodule \"example.com/a\"\n":              "example.com/a",
		"go 1.26\n":                                     "",
	} {
		if got := modulePath([]byte(in)); got != want {
			t.Errorf("modulePath(%q) = %q, want %q", in, got, want)
		}
	}
}
