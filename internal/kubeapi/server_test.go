package kubeapi

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
)

// A Node created through the real server is read back, through the admin
// kubeconfig file as a client would load it; the server runs by the PID
// it reports and is gone after Stop.
func TestServerNode(t *testing.T) {
	s := ForTest(t)
	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(cfg)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{"twill.example/backend-type": "vxlan"}},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
	}
	if _, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node: %v", err)
	}
	got, err := kc.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if got.Spec.PodCIDR != "10.244.1.0/24" || got.Annotations["twill.example/backend-type"] != "vxlan" || got.UID == "" {
		t.Errorf("node read back: podCIDR %q, annotations %v, uid %q", got.Spec.PodCIDR, got.Annotations, got.UID)
	}
	// An invalid object is refused by the server's validation.
	bad := node.DeepCopy()
	bad.Name, bad.Spec.PodCIDR, bad.Spec.PodCIDRs = "node-b", "10.244.2.0/33", nil
	if _, err := kc.CoreV1().Nodes().Create(ctx, bad, metav1.CreateOptions{}); err == nil {
		t.Errorf("node with podCIDR 10.244.2.0/33 accepted")
	}

	pid := s.PID()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("kube-apiserver pid %d still there after Stop", pid)
	}
}

// kube-controller-manager, as the node IPAM controller, gives Nodes pod
// CIDRs from the cluster network, one per node.
func TestControllerManagerNodeIPAM(t *testing.T) {
	s := ForTest(t)
	if _, err := Binary(ControllerManagerBinary); err != nil {
		t.Skipf("needs kube-controller-manager: %v", err)
	}
	if _, err := s.StartControllerManager(&NodeIPAM{ClusterCIDR: netip.MustParsePrefix("10.96.0.0/16"), MaskSize: 24}); err == nil {
		t.Error("a cluster network over the service network accepted")
	}
	if _, err := s.StartControllerManager(nil); err == nil {
		t.Error("a controller manager with no controller started")
	}
	kcm, err := s.StartControllerManager(&NodeIPAM{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), MaskSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kcm.Stop() })
	ctx := context.Background()
	kc := kubernetes.NewForConfigOrDie(s.RESTConfig())
	began := time.Now()
	for _, n := range []string{"ipam-a", "ipam-b"} {
		if _, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]string{}
	for time.Since(began) < time.Minute && len(seen) < 2 {
		select {
		case <-kcm.Exited():
			t.Fatalf("kube-controller-manager exited:\n%s", kcm.LogTail())
		case <-time.After(200 * time.Millisecond):
		}
		l, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range l.Items {
			if n.Spec.PodCIDR != "" {
				seen[n.Name] = n.Spec.PodCIDR
			}
		}
	}
	if len(seen) != 2 {
		t.Fatalf("pod CIDRs after %v: %v; want both nodes'\n%s", time.Since(began).Round(time.Millisecond), seen, kcm.LogTail())
	}
	t.Logf("pod CIDRs %v within %v of the nodes' creation", seen, time.Since(began).Round(time.Millisecond))
	net := netip.MustParsePrefix("10.244.0.0/16")
	a, b := netip.MustParsePrefix(seen["ipam-a"]), netip.MustParsePrefix(seen["ipam-b"])
	if a == b || a.Bits() != 24 || b.Bits() != 24 || !net.Contains(a.Addr()) || !net.Contains(b.Addr()) {
		t.Errorf("pod CIDRs %s and %s: want two /24 in %s", a, b, net)
	}
}

// BenchmarkStart: how long kube-apiserver takes from its start to /readyz
// (an etcd per run, started beforehand).
func BenchmarkStart(b *testing.B) {
	if _, err := Binary(APIServerBinary); err != nil {
		b.Skipf("needs a real kube-apiserver: %v", err)
	}
	var total time.Duration
	for b.Loop() { // b.Loop, not b.N: the function runs once, whatever -benchtime says
		dir := b.TempDir()
		etcd, err := embedded.Start(embedded.Config{DataDir: filepath.Join(dir, "etcd")})
		if err != nil {
			b.Fatal(err)
		}
		s, err := Start(context.Background(), Config{Dir: dir, EtcdURL: etcd.ClientURL(), DieWithParent: true})
		if err != nil {
			b.Fatal(err)
		}
		total += s.StartTime
		_ = s.Stop()
		etcd.Close()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/ready")
}
