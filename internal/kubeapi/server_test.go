package kubeapi

import (
	"context"
	"os"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
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
