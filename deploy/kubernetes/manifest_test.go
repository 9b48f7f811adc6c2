package kubernetes

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/cni"
	"github.com/twillnet/twill/overlay/netconf"
)

// The manifest against a real kube-apiserver that enforces the baseline
// Pod Security Standard by default (a hardened cluster): every object is
// accepted by server-side apply (no dry run) and a second apply changes
// nothing; the DaemonSet's pod template, made a Pod, passes the server's
// validation and admission (its service account, its priority class, the
// namespace's privileged label), and is refused where baseline applies;
// the service account's own token (TokenRequest, as a pod gets) may do
// what twilld does and nothing else; the real DaemonSet controller makes
// a pod for every Linux node, the not-ready and the tainted ones too.
func TestManifest(t *testing.T) {
	s := kubeapi.ForTest(t, func(c *kubeapi.Config) { c.PodSecurity = "baseline" })
	ctx := context.Background()
	admin := s.RESTConfig()
	kc := kubernetes.NewForConfigOrDie(admin)

	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	if want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}; !slices.Equal(kinds, want) {
		t.Fatalf("manifest kinds %v, want %v", kinds, want)
	}
	versions := apply(t, admin, objs)
	if again := apply(t, admin, objs); !maps(versions, again) {
		t.Errorf("a second apply changed objects: resource versions %v, then %v", versions, again)
	}

	ds, err := kc.AppsV1().DaemonSets(Namespace).Get(ctx, DaemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkDaemonSet(t, ds)

	t.Run("PodTemplate", func(t *testing.T) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "twill-template", Labels: ds.Spec.Template.Labels},
			Spec:       *ds.Spec.Template.Spec.DeepCopy(),
		}
		dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
		got, err := kc.CoreV1().Pods(Namespace).Create(ctx, pod, dry)
		if err != nil {
			t.Fatalf("the DaemonSet's pod template as a pod in %s: %v", Namespace, err)
		}
		// Admission resolved the priority class and mounted the token.
		if got.Spec.Priority == nil || *got.Spec.Priority < 2000000000 {
			t.Errorf("pod priority %v, want system-node-critical's", got.Spec.Priority)
		}
		if !slices.ContainsFunc(got.Spec.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "kube-api-access-") }) {
			t.Errorf("ServiceAccount admission mounted no token volume: %v", got.Spec.Volumes)
		}
		if p := got.Spec.Containers[0].Ports; len(p) != 1 || p[0].HostPort != 9180 {
			t.Errorf("pod ports %+v: want 9180 on the host (hostNetwork)", p)
		}
		// In a namespace without the label (its service account there too)
		// baseline applies, and refuses the pod.
		const plain = "no-pod-security-label"
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: plain}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kc.CoreV1().ServiceAccounts(plain).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: ServiceAccount}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err = kc.CoreV1().Pods(plain).Create(ctx, pod.DeepCopy(), dry)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "baseline`) {
			t.Errorf("the pod in namespace %s (baseline): %v; want forbidden by PodSecurity baseline", plain, err)
		}
	})

	t.Run("RBAC", func(t *testing.T) { checkRBAC(t, kc, admin) })

	t.Run("DaemonSetController", func(t *testing.T) { checkDaemonSetController(t, s, kc) })

	t.Run("ConfigMap", func(t *testing.T) {
		cm, err := kc.CoreV1().ConfigMaps(Namespace).Get(ctx, ConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := netconf.Parse([]byte(cm.Data["net-conf.json"]))
		if err != nil {
			t.Errorf("net-conf.json: %v", err)
		} else if nc.Network.String() != "10.244.0.0/16" {
			t.Errorf("net-conf.json Network %s, want 10.244.0.0/16 (kubeadm's --pod-network-cidr in the docs)", nc.Network)
		}
		conflist := []byte(cm.Data["cni-conf.json"])
		if err := cni.CheckConflist(conflist); err != nil {
			t.Errorf("cni-conf.json: %v", err)
		}
		shipped, err := os.ReadFile("../../cmd/twill-cni/10-twill.conflist")
		if err != nil {
			t.Fatal(err)
		}
		if !jsonEqual(t, conflist, shipped) {
			t.Errorf("cni-conf.json differs from cmd/twill-cni/10-twill.conflist:\n%s\nvs\n%s", conflist, shipped)
		}
	})

	t.Run("TwilldArgs", func(t *testing.T) { checkTwilldArgs(t, ds) })
}

