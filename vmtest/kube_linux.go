package vmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/kube"
	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/netconf"
)

// The Kubernetes store of a lab (Spec.Store "kube"): the hub runs etcd and a
// real kube-apiserver at <hub>:6443 (internal/kubeapi); the lab registers
// each node as a Node object with a podCIDR, as the node IPAM controller
// would; every twilld runs with --kube-subnet-mgr and a kubeconfig, and
// reads the network config from a file.

// kubeAPIPort is where the lab's API server listens on the hub's address.
const kubeAPIPort = 6443

// Store is the lab's lease store: "etcd" or "kube".
func (l *Lab) Store() string {
	if s := l.snapshot().Spec.Store; s != "" {
		return s
	}
	return "etcd"
}

// kubeNodeName is the Node object of lab node n (twilld's --node-name).
func kubeNodeName(spec Spec, n nodeState) string { return spec.Name + "-" + n.Name }

// startKubeAPI starts kube-apiserver in the hub on the lab's etcd, writes
// the kubeconfig the nodes use and the network config file, and registers
// a Node with a podCIDR for each node.
func (l *Lab) startKubeAPI(ctx context.Context) error {
	st := l.st
	bin, err := kubeapi.Binary(kubeapi.APIServerBinary)
	if err != nil {
		return fmt.Errorf("store kube: %w", err)
	}
	dir := filepath.Join(st.Dir, "kube")
	cfg := kubeapi.Config{Dir: dir, EtcdURL: st.EtcdURL, EtcdPrefix: "/registry", Addr: st.HubAddr, Port: kubeAPIPort,
		ServiceCIDR: kubeapi.DefaultServiceCIDR}
	pki, err := kubeapi.NewPKI(filepath.Join(dir, "pki"), []string{st.HubAddr.String()})
	if err != nil {
		return err
	}
	rc, err := kubeapi.RESTConfig(cfg.URL(), pki, kubeapi.Admin, kubeapi.MastersGroup)
	if err != nil {
		return err
	}
	st.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	st.NetConfigPath = filepath.Join(st.Dir, "net-conf.json")
	if err := errors.Join(kubeapi.WriteKubeconfig(st.Kubeconfig, rc), os.WriteFile(st.NetConfigPath, []byte(st.Spec.NetConfig), 0o644)); err != nil {
		return err
	}
	logPath := filepath.Join(st.Dir, "kube-apiserver.log")
	p, off, err := startIn(st.HubNetNS, bin, cfg.APIServerArgs(pki), logPath)
	if err != nil {
		return err
	}
	st.KubeAPI = p
	if err := writeState(st); err != nil {
		return err
	}
	if err := waitLog(ctx, p, logPath, off, "Serving securely", 60*time.Second); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	c, err := l.kubeClient()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := kubeapi.WaitReady(wctx, l.kubeREST(rc), nil); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	l.log.Info("kube-apiserver started", "url", cfg.URL(), "pid", p.PID)
	return l.registerNodes(ctx, c)
}

// kubeREST makes rc dial from the hub's namespace: the API server listens
// there, and the process that drives the lab runs outside it.
func (l *Lab) kubeREST(rc *rest.Config) *rest.Config {
	hub := l.snapshot().HubNetNS
	if hub == "" {
		hub = l.st.HubNetNS
	}
	rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := namespace.DoName(hub, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return rc
}

// kubeClient is an admin client of the lab's API server.
func (l *Lab) kubeClient() (kubernetes.Interface, error) {
	st := l.snapshot()
	if st.Kubeconfig == "" {
		st = l.st
	}
	if st.Kubeconfig == "" {
		return nil, errors.New("the lab's store is not kube")
	}
	rc, err := kube.RESTConfig("", st.Kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(l.kubeREST(rc))
}

// registerNodes creates a Node for each node with the i-th subnet of the
// network as its podCIDR.
func (l *Lab) registerNodes(ctx context.Context, c kubernetes.Interface) error {
	st := l.st
	cfg, err := netconf.Parse([]byte(st.Spec.NetConfig))
	if err != nil {
		return err
	}
	for i, n := range st.Nodes {
		s := cfg.Subnet(i)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: kubeNodeName(st.Spec, n)},
			Spec: corev1.NodeSpec{PodCIDR: s.String(), PodCIDRs: []string{s.String()}}}
		if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("register node %s: %w", node.Name, err)
		}
	}
	return nil
}

// KubeLeases are the leases the lab's Node objects publish.
func (l *Lab) KubeLeases(ctx context.Context) ([]lease.Lease, error) {
	c, err := l.kubeClient()
	if err != nil {
		return nil, err
	}
	cfg, err := netconf.Parse([]byte(l.snapshot().Spec.NetConfig))
	if err != nil {
		return nil, err
	}
	ann, err := kube.NewAnnotations(kube.DefaultPrefix)
	if err != nil {
		return nil, err
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []lease.Lease
	for i := range nodes.Items {
		if ls, err := ann.NodeLease(&nodes.Items[i], kube.Families{V4: cfg.EnableIPv4, V6: cfg.EnableIPv6}); err == nil {
			out = append(out, ls)
		}
	}
	return out, nil
}

// DeleteKubeNode deletes node's Node object, as kubectl delete node does.
func (l *Lab) DeleteKubeNode(ctx context.Context, node string) error {
	st := l.snapshot()
	i, err := findNode(st, l.name, node)
	if err != nil {
		return err
	}
	c, err := l.kubeClient()
	if err != nil {
		return err
	}
	name := kubeNodeName(st.Spec, st.Nodes[i])
	if err := c.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	l.log.Info("kube node deleted", "node", name)
	return nil
}

// kubeTwilldArgs are twilld's store flags in a kube lab.
func kubeTwilldArgs(st *state) []string {
	return []string{"--kube-subnet-mgr", "--kubeconfig-file", st.Kubeconfig, "--net-config-path", st.NetConfigPath}
}

// KubeAPIAddr is the lab's API server URL (on the hub's address), with the
// admin kubeconfig; "" when the store is etcd.
func (l *Lab) KubeAPIAddr() (url, kubeconfig string) {
	st := l.snapshot()
	if st.Kubeconfig == "" {
		return "", ""
	}
	return "https://" + net.JoinHostPort(st.HubAddr.String(), fmt.Sprint(kubeAPIPort)), st.Kubeconfig
}
