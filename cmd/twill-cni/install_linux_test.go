package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// install copies the running binary and the shipped conflist into the
// directories given, with the modes a runtime needs; a conflist without a
// twill plugin, or with a bad value, is refused and nothing is written.
func TestInstall(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	// An old plugin is replaced, not appended to.
	if err := os.WriteFile(filepath.Join(bin, "twill"), []byte("old"), 0o755); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := install([]string{"--plugin-dir", bin, "--conflist", "10-twill.conflist", "--conf-dir", conf}, &log); err != nil {
		t.Fatalf("install: %v (%s)", err, log.String())
	}
	self, _ := os.Executable()
	want, _ := os.ReadFile(self)
	for _, c := range []struct {
		path string
		want []byte
		mode os.FileMode
	}{
		{filepath.Join(bin, "twill"), want, 0o755},
		{filepath.Join(conf, "10-twill.conflist"), must(os.ReadFile("10-twill.conflist")), 0o644},
	} {
		got, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(c.path)
		if !bytes.Equal(got, c.want) || fi.Mode().Perm() != c.mode {
			t.Errorf("%s: %d bytes, mode %v; want %d bytes (the source's), mode %v", c.path, len(got), fi.Mode().Perm(), len(c.want), c.mode)
		}
	}
	if ents, _ := os.ReadDir(bin); len(ents) != 1 {
		t.Errorf("plugin dir holds %d files, want only twill (no temporary left)", len(ents))
	}

	for _, c := range []struct{ conflist, want string }{
		{`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"bridge"}]}`, `no plugin of type "twill"`},
		{`{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"twill","bridge":7}]}`, `bridge`},
		{`{"cniVersion":`, `unexpected end`},
	} {
		bad := filepath.Join(t.TempDir(), "bad.conflist")
		if err := os.WriteFile(bad, []byte(c.conflist), 0o644); err != nil {
			t.Fatal(err)
		}
		dir, pdir := t.TempDir(), t.TempDir()
		err := install([]string{"--plugin-dir", pdir, "--conflist", bad, "--conf-dir", dir}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--conflist") {
			t.Errorf("conflist %s: error %v, want one naming --conflist and saying %q", c.conflist, err, c.want)
		}
		for _, d := range []string{dir, pdir} {
			if ents, _ := os.ReadDir(d); len(ents) != 0 {
				t.Errorf("conflist %s refused, yet %s holds %d files", c.conflist, d, len(ents))
			}
		}
	}
	if err := install(nil, io.Discard); err == nil {
		t.Error("install with nothing to do succeeded")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