// apply applies objs with server-side apply, as kubectl apply
// --server-side does, and returns their resource versions.
func apply(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	ctx := context.Background()
	dc := kubernetes.NewForConfigOrDie(cfg).Discovery()
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn := dynamic.NewForConfigOrDie(cfg)
	versions := map[string]string{}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		got, err := r.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "twill-manifest-test"})
		if err != nil {
			t.Fatalf("server-side apply %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		versions[o.GetKind()+"/"+o.GetName()] = got.GetResourceVersion()
	}
	return versions
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkDaemonSet checks what the manifest promises, as the server keeps it.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != ServiceAccount || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("pod spec: hostNetwork %v, serviceAccount %q, priorityClass %q", spec.HostNetwork, spec.ServiceAccountName, spec.PriorityClassName)
	}
	var inits []string
	for _, c := range spec.InitContainers {
		inits = append(inits, strings.Join(c.Command, " "))
	}
	if len(inits) != 2 || !strings.Contains(inits[0], "install --plugin-dir /host/opt/cni/bin") ||
		!strings.Contains(inits[1], "install --conflist /etc/twill/cni-conf.json --conf-dir /host/etc/cni/net.d") {
		t.Errorf("init containers %q: want twill-cni install of the plugin, then of the conflist", inits)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want twilld alone", len(spec.Containers))
	}
	c := spec.Containers[0]
	caps := c.SecurityContext.Capabilities.Add
	if !slices.Contains(caps, "NET_ADMIN") || !slices.Contains(caps, "NET_RAW") || (c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged) {
		t.Errorf("twilld capabilities %v, privileged %v: want NET_ADMIN and NET_RAW, unprivileged", caps, c.SecurityContext.Privileged)
	}
	for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/livez", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "http" {
			t.Errorf("probe %+v: want GET %s on port http", probe, path)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 9180 {
		t.Errorf("ports %+v: want http 9180", c.Ports)
	}
	if !slices.Contains(c.Args, "--kube-subnet-mgr") || !slices.Contains(c.Args, "--listen=0.0.0.0:9180") {
		t.Errorf("twilld args %q: want --kube-subnet-mgr and --listen=0.0.0.0:9180", c.Args)
	}
	if a := ds.Spec.Template.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "9180" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape and port 9180", a)
	}
}

// checkRBAC acts with the service account's token: what twilld needs is
// allowed, the rest forbidden.
func checkRBAC(t *testing.T, kc kubernetes.Interface, admin *rest.Config) {
	ctx := context.Background()
	tr, err := kc.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, ServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", Namespace, ServiceAccount, err)
	}
	sa := rest.AnonymousClientConfig(admin)
	sa.BearerToken = tr.Status.Token
	as := kubernetes.NewForConfigOrDie(sa)
	review, err := as.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:" + Namespace + ":" + ServiceAccount; review.Status.UserInfo.Username != want {
		t.Fatalf("the token is %q, want %q", review.Status.UserInfo.Username, want)
	}

	nodes := as.CoreV1().Nodes()
	w, err := nodes.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("watch nodes: %v", err)
	}
	defer w.Stop()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "rbac-node"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.3.0/24"}}
	if _, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if n, ok := ev.Object.(*corev1.Node); ev.Type != watch.Added || !ok || n.Name != "rbac-node" {
			t.Errorf("watch: %s %T, want ADDED rbac-node", ev.Type, ev.Object)
		}
	case <-time.After(30 * time.Second):
		t.Error("watch: no event for the node created")
	}
	if l, err := nodes.List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 1 {
		t.Errorf("list nodes: %v (%d)", err, len(l.Items))
	}
	if _, err := nodes.Get(ctx, "rbac-node", metav1.GetOptions{}); err != nil {
		t.Errorf("get node: %v", err)
	}
	patch := []byte(`{"metadata":{"annotations":{"twill.twillnet.github.io/backend-type":"vxlan"}}}`)
	if _, err := nodes.Patch(ctx, "rbac-node", types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("patch nodes/status: %v", err)
	} else if n, _ := kc.CoreV1().Nodes().Get(ctx, "rbac-node", metav1.GetOptions{}); n.Annotations["twill.twillnet.github.io/backend-type"] != "vxlan" {
		t.Errorf("patch nodes/status: annotations now %v", n.Annotations)
	}
	// Allowed to get pods: a missing one is not found, not forbidden.
	if _, err := as.CoreV1().Pods(Namespace).Get(ctx, "no-such-pod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get pod: %v, want not found", err)
	}

	for what, err := range map[string]error{
		"list secrets":         second(as.CoreV1().Secrets(Namespace).List(ctx, metav1.ListOptions{})),
		"list secrets (all)":   second(as.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})),
		"list pods":            second(as.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})),
		"get configmap":        second(as.CoreV1().ConfigMaps(Namespace).Get(ctx, ConfigMap, metav1.GetOptions{})),
		"patch node":           second(nodes.Patch(ctx, "rbac-node", types.MergePatchType, patch, metav1.PatchOptions{})),
		"update nodes/status":  second(nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})),
		"create node":          second(nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})),
		"delete node":          nodes.Delete(ctx, "rbac-node", metav1.DeleteOptions{}),
		"delete the daemonset": as.AppsV1().DaemonSets(Namespace).Delete(ctx, DaemonSet, metav1.DeleteOptions{}),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s as the service account: %v, want forbidden", what, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// checkTwilldArgs runs the real twilld with the DaemonSet's arguments (and
