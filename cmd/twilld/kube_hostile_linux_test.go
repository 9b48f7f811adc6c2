package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/lease/kube"
)

// TestKubeHostileNodes runs twilld --kube-subnet-mgr (host-gw) on two
// nodes against a real kube-apiserver and plays broken Nodes at them:
//   - a newer Node "impostor" with node2's podCIDR, changed again and
//     again: node1 keeps routing the subnet to node2 (never flips), and
//     readiness and the API name both Nodes and the CIDR; the impostor
//     deleted, readiness is back;
//   - a Node "copycat" publishing node1's own public IP: not routed by
//     node1, said so naming it;
//   - a Node deleted and registered again under its name with another
//     podCIDR, a peer's and node2's own (its twilld running): the old
//     route goes, the new one comes, node2's subnet file follows.
func TestKubeHostileNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld, starts etcd, kube-apiserver and twilld; skipped with -short")
	}
	backendtest.NeedRoot(t)
	lab := newKubeLab(t, 3)
	ctx := context.Background()
	dir := t.TempDir()
	twilld := filepath.Join(binaries.ForTest(t), "twilld")
	conf := netConfigFile(t, dir, "host-gw")
	n1, n2, n3 := lab.Nodes[0], lab.Nodes[1], lab.Nodes[2]
	p := kube.DefaultPrefix
	lab.createNode(t, "node1", n1.Subnet.String(), nil)
	lab.createNode(t, "node2", n2.Subnet.String(), nil)
	for i, n := range []*backendtest.Node{n1, n2} {
		name := fmt.Sprintf("node%d", i+1)
		start(t, name, n.Name, twilld, "msg=ready", "--kube-subnet-mgr", "--kubeconfig-file", lab.Kubeconfig,
			"--net-config-path", conf, "--iface", "eth0", "--node-name", name,
			"--subnet-file", filepath.Join(dir, name+".env"), "--listen", n.PublicIP.String()+":9180")
	}
	route := func(n *backendtest.Node, dst string) string { return strings.TrimSpace(n.IP(t, "route", "show", dst)) }
	curl := func(n *backendtest.Node, path string) string {
		out, _ := exec.Command("ip", "netns", "exec", n.Name, "curl", "-s", "http://"+n1.PublicIP.String()+":9180"+path).CombinedOutput()
		return string(out)
	}
	via2 := "via " + n2.PublicIP.String()
	backendtest.Eventually(t, 15*time.Second, func() string {
		if r := route(n1, n2.Subnet.String()); !strings.Contains(r, via2) {
			return fmt.Sprintf("node1's route to node2: %q", r)
		}
		return ""
	})
	hostGW := func(ip string) map[string]string {
		return map[string]string{p + "/kube-subnet-manager": "true", p + "/backend-type": "host-gw", p + "/backend-data": "null", p + "/public-ip": ip}
	}
	patch := func(name, body string) {
		t.Helper()
		if _, err := lab.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	del := func(name string) {
		t.Helper()
		if err := lab.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// A newer Node with node2's podCIDR.
	time.Sleep(1100 * time.Millisecond) // creation times are in seconds
	lab.createNode(t, "impostor", n2.Subnet.String(), hostGW(n3.PublicIP.String()))
	time.Sleep(time.Second)
	for i := range 5 {
		patch("impostor", fmt.Sprintf(`{"metadata":{"annotations":{"twill.test/round":"%d"}}}`, i))
		patch("impostor", fmt.Sprintf(`{"metadata":{"annotations":{%q:"192.168.56.%d"}}}`, p+"/public-ip", 200+i))
		time.Sleep(200 * time.Millisecond)
		if r := route(n1, n2.Subnet.String()); !strings.Contains(r, via2) {
			t.Errorf("after the impostor's change %d, node1 routes node2's %s: %q, want %s", i, n2.Subnet, r, via2)
		}
	}
	backendtest.Eventually(t, 15*time.Second, func() string {
		if r := curl(n1, "/readyz?verbose"); !strings.Contains(r, `"impostor"`) {
			return "node1's readiness does not name the impostor:\n" + r
		}
		return ""
	})
	ready := curl(n1, "/readyz?verbose")
	for _, want := range []string{"[-]peers-routable failed", `"impostor"`, `"node2"`, n2.Subnet.String()} {
		if !strings.Contains(ready, want) {
			t.Errorf("node1's readiness does not say %s:\n%s", want, ready)
		}
	}
	if api := curl(n1, "/api/v1/node"); !strings.Contains(api, `"node": "impostor"`) || !strings.Contains(api, n2.Subnet.String()) {
		t.Errorf("node1's API does not list the impostor's subnet as a problem:\n%s", api)
	}
	del("impostor")
	backendtest.Eventually(t, 15*time.Second, func() string {
		if r := curl(n1, "/readyz?verbose"); !strings.Contains(r, "[+]peers-routable ok") {
			return "node1 not ready again after the impostor was deleted:\n" + r
		}
		return ""
	})
	if r := route(n1, n2.Subnet.String()); !strings.Contains(r, via2) {
		t.Errorf("after the impostor was deleted, node1 routes node2's subnet: %q", r)
	}

	// A Node publishing node1's own public IP.
	lab.createNode(t, "copycat", n3.Subnet.String(), hostGW(n1.PublicIP.String()))
	backendtest.Eventually(t, 15*time.Second, func() string {
		if r := curl(n1, "/readyz?verbose"); !strings.Contains(r, "copycat publishes this node's own public IP "+n1.PublicIP.String()) {
			return "node1's readiness does not say the copycat publishes its address:\n" + r
		}
		return ""
	})
	if r := route(n1, n3.Subnet.String()); r != "" {
		t.Errorf("node1 routes the copycat's subnet: %q", r)
	}
	del("copycat")

	// node3 registered, deleted, and registered again with another podCIDR.
	lab.createNode(t, "node3", n3.Subnet.String(), hostGW(n3.PublicIP.String()))
	via3 := "via " + n3.PublicIP.String()
	backendtest.Eventually(t, 15*time.Second, func() string {
		if r := route(n1, n3.Subnet.String()); !strings.Contains(r, via3) {
			return fmt.Sprintf("node1's route to node3: %q", r)
		}
		return ""
	})
	del("node3")
	const moved = "10.244.77.0/24"
	lab.createNode(t, "node3", moved, hostGW(n3.PublicIP.String()))
	backendtest.Eventually(t, 15*time.Second, func() string {
		old, now := route(n1, n3.Subnet.String()), route(n1, moved)
		if old != "" || !strings.Contains(now, via3) {
			return fmt.Sprintf("node1 after node3 came back with %s: old route %q, new %q", moved, old, now)
		}
		return ""
	})

	// The same for node2, whose twilld runs: it takes the new podCIDR,
	// and node1 routes it there instead of the old one.
	del("node2")
	const moved2 = "10.244.78.0/24"
	time.Sleep(500 * time.Millisecond)
	lab.createNode(t, "node2", moved2, nil)
	recreated := time.Now()
	defer func() {
		t.Logf("node2 re-created with %s: routed there by node1 %v later", moved2, time.Since(recreated).Round(time.Millisecond))
	}()
	backendtest.Eventually(t, 30*time.Second, func() string {
		old, now := route(n1, n2.Subnet.String()), route(n1, moved2)
		env, _ := os.ReadFile(filepath.Join(dir, "node2.env"))
		if old != "" || !strings.Contains(now, via2) || !strings.Contains(string(env), "TWILL_SUBNET=10.244.78.1/24") {
			return fmt.Sprintf("after node2 came back with %s: node1's old route %q, new %q; node2's subnet file:\n%s", moved2, old, now, env)
		}
		return ""
	})
}
