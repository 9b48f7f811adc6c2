package golden

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLineDiff(t *testing.T) {
	if got, want := LineDiff("a\nb\nc\n", "a\nc\nd\n"), "- b\n+ d"; got != want {
		t.Errorf("LineDiff = %q, want %q", got, want)
	}
	if got := LineDiff("same\n", "same\n"); got != "" {
		t.Errorf("LineDiff of equal texts = %q, want none", got)
	}
	long := strings.Repeat("y\n", 60)
	if got := strings.Count(LineDiff("", long), "\n"); got != 40 {
		t.Errorf("LineDiff of 60+ lines has %d lines, want 40 and a last one saying how many more", got)
	}
}

// TestCheck: a file that matches passes, and the set of files is complete.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "testdata"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "testdata", "case.txt"), []byte("out\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	t.Run("files", func(t *testing.T) {
		files := New(t)
		files.Check(t, "case", "out\n")
	})
}