// --version, so that it stops after parsing them): they must all be flags
// it knows.
func checkTwilldArgs(t *testing.T, ds *appsv1.DaemonSet) {
	if testing.Short() {
		t.Skip("builds twill's binaries; skipped with -short")
	}
	twilld := filepath.Join(binaries.ForTest(t), "twilld")
	help, _ := exec.Command(twilld, "--help").CombinedOutput()
	if !bytes.Contains(help, []byte("-kube-subnet-mgr")) {
		t.Skip("this twilld has no --kube-subnet-mgr (the Kubernetes mode is not in this tree)")
	}
	args := append(slices.Clone(ds.Spec.Template.Spec.Containers[0].Args), "--version")
	if out, err := exec.Command(twilld, args...).CombinedOutput(); err != nil {
		t.Errorf("twilld %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// checkDaemonSetController runs kube-controller-manager's DaemonSet
// controller: it creates the pods (through the server's admission, for
// real) for every Linux node, also one that is not ready (the
// not-ready:NoSchedule taint TaintNodesByCondition puts on a new Node) or
// a tainted control-plane node, and none for a Windows node.
func checkDaemonSetController(t *testing.T, s *kubeapi.Server, kc kubernetes.Interface) {
	if _, err := kubeapi.Binary(kubeapi.ControllerManagerBinary); err != nil {
		t.Skipf("needs kube-controller-manager: %v", err)
	}
	ctx := context.Background()
	kcm, err := s.StartControllerManager(nil, "daemonset-controller")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kcm.Stop() })
	linux := map[string]string{"kubernetes.io/os": "linux"}
	nodes := []*corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "ds-worker", Labels: linux}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ds-control-plane", Labels: linux},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ds-windows", Labels: map[string]string{"kubernetes.io/os": "windows"}}},
	}
	for _, n := range nodes {
		if _, err := kc.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// checkRBAC's rbac-node has no kubernetes.io/os label: the affinity
	// keeps it out too.
	want := []string{"ds-control-plane", "ds-worker"}
	var got []string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		pods, err := kc.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=twill"})
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, p := range pods.Items {
			got = append(got, podNode(p))
		}
		slices.Sort(got)
		if len(got) >= len(want) {
			break
		}
		select {
		case <-kcm.Exited():
			t.Fatalf("kube-controller-manager exited:\n%s", kcm.LogTail())
		case <-time.After(250 * time.Millisecond):
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("the DaemonSet controller made pods for nodes %q, want %q\n%s", got, want, kcm.LogTail())
	}
	n, err := kc.CoreV1().Nodes().Get(ctx, "ds-worker", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "node.kubernetes.io/not-ready" }) {
		t.Errorf("ds-worker's taints %v: want node.kubernetes.io/not-ready (the node was never ready)", n.Spec.Taints)
	}
}

// podNode is the node a DaemonSet pod is for: the controller pins it with
// a node affinity on metadata.name.
func podNode(p corev1.Pod) string {
	if a := p.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range term.MatchFields {
				if f.Key == "metadata.name" && len(f.Values) == 1 {
					return f.Values[0]
				}
			}
		}
	}
	return "(no node: " + p.Name + ")"
}
