package kubeapi

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The serving certificate verifies, under the CA, for the addresses and
// names it was made for and the in-cluster ones; a client certificate
// issued by a PKI loaded from disk carries the user and groups, and
// verifies as a client's; no key is readable by others.
func TestPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := NewPKI(dir, []string{"192.168.56.1", "hub.lab"})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.CAPEM())
	srv, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(srv.Certificate[0])
	for _, host := range []string{"192.168.56.1", "hub.lab", "127.0.0.1", "localhost", "kubernetes.default.svc"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("serving certificate for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "10.0.0.1"}); err == nil {
		t.Error("serving certificate verifies for 10.0.0.1, which it was not made for")
	}

	loaded, err := LoadPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := loaded.ClientCert("system:serviceaccount:twill:twill", "system:serviceaccounts", "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(pair.Certificate[0])
	if c.Subject.CommonName != "system:serviceaccount:twill:twill" || !slices.Equal(slices.Sorted(slices.Values(c.Subject.Organization)), []string{"system:authenticated", "system:serviceaccounts"}) {
		t.Errorf("client certificate subject %v", c.Subject)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, _, err := loaded.ClientCert(""); err == nil {
		t.Error("a client certificate without a user issued")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, want none for group and others", e.Name(), fi.Mode().Perm())
		}
	}
	if _, err := LoadPKI(t.TempDir()); err == nil {
		t.Error("LoadPKI of an empty directory succeeded")
	}
}

// APIServerArgs fills what the Config leaves empty, so that a caller
// starting the server its own way gets the same flags as Start.
func TestAPIServerArgs(t *testing.T) {
	p := &PKI{Dir: "/pki"}
	args := Config{EtcdURL: "http://127.0.0.1:2379", Port: 6443, PodSecurity: "baseline"}.APIServerArgs(p)
	for _, want := range []string{"--bind-address=127.0.0.1", "--secure-port=6443", "--service-cluster-ip-range=10.96.0.0/24",
		"--authorization-mode=RBAC", "--etcd-servers=http://127.0.0.1:2379", "--client-ca-file=/pki/ca.crt",
		"--admission-control-config-file=/pki/admission.yaml"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %s", args, want)
		}
	}
	for _, bad := range []Config{{EtcdURL: "x"}, {Dir: "d"}, {Dir: "d", EtcdURL: "x", PodSecurity: "strict"}, {Dir: "d", EtcdURL: "x", Port: 70000}} {
		if err := bad.defaults(); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}
