// Package golden compares a test's text output with files checked in under
// the package's testdata directory (testdata/NAME.txt), as overlay/plan and
// overlay/kernel test their pure functions. With -update it writes the
// files instead, and removes those no test case produced.
//
// It is for tests only and must not touch anything outside testdata.
package golden

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.txt with the output computed now")

// Files are the golden files of one test: every testdata/*.txt must belong
// to one of its cases.
type Files struct {
	seen map[string]bool
}

// New starts a set of golden files for t. When t ends, a testdata/*.txt file
// that no Check named is an error (removed under -update), unless -run chose
// some of t's cases only.
func New(t *testing.T) *Files {
	t.Helper()
	f := &Files{seen: map[string]bool{}}
	t.Cleanup(func() {
		if run := flag.Lookup("test.run"); run != nil && strings.Contains(run.Value.String(), "/") {
			return
		}
		files, _ := filepath.Glob(filepath.Join("testdata", "*.txt"))
		for _, path := range files {
			if f.seen[path] {
				continue
			}
			if *update {
				os.Remove(path)
				continue
			}
			t.Errorf("%s belongs to no test case", path)
		}
	})
	return f
}

// Check compares got with testdata/name.txt, or writes it under -update.
func (f *Files) Check(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".txt")
	f.seen[path] = true
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	top, _, _ := strings.Cut(t.Name(), "/")
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, top)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -run %s -update rewrites it):\n%s", path, top, LineDiff(string(want), got))
	}
}

// LineDiff lists the lines only in want (-) and only in got (+), at most 40.
func LineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 40 {
		out = append(out[:40], fmt.Sprintf("... and %d more", len(out)-40))
	}
	return strings.Join(out, "\n")
}
