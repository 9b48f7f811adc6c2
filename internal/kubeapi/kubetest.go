package kubeapi

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
)

// TB is the part of testing.TB that ForTest uses.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// ForTest starts an embedded etcd and a kube-apiserver on 127.0.0.1 for
// the test, both stopped when it ends (the server by its PID, and killed
// with the test process). It skips the test when kube-apiserver is not
// built, saying that `make kube` builds it (`make test` does). Each of
// with may change the Config first.
func ForTest(t TB, with ...func(*Config)) *Server {
	t.Helper()
	if _, err := Binary(APIServerBinary); err != nil {
		if errors.Is(err, ErrNotBuilt) {
			t.Skipf("needs a real kube-apiserver: %v", err)
		}
		t.Fatalf("%v", err)
	}
	dir := t.TempDir()
	etcd, err := embedded.Start(embedded.Config{DataDir: filepath.Join(dir, "etcd")})
	if err != nil {
		t.Fatalf("etcd for kube-apiserver: %v", err)
	}
	t.Cleanup(etcd.Close)
	cfg := Config{Dir: dir, EtcdURL: etcd.ClientURL(), DieWithParent: true}
	for _, f := range with {
		f(&cfg)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v", err)
	}
	// Registered after etcd's, so run before it: the server stops first.
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("%v", err)
		}
	})
	t.Logf("kube-apiserver %s (pid %d) ready in %v; kubeconfig %s", s.URL(), s.PID(), s.StartTime.Round(10e6), s.Kubeconfig)
	return s
}
