// Package kubeapi runs a real Kubernetes API server for twill's tests and
// labs: the official kube-apiserver (and, for node IPAM, the official
// kube-controller-manager), built by `make kube` from the k8s.io/kubernetes
// module into build/kube, against an etcd, with a PKI of its own made in
// Go (NewPKI). Start runs the server as a child process and waits for
// /readyz; APIServerArgs gives its flags to callers that start it their
// own way (a lab's hub namespace); ForTest is Start for a test, with an
// embedded etcd, cleaned up with the test.
//
// It is not a way to run Kubernetes for real: the flags trade safety for a
// fast start (no priority and fairness, few admission plugins, one etcd),
// and it must not be used by twilld or the CNI plugin. It never stops a
// process it did not start.
package kubeapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/twillnet/twill/internal/binaries"
)

// Names of the binaries `make kube` builds.
const (
	APIServerBinary         = "kube-apiserver"
	ControllerManagerBinary = "kube-controller-manager"
)

// Admin is the user of the admin kubeconfig; MastersGroup is the group
// RBAC allows everything.
const (
	Admin        = "twill-admin"
	MastersGroup = "system:masters"
)

// DefaultServiceCIDR is the service network when Config says none; it lies
// outside the pod networks twill's labs use (10.244.0.0/16).
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/24")

// ReadyTimeout bounds the wait for /readyz; a loaded machine takes its
// time.
const ReadyTimeout = 2 * time.Minute

// disabledAdmission are the admission plugins on by default that twill's
// tests have no use for (quotas, storage, certificates, webhooks and
// admission policies); NamespaceLifecycle, ServiceAccount, PodSecurity,
// Priority and TaintNodesByCondition stay, as in a real cluster.
var disabledAdmission = []string{
	"LimitRanger", "DefaultStorageClass", "PersistentVolumeClaimResize", "DefaultTolerationSeconds",
	"MutatingAdmissionWebhook", "ValidatingAdmissionWebhook", "ResourceQuota",
	"StorageObjectInUseProtection", "PodGroupProtection", "RuntimeClass", "CertificateApproval",
	"CertificateSigning", "ClusterTrustBundleAttest", "CertificateSubjectRestriction",
	"DefaultIngressClass", "PodTopologyLabels", "MutatingAdmissionPolicy",
	"ValidatingAdmissionPolicy", "NodeDeclaredFeatureValidator", "PodResizeValidator",
}

// BinDir is where the Kubernetes binaries are: $TWILL_KUBE_DIR, else
// build/kube of twill's source tree holding the working directory.
func BinDir() (string, error) {
	if d := os.Getenv("TWILL_KUBE_DIR"); d != "" {
		return d, nil
	}
	root, err := binaries.ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("find the Kubernetes binaries: %w (or set TWILL_KUBE_DIR)", err)
	}
	return filepath.Join(root, "build", "kube"), nil
}

// ErrNotBuilt says a Kubernetes binary is missing; `make kube` builds it.
var ErrNotBuilt = errors.New("not built: `make kube` builds it")

// Binary is the path of the Kubernetes binary name (APIServerBinary,
// ControllerManagerBinary); the error wraps ErrNotBuilt when it is missing.
func Binary(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s: %w", p, ErrNotBuilt)
	}
	return p, nil
}

