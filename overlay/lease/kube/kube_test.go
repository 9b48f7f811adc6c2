package kube_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/kube"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

// These tests run against a real kube-apiserver (internal/kubeapi: built
// by `make kube`; they skip, saying so, when it is not built), one per test.

func admin(t *testing.T) (kubernetes.Interface, *kubeapi.Server) {
	t.Helper()
	s := kubeapi.ForTest(t)
	c, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

const netConfJSON = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

func writeNetConf(t *testing.T, conf string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// logBuffer is a slog handler's output, safe to read while written.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newRegistry(t *testing.T, c kubernetes.Interface, node, prefix, conf string) (*kube.Registry, *logBuffer) {
	t.Helper()
	var logs logBuffer
	r, err := kube.New(kube.Config{Client: c, NodeName: node, Prefix: prefix, NetConfPath: writeNetConf(t, conf),
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, &logs
}

func createNode(t *testing.T, c kubernetes.Interface, name, podCIDR string, ann map[string]string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	n, err := c.CoreV1().Nodes().Create(leasetest.Context(t), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return n
}

func getNode(t *testing.T, c kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(leasetest.Context(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func patchNode(t *testing.T, c kubernetes.Interface, name, patch string, sub ...string) {
	t.Helper()
	if _, err := c.CoreV1().Nodes().Patch(leasetest.Context(t), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, sub...); err != nil {
		t.Fatalf("patch node %s with %s: %v", name, patch, err)
	}
}

func vxlanAttrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:42:c0:a8:38:0b"}`),
		Twill:       &lease.NodeInfo{Dashboard: "http://" + ip + ":9180"}}
}

// acquireLater runs k.Acquire and delivers its lease (an error fails t).
func acquireLater(t *testing.T, ctx context.Context, k *lease.Keeper) <-chan lease.Lease {
	got := make(chan lease.Lease, 1)
	go func() {
		l, err := k.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	return got
}

// waitPending waits until k says why it waits, at most within.
func waitPending(k *lease.Keeper, within time.Duration) {
	for deadline := time.Now().Add(within); k.Pending() == "" && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// A node without a podCIDR waits, saying so and what sets it; when the
// CIDR is set it takes it at once, publishes flannel's annotations on the
// node and, once set up, NetworkUnavailable=False.
func TestClaimWaitsForPodCIDR(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	createNode(t, c, "wait-1", "", nil)
	reg, logs := newRegistry(t, c, "wait-1", kube.FlannelPrefix, netConfJSON)
	cfg := leasetest.MustConfig(t, netConfJSON)
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: cfg, Attrs: vxlanAttrs("192.168.56.11"), TTL: 24 * time.Hour},
		Log: slog.New(slog.NewTextHandler(logs, nil))}
	got := acquireLater(t, ctx, k)
	waitPending(k, 10*time.Second)
	for _, want := range []string{`node "wait-1" pod cidr not assigned`, "kube-controller-manager", "--allocate-node-cidrs", "spec.podCIDR"} {
		if !strings.Contains(k.Pending(), want) {
			t.Errorf("while waiting, Pending() = %q; want it to say %q", k.Pending(), want)
		}
	}
	if !strings.Contains(logs.String(), "pod cidr not assigned") {
		t.Errorf("the wait is not logged:\n%s", logs)
	}
	select {
	case l := <-got:
		t.Fatalf("acquired %v without a podCIDR", l.Subnet)
	case <-time.After(time.Second):
	}
	set := time.Now()
	patchNode(t, c, "wait-1", `{"spec":{"podCIDR":"10.244.3.0/24","podCIDRs":["10.244.3.0/24"]}}`)
	var l lease.Lease
	select {
	case l = <-got:
	case <-time.After(15 * time.Second):
		t.Fatalf("no lease 15 s after the podCIDR was set; pending %q", k.Pending())
	}
	t.Logf("lease %s taken %v after the podCIDR was set", l.Subnet, time.Since(set).Round(time.Millisecond))
	if l.Subnet != netip.MustParsePrefix("10.244.3.0/24") || l.Attrs.PublicIP.String() != "192.168.56.11" || k.Pending() != "" {
		t.Errorf("lease %+v, pending %q", l, k.Pending())
	}
	n := getNode(t, c, "wait-1")
	want := map[string]string{
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"02:42:c0:a8:38:0b"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.168.56.11",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/twill-dashboard":     "http://192.168.56.11:9180",
	}
	for k, v := range want {
		if n.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, n.Annotations[k], v)
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			t.Errorf("NetworkUnavailable set before the node was set up: %+v", c)
		}
	}
	if err := reg.Complete(ctx, l); err != nil {
		t.Fatal(err)
	}
	n = getNode(t, c, "wait-1")
	found := false
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			found = true
			if c.Status != corev1.ConditionFalse || c.Reason != kube.ReasonUp || c.Message == "" {
				t.Errorf("condition %+v, want NetworkUnavailable=False reason %s", c, kube.ReasonUp)
			}
		}
	}
	if !found {
		t.Errorf("no NetworkUnavailable condition: %+v", n.Status.Conditions)
	}
	// A renewal with the same attributes writes nothing.
	rv := n.ResourceVersion
	if _, err := reg.Update(ctx, l, vxlanAttrs("192.168.56.11"), 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := getNode(t, c, "wait-1"); n.ResourceVersion != rv {
		t.Errorf("a renewal with nothing new patched the node (resource version %s -> %s)", rv, n.ResourceVersion)
	}
}

// A podCIDR outside the Network, or one that is not a subnet, is an error
// naming it, and the keeper gives up rather than wait.
func TestClaimRefusesPodCIDROutsideNetwork(t *testing.T) {
	c, _ := admin(t)
	createNode(t, c, "outside-1", "10.99.1.0/24", nil)
	reg, _ := newRegistry(t, c, "outside-1", "", netConfJSON)
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: leasetest.MustConfig(t, netConfJSON), Attrs: vxlanAttrs("192.168.56.12"), TTL: time.Hour}}
	_, err := k.Acquire(leasetest.Context(t))
	if err == nil || !lease.IsPermanent(err) {
		t.Fatalf("Acquire: %v, want a permanent error", err)
	}
	for _, want := range []string{`"outside-1"`, "10.99.1.0/24", "10.244.0.0/16"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if n := getNode(t, c, "outside-1"); len(n.Annotations) > 0 && n.Annotations[kube.DefaultPrefix+"/kube-subnet-manager"] != "" {
		t.Errorf("a refused node was annotated: %v", n.Annotations)
	}
}

// flannelAnnotations are those flannel writes for a vxlan node at ip.
func flannelAnnotations(prefix, ip, mac string) map[string]string {
	return map[string]string{
		prefix + "/backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		prefix + "/backend-type":        "vxlan",
		prefix + "/kube-subnet-manager": "true",
		prefix + "/public-ip":           ip,
	}
}

// Peers are the nodes marked kube-subnet-manager=true with a podCIDR; the
// watcher sees them added, changed and gone (deleted, or unmarked) in
// order, and nothing for status updates or unmarked nodes.
func TestPeersFromNodes(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	createNode(t, c, "peers-own", "10.244.10.0/24", nil)
	reg, _ := newRegistry(t, c, "peers-own", "", netConfJSON)
	var col leasetest.Collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, col.Handle)

	createNode(t, c, "peers-a", "10.244.11.0/24", flannelAnnotations(p, "192.168.56.21", "02:00:00:00:00:21"))
	col.Wait(t, 1, 10*time.Second)
	createNode(t, c, "peers-b", "10.244.12.0/24", nil) // not marked: no peer
	createNode(t, c, "peers-c", "", flannelAnnotations(p, "192.168.56.23", "02:00:00:00:00:23"))
	patchNode(t, c, "peers-a", `{"metadata":{"labels":{"rack":"r1"}}}`) // nothing a lease says
	patchNode(t, c, "peers-a", `{"metadata":{"annotations":{"`+p+`/backend-data":"{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:aa\"}"}}}`)
	col.Wait(t, 2, 10*time.Second)
	patchNode(t, c, "peers-b", `{"metadata":{"annotations":{"`+p+`/kube-subnet-manager":"true","`+p+`/public-ip":"192.168.56.22","`+p+`/backend-type":"host-gw"}}}`)
	col.Wait(t, 3, 10*time.Second)
	patchNode(t, c, "peers-c", `{"spec":{"podCIDR":"10.244.13.0/24","podCIDRs":["10.244.13.0/24"]}}`)
	col.Wait(t, 4, 10*time.Second)
	if err := c.CoreV1().Nodes().Delete(ctx, "peers-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	col.Wait(t, 5, 10*time.Second)
	patchNode(t, c, "peers-b", `{"metadata":{"annotations":{"`+p+`/kube-subnet-manager":null}}}`)
	col.Wait(t, 6, 10*time.Second)
	time.Sleep(500 * time.Millisecond) // and nothing more comes
	evs := col.Wait(t, 6, time.Second)
	got := leasetest.Describe(evs)
	want := "added 10.244.11.0/24 peers-a; changed 10.244.11.0/24 peers-a; added 10.244.12.0/24 peers-b; " +
		"added 10.244.13.0/24 peers-c; expired 10.244.11.0/24 peers-a; expired 10.244.12.0/24 peers-b; "
	if got != want {
		t.Fatalf("events\n%s\nwant\n%s", got, want)
	}
	if d := string(evs[1].Lease.Attrs.BackendData); d != `{"VNI":1,"VtepMAC":"02:00:00:00:00:aa"}` {
		t.Errorf("changed event carries %s", d)
	}
	if evs[2].Lease.Attrs.BackendType != "host-gw" || evs[2].Lease.Attrs.NodeName() != "peers-b" {
		t.Errorf("host-gw peer %+v", evs[2].Lease.Attrs)
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) != 1 || leases[0].Subnet.String() != "10.244.13.0/24" {
		t.Errorf("List: %+v, %v; want only peers-c", leases, err)
	}
}

// A watcher further behind than the registry's history lists again and
// gets the difference (the conformance suite's compaction test, on nodes).
func TestWatchResumesBeyondHistory(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	createNode(t, c, "hist-own", "10.244.20.0/24", nil)
	r, err := kube.New(kube.Config{Client: c, NodeName: "hist-own", NetConfPath: writeNetConf(t, netConfJSON), History: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	createNode(t, c, "hist-stay", "10.244.21.0/24", flannelAnnotations(p, "192.168.56.31", "02:00:00:00:00:31"))
	createNode(t, c, "hist-change", "10.244.22.0/24", flannelAnnotations(p, "192.168.56.32", "02:00:00:00:00:32"))
	createNode(t, c, "hist-leave", "10.244.23.0/24", flannelAnnotations(p, "192.168.56.33", "02:00:00:00:00:33"))
	var col leasetest.Collector
	w := &lease.Watcher{Registry: r}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(wctx, col.Handle); close(done) }()
	col.Wait(t, 3, 10*time.Second)
	stop()
	<-done

	createNode(t, c, "hist-join", "10.244.24.0/24", flannelAnnotations(p, "192.168.56.34", "02:00:00:00:00:34"))
	patchNode(t, c, "hist-change", `{"metadata":{"annotations":{"`+p+`/public-ip":"192.168.56.42"}}}`)
	if err := c.CoreV1().Nodes().Delete(ctx, "hist-leave", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Wait until the registry saw all three (so that its history of 2 has
	// dropped what the watcher needs).
	deadline := time.Now().Add(10 * time.Second)
	for seen := false; !seen && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ls, _, _ := r.List(ctx)
		for _, l := range ls {
			seen = seen || (len(ls) == 3 && l.Attrs.PublicIP.String() == "192.168.56.42")
		}
	}
	wctx, stop = context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, col.Handle)
	evs := col.Wait(t, 6, 10*time.Second)[3:]
	got := leasetest.Describe(evs)
	for _, want := range []string{"expired 10.244.23.0/24 hist-leave", "added 10.244.24.0/24 hist-join", "changed 10.244.22.0/24 hist-change"} {
		if !strings.Contains(got, want) {
			t.Errorf("after falling behind: %s; missing %q", got, want)
		}
	}
	if !strings.HasPrefix(got, "expired") {
		t.Errorf("after falling behind: %s; want the removal first", got)
	}
}

// Release removes the node's mark (peers drop it); a renewal of a node that
// is gone is ErrNotFound, so the keeper acquires again (and waits).
func TestReleaseAndNodeGone(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	createNode(t, c, "gone-1", "10.244.30.0/24", nil)
	reg, _ := newRegistry(t, c, "gone-1", "", netConfJSON)
	req := lease.Request{Config: leasetest.MustConfig(t, netConfJSON), Attrs: vxlanAttrs("192.168.56.41"), TTL: time.Hour}
	l, err := lease.Acquire(ctx, reg, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, l); err != nil {
		t.Fatal(err)
	}
	n := getNode(t, c, "gone-1")
	for k := range n.Annotations {
		if strings.HasPrefix(k, kube.DefaultPrefix+"/") {
			t.Errorf("annotation %s left after release", k)
		}
	}
	if n.Spec.PodCIDR != "10.244.30.0/24" {
		t.Errorf("release changed the podCIDR: %q", n.Spec.PodCIDR)
	}
	if l, err = lease.Acquire(ctx, reg, req); err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Nodes().Delete(ctx, "gone-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, l, req.Attrs, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("renewal of a deleted node: %v, want ErrNotFound", err)
	}
	var pending *lease.PendingError
	if _, err := reg.Claim(ctx, req); !errors.As(err, &pending) || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("claim of a deleted node: %v, want to wait for it", err)
	}
}

// The node's name comes from NODE_NAME, else from its own pod.
func TestNodeNameFromPod(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	// No controller manager runs to make the namespace's service account.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "default"}}
	if _, err := c.CoreV1().ServiceAccounts("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "twill-abcde", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "pod-node-1", Containers: []corev1.Container{{Name: "twilld", Image: "twill"}}}}
	if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"POD_NAME": "twill-abcde", "POD_NAMESPACE": "default"}
	if n, err := kube.NodeName(ctx, c, "", func(k string) string { return env[k] }); err != nil || n != "pod-node-1" {
		t.Errorf("from the pod: %q, %v", n, err)
	}
	env["NODE_NAME"] = "env-node"
	if n, err := kube.NodeName(ctx, c, "", func(k string) string { return env[k] }); err != nil || n != "env-node" {
		t.Errorf("from NODE_NAME: %q, %v", n, err)
	}
	if n, err := kube.NodeName(ctx, c, "flag-node", func(k string) string { return env[k] }); err != nil || n != "flag-node" {
		t.Errorf("from --node-name: %q, %v", n, err)
	}
	_, err := kube.NodeName(ctx, c, "", func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Errorf("without anything: %v, want an error saying to set NODE_NAME", err)
	}
	env = map[string]string{"POD_NAME": "nope", "POD_NAMESPACE": "default"}
	if _, err := kube.NodeName(ctx, c, "", func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "default/nope") {
		t.Errorf("a pod that does not exist: %v", err)
	}
}

// The registry needs only what the DaemonSet's ClusterRole grants: nodes
// get/list/watch, nodes/status patch, pods get. It cannot change a node's
// spec.
func TestRegistryNeedsOnlyItsRole(t *testing.T) {
	c, s := admin(t)
	ctx := leasetest.Context(t)
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "twill-test"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	}}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	bind := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "twill-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "twill-test"},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "twill-node"}}}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, bind, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	rc, err := kubeapi.RESTConfig(s.URL(), s.PKI, "twill-node")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	createNode(t, c, "role-1", "10.244.40.0/24", nil)
	createNode(t, c, "role-2", "10.244.41.0/24", flannelAnnotations(kube.DefaultPrefix, "192.168.56.52", "02:00:00:00:00:52"))
	// RBAC takes a moment to see the new binding.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := uc.CoreV1().Nodes().Get(ctx, "role-1", metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the role's user cannot get nodes: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	reg, _ := newRegistry(t, uc, "role-1", "", netConfJSON)
	l, err := lease.Acquire(ctx, reg, lease.Request{Config: leasetest.MustConfig(t, netConfJSON), Attrs: vxlanAttrs("192.168.56.51"), TTL: time.Hour})
	if err != nil {
		t.Fatalf("claim with the role's permissions: %v", err)
	}
	if err := reg.Complete(ctx, l); err != nil {
		t.Fatalf("set NetworkUnavailable with the role's permissions: %v", err)
	}
	if _, err := reg.NetworkConfig(ctx); err != nil {
		t.Errorf("the store probe with the role's permissions: %v", err)
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) < 2 {
		t.Errorf("list with the role's permissions: %v, %v", leases, err)
	}
	_, err = uc.CoreV1().Nodes().Patch(ctx, "role-1", types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("the role may patch a node's spec: %v", err)
	}
}

