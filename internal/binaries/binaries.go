// Package binaries gives tests and labs that run from the source tree
// twill's three commands (twilld, twillctl, twill-cni), built once for a
// whole `go test ./...`: each package's tests run in a process of their
// own, and they all share one directory.
//
// The binaries are static (CGO_ENABLED=0), as the VM images need them.
// Dir takes bin/ of `make build` when `go build -n` says it is current
// with the source (it would only touch the files), else it builds into
// build/bin of the module under a file lock, where go build does nothing
// but touch them when they are current already.
//
// It must not be used by the commands themselves, nor write anywhere but
// build/bin of the module it runs in; it never writes into bin/.
package binaries

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/twillnet/twill/internal/filelock"
)

// Module is the module whose commands these are.
const Module = "github.com/twillnet/twill"

// Names are the commands, by their file names.
var Names = []string{"twilld", "twillctl", "twill-cni"}

func packages() []string {
	pkgs := make([]string, len(Names))
	for i, n := range Names {
		pkgs[i] = Module + "/cmd/" + n
	}
	return pkgs
}

var (
	mu     sync.Mutex
	cached string
)

// Dir returns a directory with the three binaries, current with the source
// of the module that holds the working directory. Calls in one process
// share the answer.
func Dir(ctx context.Context) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if cached != "" {
		return cached, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	made := filepath.Join(root, "bin")
	if !current(ctx, root, made) {
		made = filepath.Join(root, "build", "bin")
		if err := build(ctx, root, made); err != nil {
			return "", err
		}
	}
	cached = made
	return made, nil
}

// TB is the part of testing.TB that ForTest uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// ForTest is Dir for a test: it fails the test when the binaries cannot be
// had.
func ForTest(t TB) string {
	t.Helper()
	dir, err := Dir(context.Background())
	if err != nil {
		t.Fatalf("twill's binaries: %v", err)
	}
	return dir
}

// ModuleRoot finds the directory of twill's go.mod, from the working
// directory up.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if modulePath(b) == Module {
				return dir, nil
			}
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", fmt.Errorf("not in the source tree of %s: no go.mod of it above the working directory", Module)
		}
		dir = up
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// current reports whether dir holds the three binaries, static, and go
// build in root with the flags they were built with (make build sets
// main.version) would not change them.
func current(ctx context.Context, root, dir string) bool {
	flags, err := buildFlags(filepath.Join(dir, Names[0]))
	if err != nil {
		return false
	}
	for _, n := range Names {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	args := append(append([]string{"build", "-n"}, flags...), "-o", dir+"/")
	cmd := exec.CommandContext(ctx, "go", append(args, packages()...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return false
	}
	// Up to date, go build -n would only touch the targets.
	for line := range strings.SplitSeq(string(out), "\n") {
		if line != "" && !strings.HasPrefix(line, "touch ") {
			return false
		}
	}
	return true
}

// buildFlags are the go build flags a binary was built with, as its build
// information records them; a binary built with cgo is refused.
func buildFlags(path string) ([]string, error) {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var flags []string
	cgo := ""
	for _, s := range info.Settings {
		switch s.Key {
		case "CGO_ENABLED":
			cgo = s.Value
		case "-ldflags", "-gcflags", "-asmflags", "-tags", "-trimpath":
			flags = append(flags, s.Key+"="+s.Value)
		}
	}
	if cgo != "0" {
		return nil, fmt.Errorf("%s is built with cgo (CGO_ENABLED=%q): not static", path, cgo)
	}
	return flags, nil
}

// build builds the binaries into dir under a lock, so that the test
// processes of one go test run build them once; the others find them
// current and go build only touches them.
func build(ctx context.Context, root, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	unlock, err := filelock.Lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", dir + "/"}, packages()...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return errors.Join(fmt.Errorf("build %s into %s: %w", strings.Join(Names, ", "), dir, err), errors.New(strings.TrimSpace(string(out))))
	}
	return nil
}