// Config describes an API server.
type Config struct {
	// Dir holds the PKI, the admin kubeconfig and the server's log.
	// Required.
	Dir string
	// EtcdURL is etcd's client URL. Required.
	EtcdURL string
	// EtcdPrefix is the key prefix of the server's objects (default
	// /registry).
	EtcdPrefix string
	// Addr is where the server listens and is reached (default 127.0.0.1).
	Addr netip.Addr
	// Port is the HTTPS port; 0 takes a free one.
	Port int
	// ServiceCIDR is the service network (default DefaultServiceCIDR).
	ServiceCIDR netip.Prefix
	// PodSecurity is the Pod Security Standard enforced in namespaces
	// without a pod-security.kubernetes.io/enforce label: privileged
	// (upstream's default when empty), baseline or restricted.
	PodSecurity string
	// DieWithParent kills the server when the process that started it
	// ends (Linux), so that a test killed by its timeout leaves nothing
	// behind. A lab's server outlives the command that started it.
	DieWithParent bool
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		return errors.New("kube-apiserver: Config.Dir is required")
	}
	if c.EtcdURL == "" {
		return errors.New("kube-apiserver: Config.EtcdURL is required")
	}
	switch c.PodSecurity {
	case "", "privileged", "baseline", "restricted":
	default:
		return fmt.Errorf("kube-apiserver: Config.PodSecurity %q: want privileged, baseline or restricted", c.PodSecurity)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("kube-apiserver: Config.Port %d: want 0..65535", c.Port)
	}
	*c = c.withDefaults()
	return nil
}

// withDefaults is c with the defaults of the fields left empty.
func (c Config) withDefaults() Config {
	if !c.Addr.IsValid() {
		c.Addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = DefaultServiceCIDR
	}
	return c
}

// URL is the server's address for clients.
func (c Config) URL() string {
	c = c.withDefaults()
	return "https://" + net.JoinHostPort(c.Addr.String(), strconv.Itoa(c.Port))
}

// admissionFile is the admission configuration APIServerArgs names when
// Config.PodSecurity is set; WriteAdmissionConfig writes it.
const admissionFile = "admission.yaml"

// WriteAdmissionConfig writes the admission configuration c needs into
// pki.Dir (nothing when it needs none).
func (c Config) WriteAdmissionConfig(pki *PKI) error {
	if c.PodSecurity == "" {
		return nil
	}
	conf := `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: ` + c.PodSecurity + `
        enforce-version: latest
`
	return writeFile(filepath.Join(pki.Dir, admissionFile), []byte(conf))
}

// APIServerArgs are kube-apiserver's flags for c (with its Port set) and
// the PKI in pki.Dir (and the file of WriteAdmissionConfig).
func (c Config) APIServerArgs(pki *PKI) []string {
	c = c.withDefaults()
	f := func(name string) string { return filepath.Join(pki.Dir, name) }
	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=" + c.Addr.String(),
		"--advertise-address=" + c.Addr.String(),
		"--secure-port=" + strconv.Itoa(c.Port),
		"--cert-dir=" + pki.Dir,
		"--tls-cert-file=" + f(ServerCertFile),
		"--tls-private-key-file=" + f(ServerKeyFile),
		"--client-ca-file=" + f(CACertFile),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f(SAPubFile),
		"--service-account-signing-key-file=" + f(SAKeyFile),
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--disable-admission-plugins=" + strings.Join(disabledAdmission, ","),
		"--enable-priority-and-fairness=false",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}
	if c.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix="+c.EtcdPrefix)
	}
	if c.PodSecurity != "" {
		args = append(args, "--admission-control-config-file="+f(admissionFile))
	}
	return args
}

// Process is a Kubernetes binary started by this package.
type Process struct {
	// Log is the path of its output.
	Log    string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

// start starts bin with args, its output to logPath.
func start(bin string, args []string, logPath string, dieWithParent bool) (*Process, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr(dieWithParent)
	// Linux kills a child with the parent's thread, not the process: start
	// it from a goroutine of its own, whose thread outlives any caller's
	// locked to a network namespace.
	started := make(chan error, 1)
	go func() { started <- cmd.Start() }()
	err = <-started
	out.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &Process{Log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Stop ends the process: SIGTERM, SIGKILL if it has not ended 10 s later.
// It returns once the process has ended; stopping it again does nothing.
func (p *Process) Stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", filepath.Base(p.cmd.Path), p.PID(), err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", filepath.Base(p.cmd.Path), p.PID(), err)
	}
	<-p.exited
	return nil
}

// LogTail is the end of the process's log, for errors.
func (p *Process) LogTail() string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(bytes.TrimSpace(b))
}

