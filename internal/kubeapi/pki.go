package kubeapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The files of a PKI directory.
const (
	CACertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	ServerCertFile = "apiserver.crt"
	ServerKeyFile  = "apiserver.key"
	// SAKeyFile signs service account tokens; SAPubFile verifies them.
	SAKeyFile = "sa.key"
	SAPubFile = "sa.pub"
)

// certLifetime is long enough for a lab left running, short enough to be
// obviously a lab's.
const certLifetime = 30 * 24 * time.Hour

// PKI is a certificate authority of its own, on disk in Dir: the API
// server's serving certificate for the names and addresses it was made
// for, the service-account signing key, and client certificates on demand.
// The API server trusts every client certificate the CA signs
// (--client-ca-file).
type PKI struct {
	Dir   string
	ca    *x509.Certificate
	caKey crypto.Signer
	caPEM []byte
}

// NewPKI makes a CA and the server's keys in dir (created 0700), for a
// server reached at hosts (IP addresses or DNS names; the in-cluster
// names kubernetes, kubernetes.default.svc... are always included).
func NewPKI(dir string, hosts []string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kube PKI: %w", err)
	}
	now := time.Now().Add(-time.Minute) // a little slack for clocks
	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "twill-kube-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := sign(caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: make the CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, ca: ca, caKey: caKey, caPEM: certPEM(caDER)}
	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		writeFile(filepath.Join(dir, CACertFile), p.caPEM),
		writeFile(filepath.Join(dir, caKeyFile), caKeyPEM),
	); err != nil {
		return nil, fmt.Errorf("kube PKI: %w", err)
	}

	// The serving certificate.
	srv := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			srv.IPAddresses = append(srv.IPAddresses, ip)
		} else if h != "" {
			srv.DNSNames = append(srv.DNSNames, h)
		}
	}
	srv.IPAddresses = append(srv.IPAddresses, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	crt, key, err := p.issue(srv)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: the serving certificate: %w", err)
	}

	// The service-account signing key.
	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	if err := errors.Join(
		writeFile(filepath.Join(dir, ServerCertFile), crt),
		writeFile(filepath.Join(dir, ServerKeyFile), key),
		writeFile(filepath.Join(dir, SAKeyFile), saKeyPEM),
		writeFile(filepath.Join(dir, SAPubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub})),
	); err != nil {
		return nil, fmt.Errorf("kube PKI: %w", err)
	}
	return p, nil
}

// LoadPKI reads the CA a NewPKI wrote into dir, to issue more client
// certificates (from another process, say).
func LoadPKI(dir string) (*PKI, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("kube PKI: %w", err)
	}
	keyBytes, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("kube PKI: %w", err)
	}
	cb, _ := pem.Decode(caPEM)
	kb, _ := pem.Decode(keyBytes)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("kube PKI: %s: %s or %s is not PEM", dir, CACertFile, caKeyFile)
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: %s: %w", CACertFile, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: %s: %w", caKeyFile, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("kube PKI: %s: not a signing key", caKeyFile)
	}
	return &PKI{Dir: dir, ca: ca, caKey: signer, caPEM: caPEM}, nil
}

// CAPEM is the CA's certificate, PEM-encoded.
func (p *PKI) CAPEM() []byte { return p.caPEM }

// ClientCert issues a client certificate for user in groups (the API
// server takes the user from the common name, the groups from the
// organizations; system:masters is the group RBAC lets do anything).
// It returns the certificate and its key, PEM-encoded.
func (p *PKI) ClientCert(user string, groups ...string) (crt, key []byte, err error) {
	if user == "" {
		return nil, nil, errors.New("kube PKI: client certificate: empty user name")
	}
	return p.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// issue signs tmpl with the CA, for a new key.
func (p *PKI) issue(tmpl *x509.Certificate) (crt, key []byte, err error) {
	k, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = p.ca.NotAfter
	der, err := sign(tmpl, p.ca, k.Public(), p.caKey)
	if err != nil {
		return nil, nil, err
	}
	kp, err := keyPEM(k)
	if err != nil {
		return nil, nil, err
	}
	return certPEM(der), kp, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: generate a key: %w", err)
	}
	return k, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, by crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, by)
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("kube PKI: encode a key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func writeFile(path string, b []byte) error {
	return os.WriteFile(path, b, 0o600)
}
