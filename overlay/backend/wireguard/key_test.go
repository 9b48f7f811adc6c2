package wireguard

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadKeyMakesKeepsAndRefuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, created, err := LoadKey(dir)
	if err != nil || !created {
		t.Fatalf("first LoadKey: created %v, %v", created, err)
	}
	path := filepath.Join(dir, KeyFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, want 0700", di.Mode().Perm())
	}
	k2, created, err := LoadKey(dir)
	if err != nil || created || k2 != k1 {
		t.Fatalf("second LoadKey: same key %v, created %v, %v", k2 == k1, created, err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadKey(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("a 0644 key file was left %v", fi.Mode().Perm())
	}
	os.WriteFile(path, []byte("not a key\n"), 0o600)
	if _, _, err := LoadKey(dir); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a file without a key: %v, want an error naming %s", err, path)
	}
	if _, _, err := LoadKey(""); err == nil {
		t.Error("no state directory: no error")
	}
}