// Server is a running kube-apiserver.
type Server struct {
	*Process
	Config
	// Kubeconfig is the path of the admin's kubeconfig (group
	// system:masters).
	Kubeconfig string
	PKI        *PKI
	// StartTime is how long the server took from start to ready.
	StartTime time.Duration
	admin     *rest.Config
}

// Start makes a PKI in cfg.Dir/pki, starts kube-apiserver and waits until
// it is ready (ReadyTimeout). With cfg.Port 0 it takes a free port, and
// tries another when a process of someone else's took it meanwhile.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	bin, err := Binary(APIServerBinary)
	if err != nil {
		return nil, err
	}
	pki, err := NewPKI(filepath.Join(cfg.Dir, "pki"), []string{cfg.Addr.String()})
	if err != nil {
		return nil, err
	}
	if err := cfg.WriteAdmissionConfig(pki); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		s, err := startOnce(ctx, cfg, bin, pki)
		if err == nil || cfg.Port != 0 || attempt == 3 || !errors.Is(err, errPortTaken) {
			return s, err
		}
	}
}

var errPortTaken = errors.New("port taken")

func startOnce(ctx context.Context, cfg Config, bin string, pki *PKI) (*Server, error) {
	if cfg.Port == 0 {
		port, err := freePort(cfg.Addr)
		if err != nil {
			return nil, err
		}
		cfg.Port = port
	}
	s := &Server{Config: cfg, PKI: pki, Kubeconfig: filepath.Join(cfg.Dir, "admin.kubeconfig")}
	admin, err := RESTConfig(cfg.URL(), pki, Admin, MastersGroup)
	if err != nil {
		return nil, err
	}
	s.admin = admin
	if err := WriteKubeconfig(s.Kubeconfig, admin); err != nil {
		return nil, err
	}
	began := time.Now()
	p, err := start(bin, cfg.APIServerArgs(pki), filepath.Join(cfg.Dir, "kube-apiserver.log"), cfg.DieWithParent)
	if err != nil {
		return nil, err
	}
	s.Process = p
	if err := WaitReady(ctx, admin, p.exited); err != nil {
		tail := p.LogTail()
		err = errors.Join(fmt.Errorf("kube-apiserver at %s: %w", cfg.URL(), err), p.Stop())
		if strings.Contains(tail, "address already in use") {
			err = errors.Join(err, errPortTaken)
		}
		return nil, fmt.Errorf("%w\n%s (end of %s):\n%s", err, bin, p.Log, tail)
	}
	s.StartTime = time.Since(began)
	return s, nil
}

// RESTConfig is a copy of the admin's client configuration.
func (s *Server) RESTConfig() *rest.Config { return rest.CopyConfig(s.admin) }

// RESTConfig is a client configuration for url as user in groups, with a
// client certificate pki issues.
func RESTConfig(url string, pki *PKI, user string, groups ...string) (*rest.Config, error) {
	crt, key, err := pki.ClientCert(user, groups...)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host: url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pki.CAPEM(),
			CertData: crt,
			KeyData:  key,
		},
	}, nil
}

// WriteKubeconfig writes cfg (a server, its CA and a client certificate,
// as RESTConfig makes) as a kubeconfig file (mode 0600), its one context
// current.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["twill"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["twill"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["twill"] = &clientcmdapi.Context{Cluster: "twill", AuthInfo: "twill"}
	kc.CurrentContext = "twill"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

// WaitReady polls the server's /readyz until it answers ok, ctx ends,
// ReadyTimeout passes, or exited (when not nil) is closed.
func WaitReady(ctx context.Context, cfg *rest.Config, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	hc.Timeout = 5 * time.Second
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Host+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err != nil {
			last = err.Error()
		} else {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, lastLines(body.String(), 5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready (%v); last answer of /readyz: %s", ctx.Err(), last)
		case <-exited:
			return errors.New("exited before it was ready")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

func freePort(addr netip.Addr) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