// An API server that went away is noticed: NetworkConfig, which the
// daemon's store probe asks every few seconds, fails with the watch's
// error (the lease and the data path stay; the probe's check says so).
func TestAPIServerGoneIsNoticed(t *testing.T) {
	c, s := admin(t)
	ctx := leasetest.Context(t)
	createNode(t, c, "gone-api", "10.244.50.0/24", nil)
	reg, logs := newRegistry(t, c, "gone-api", "", netConfJSON)
	defer func() {
		if t.Failed() {
			t.Logf("registry log:\n%s", logs)
		}
	}()
	if _, _, err := reg.List(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.NetworkConfig(ctx); err != nil {
		t.Fatalf("with the server up: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	for {
		_, err := reg.NetworkConfig(ctx)
		if err != nil {
			t.Logf("noticed %v after the server stopped: %v", time.Since(stopped).Round(time.Millisecond), err)
			break
		}
		if time.Since(stopped) > 30*time.Second {
			t.Fatal("30 s after the API server stopped, NetworkConfig still answers as if it were there")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An overwrite annotation that is not a usable address is the operator's
// mistake, not an unreachable store: a claim waits, saying which annotation
// and value, and takes the lease once it is fixed; a renewal keeps
// publishing the public IP the node publishes, logs the mistake once, and
// follows the annotation again once it is removed.
func TestBadOverwriteAnnotation(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	ow := kube.FlannelPrefix + "/public-ip-overwrite"
	createNode(t, c, "ow-1", "10.244.7.0/24", map[string]string{ow: "nope"})
	reg, logs := newRegistry(t, c, "ow-1", kube.FlannelPrefix, netConfJSON)
	reach := lease.NewReachability(slog.New(slog.NewTextHandler(logs, nil)), "kube-apiserver")
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: leasetest.MustConfig(t, netConfJSON), Attrs: vxlanAttrs("192.168.56.11"), TTL: time.Hour},
		Reach: reach, Log: slog.New(slog.NewTextHandler(logs, nil))}
	got := acquireLater(t, ctx, k)
	waitPending(k, 10*time.Second)
	for _, want := range []string{`"ow-1"`, ow + `="nope"`, "not an IPv4 address", "waiting until the annotation is fixed"} {
		if !strings.Contains(k.Pending(), want) {
			t.Errorf("while waiting, Pending() = %q; want it to say %q", k.Pending(), want)
		}
	}
	if !reach.Reachable() {
		t.Errorf("a bad annotation made the store look unreachable:\n%s", logs)
	}
	patchNode(t, c, "ow-1", `{"metadata":{"annotations":{"`+ow+`":"192.168.56.99"}}}`)
	var l lease.Lease
	select {
	case l = <-got:
	case <-time.After(15 * time.Second):
		t.Fatalf("no lease 15 s after the annotation was fixed; pending %q", k.Pending())
	}
	if l.Attrs.PublicIP.String() != "192.168.56.99" {
		t.Fatalf("lease publishes %v, want the overwrite 192.168.56.99", l.Attrs.PublicIP)
	}
	// Broken while the node runs: renewals keep 192.168.56.99, log it once.
	patchNode(t, c, "ow-1", `{"metadata":{"annotations":{"`+ow+`":"127.0.0.1"}}}`)
	for range 3 {
		r, err := reg.Update(ctx, l, vxlanAttrs("192.168.56.11"), time.Hour)
		if err != nil {
			t.Fatalf("renewal with a bad overwrite annotation: %v", err)
		}
		if r.Attrs.PublicIP.String() != "192.168.56.99" {
			t.Fatalf("renewal publishes %v, want 192.168.56.99 kept", r.Attrs.PublicIP)
		}
		l = r
	}
	if n := strings.Count(logs.String(), "ignoring the node's overwrite annotation"); n != 1 {
		t.Errorf("the bad annotation logged %d times in 3 renewals, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "127.0.0.1") {
		t.Errorf("the log does not name the value:\n%s", logs)
	}
	if a := getNode(t, c, "ow-1").Annotations[kube.FlannelPrefix+"/public-ip"]; a != "192.168.56.99" {
		t.Errorf("public-ip annotation %q after the bad edit, want 192.168.56.99", a)
	}
	// Removed: the node's own address again.
	patchNode(t, c, "ow-1", `{"metadata":{"annotations":{"`+ow+`":null}}}`)
	r, err := reg.Update(ctx, l, vxlanAttrs("192.168.56.11"), time.Hour)
	if err != nil || r.Attrs.PublicIP.String() != "192.168.56.11" {
		t.Fatalf("renewal after the annotation was removed: %v, %v; want 192.168.56.11", r.Attrs.PublicIP, err)
	}
	if a := getNode(t, c, "ow-1").Annotations[kube.FlannelPrefix+"/public-ip"]; a != "192.168.56.11" {
		t.Errorf("public-ip annotation %q after the overwrite was removed, want 192.168.56.11", a)
	}
}
