package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/kube"
	"github.com/twillnet/twill/overlay/namespace"
)

// kubeLab is a backendtest lab whose switch namespace runs etcd and a real
// kube-apiserver at 192.168.56.1:6443, the nodes' twilld reaching it over
// the underlay with a kubeconfig.
type kubeLab struct {
	*backendtest.Lab
	Client     kubernetes.Interface
	Kubeconfig string
	twillctl   string
}

// nsDial dials from inside namespace ns: the socket stays there.
func nsDial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := namespace.DoName(ns, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func newKubeLab(t testing.TB, nodes int) *kubeLab {
	t.Helper()
	apiserver, err := kubeapi.Binary(kubeapi.APIServerBinary)
	if err != nil {
		t.Skipf("needs a real kube-apiserver: %v", err)
	}
	dir := t.TempDir()
	bin := binaries.ForTest(t)
	twillctl := filepath.Join(bin, "twillctl")
	el := newEtcdLabOf(t, nodes, twillctl, dir, "kube")
	cfg := kubeapi.Config{Dir: dir, EtcdURL: el.URL, Addr: netip.MustParseAddr("192.168.56.1"), Port: 6443, ServiceCIDR: kubeapi.DefaultServiceCIDR}
	pki, err := kubeapi.NewPKI(filepath.Join(dir, "pki"), []string{"192.168.56.1"})
	if err != nil {
		t.Fatal(err)
	}
	start(t, "kube-apiserver", el.Switch, apiserver, "Serving securely", cfg.APIServerArgs(pki)...)
	rc, err := kubeapi.RESTConfig(cfg.URL(), pki, kubeapi.Admin, kubeapi.MastersGroup)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "admin.kubeconfig")
	if err := kubeapi.WriteKubeconfig(kc, rc); err != nil {
		t.Fatal(err)
	}
	rc.Dial = nsDial(el.Switch)  // the test runs outside the lab
	rc.QPS, rc.Burst = 500, 1000 // the benchmark creates 1000 Nodes
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := kubeapi.WaitReady(ctx, rc, nil); err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &kubeLab{Lab: el.Lab, Client: c, Kubeconfig: kc, twillctl: twillctl}
}

func (l *kubeLab) createNode(t testing.TB, name, podCIDR string, ann map[string]string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	if _, err := l.Client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (l *kubeLab) node(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := l.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// flannelVXLANNode programs node n by hand as flannel's vxlan backend would
// (device flannel.1, VNI 1, port 8472) with a route, neighbour and FDB
// entry to each peer, and returns its VTEP MAC.
func flannelVXLANNode(t *testing.T, n *backendtest.Node, peers map[netip.Prefix][2]string) string {
	t.Helper()
	n.IP(t, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", n.PublicIP.String(), "dev", "eth0", "dstport", "8472", "nolearning")
	n.IP(t, "addr", "add", n.Subnet.Addr().String()+"/32", "dev", "flannel.1")
	n.IP(t, "link", "set", "flannel.1", "up")
	for subnet, p := range peers { // p: VTEP MAC, public IP
		gw := subnet.Addr().String()
		n.IP(t, "route", "add", subnet.String(), "via", gw, "dev", "flannel.1", "onlink")
		n.IP(t, "neigh", "add", gw, "lladdr", p[0], "dev", "flannel.1", "nud", "permanent")
		backendtest.Run(t, "ip", "netns", "exec", n.Name, "bridge", "fdb", "append", p[0], "dev", "flannel.1", "dst", p[1])
	}
	var link []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(n.IP(t, "-j", "link", "show", "flannel.1")), &link); err != nil || len(link) != 1 {
		t.Fatalf("flannel.1's MAC: %v", err)
	}
	return link[0].Address
}

// flannelVXLANData is flannel's vxlan backend data (pkg/backend/vxlan:
// vxlanLeaseAttrs), to check that twill's parses as flannel's.
type flannelVXLANData struct {
	VNI     uint16
	VtepMAC hardwareAddr
}

type hardwareAddr net.HardwareAddr

func (a *hardwareAddr) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	mac, err := net.ParseMAC(s)
	*a = hardwareAddr(mac)
	return err
}

// TestKubeMode runs twilld --kube-subnet-mgr in two node namespaces against
// a real kube-apiserver, with a third node that is flannel's: its Node
// annotated exactly as flannel annotates its own, its kernel programmed as
// flannel's backend would. The twill nodes route to it (routes in the
// kernel, pods ping), twill's annotations parse as flannel's, a node
// without podCIDR waits and comes up when it is set, NetworkUnavailable is
// False, and a deleted Node's routes go on every peer.
func TestKubeMode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld, starts etcd, kube-apiserver and twilld; skipped with -short")
	}
	backendtest.NeedRoot(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { testKubeMode(t, backend) })
	}
}

func testKubeMode(t *testing.T, backend string) {
	lab := newKubeLab(t, 3)
	ctx := context.Background()
	dir := t.TempDir()
	twilld := filepath.Join(binaries.ForTest(t), "twilld")
	conf := netConfigFile(t, dir, backend)
	n1, n2, n3 := lab.Nodes[0], lab.Nodes[1], lab.Nodes[2]
	p := kube.FlannelPrefix

	// node3 is flannel's.
	flannelAnn := map[string]string{
		p + "/backend-type":        backend,
		p + "/backend-data":        "null",
		p + "/kube-subnet-manager": "true",
		p + "/public-ip":           n3.PublicIP.String(),
	}
	lab.createNode(t, "node1", n1.Subnet.String(), nil)
	lab.createNode(t, "node2", "", nil) // no podCIDR yet

	run := func(n *backendtest.Node, name, ready string) proc {
		return start(t, name, n.Name, twilld, ready, "--kube-subnet-mgr", "--kubeconfig-file", lab.Kubeconfig,
			"--kube-annotation-prefix", p, "--net-config-path", conf, "--iface", "eth0", "--node-name", name,
			"--subnet-file", filepath.Join(dir, name+".env"), "--ip-masq", "--listen", n.PublicIP.String()+":9180")
	}
	run(n1, "node1", "msg=ready")
	p2 := run(n2, "node2", "pod cidr not assigned")
	if !strings.Contains(p2.log.String(), "--allocate-node-cidrs") {
		t.Errorf("the wait does not say what sets the podCIDR:\n%s", p2.log)
	}
	// Readiness says so too.
	out, _ := exec.Command("ip", "netns", "exec", n2.Name, "curl", "-s", "http://"+n2.PublicIP.String()+":9180/readyz?verbose").CombinedOutput()
	if !strings.Contains(string(out), "[-]lease-held failed: no lease yet: node \"node2\" pod cidr not assigned") {
		t.Errorf("readyz while waiting:\n%s", out)
	}
	time.Sleep(time.Second)
	if strings.Contains(p2.log.String(), "msg=ready") {
		t.Fatalf("node2 came up without a podCIDR:\n%s", p2.log)
	}
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%[1]q]}}`, n2.Subnet.String())
	if _, err := lab.Client.CoreV1().Nodes().Patch(ctx, "node2", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	set := time.Now()
	backendtest.Eventually(t, 20*time.Second, func() string {
		if !strings.Contains(p2.log.String(), "msg=ready") {
			return "node2 not ready after its podCIDR was set"
		}
		return ""
	})
	t.Logf("node2 ready %v after its podCIDR was set", time.Since(set).Round(time.Millisecond))

	// The annotations, as flannel reads them, and the condition.
	twillMAC := map[string]string{}
	for _, name := range []string{"node1", "node2"} {
		n := lab.node(t, name)
		a := n.Annotations
		if a[p+"/kube-subnet-manager"] != "true" || a[p+"/backend-type"] != backend || !strings.HasPrefix(a[p+"/public-ip"], "192.168.56.1") {
			t.Errorf("%s annotations %v", name, a)
		}
		if backend == "vxlan" {
			var d flannelVXLANData
			if err := json.Unmarshal([]byte(a[p+"/backend-data"]), &d); err != nil || d.VNI != 1 || len(d.VtepMAC) != 6 {
				t.Errorf("%s backend-data %q does not parse as flannel's vxlan data: %+v, %v", name, a[p+"/backend-data"], d, err)
			}
			twillMAC[name] = net.HardwareAddr(d.VtepMAC).String()
		} else if a[p+"/backend-data"] != "null" {
			t.Errorf("%s host-gw backend-data %q, want flannel's null", name, a[p+"/backend-data"])
		}
		unavailable := ""
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				unavailable = string(c.Status) + " " + c.Reason
			}
		}
		if unavailable != "False "+kube.ReasonUp {
			t.Errorf("%s NetworkUnavailable %q, want False %s", name, unavailable, kube.ReasonUp)
		}
	}

	// node3, flannel's, joins: annotated and programmed as flannel would.
	if backend == "vxlan" {
		mac := flannelVXLANNode(t, n3, map[netip.Prefix][2]string{
			n1.Subnet: {twillMAC["node1"], n1.PublicIP.String()},
			n2.Subnet: {twillMAC["node2"], n2.PublicIP.String()},
		})
		flannelAnn[p+"/backend-data"] = `{"VNI":1,"VtepMAC":"` + mac + `"}`
	} else {
		n3.IP(t, "route", "add", n1.Subnet.String(), "via", n1.PublicIP.String())
		n3.IP(t, "route", "add", n2.Subnet.String(), "via", n2.PublicIP.String())
	}
	lab.createNode(t, "node3", n3.Subnet.String(), flannelAnn)
	want := "via " + n3.PublicIP.String() // host-gw
	if backend == "vxlan" {
		want = "via " + n3.Subnet.Addr().String() + " dev twill.1 proto 126 onlink"
	}
	for _, n := range []*backendtest.Node{n1, n2} {
		backendtest.Eventually(t, 15*time.Second, func() string {
			if r := n.IP(t, "route", "show", n3.Subnet.String()); !strings.Contains(r, want) {
				return fmt.Sprintf("%s: route to flannel's node %q, want %q", n.Name, strings.TrimSpace(r), want)
			}
			return ""
		})
	}
	for _, n := range []*backendtest.Node{n1, n2} {
		if got := n.Ping(t, n3.PodIP, 3); got != 3 {
			t.Errorf("pod of %s -> flannel node's pod %s: %d of 3 replies\n%s", n.Name, n3.PodIP, got, n.IP(t, "route"))
		}
	}
	if got := n1.Ping(t, n2.PodIP, 3); got != 3 {
		t.Errorf("pod1 -> pod2: %d of 3 replies", got)
	}

	// twillctl lists the nodes.
	out, err := exec.Command("ip", "netns", "exec", lab.Switch, lab.twillctl, "leases", "--kubeconfig", lab.Kubeconfig,
		"--kube-annotation-prefix", p).CombinedOutput()
	if err != nil {
		t.Fatalf("twillctl leases --kubeconfig: %v\n%s", err, out)
	}
	for _, w := range []string{"node1", n1.Subnet.String(), "node3", n3.Subnet.String(), n3.PublicIP.String(), "False"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("twillctl leases --kubeconfig does not show %s:\n%s", w, out)
		}
	}

	// node3's Node deleted: its routes go on every peer.
	if err := lab.Client.CoreV1().Nodes().Delete(ctx, "node3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*backendtest.Node{n1, n2} {
		backendtest.Eventually(t, 15*time.Second, func() string {
			if r := n.IP(t, "route", "show", n3.Subnet.String()); strings.TrimSpace(r) != "" {
				return fmt.Sprintf("%s: route to the deleted node left: %q", n.Name, r)
			}
			return ""
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "node2.env")); err != nil {
		t.Errorf("node2's subnet file: %v", err)
	}
}

// BenchmarkKubeThousandNodes runs one twilld --kube-subnet-mgr (vxlan)
// against the real API server; each round (one b.Loop iteration) creates
// 1000 Node objects, each annotated as a twill node publishes itself, and
// waits until all their routes are in twilld's kernel. It reports, per
// round, the time from the last Node created to its route
// (ms-last-node-to-route), the time until all 1000 routes are there
// (ms-all-routes), and twilld's resident memory after the round
// (kB-twilld-rss); ns/op is one round. Between rounds, untimed, the Nodes
// are deleted and their routes waited out, so each round starts from one
// node. A round takes seconds, so the default -benchtime (1s) runs one:
// the lab is set up once per run by b.Loop, whatever -benchtime says.
// Figures are printed, not asserted:
// go test -run '^$' -bench KubeThousandNodes ./cmd/twilld
func BenchmarkKubeThousandNodes(b *testing.B) {
	backendtest.NeedRoot(b)
	const nodes = 1000
	lab := newKubeLab(b, 1)
	dir := b.TempDir()
	conf := filepath.Join(dir, "net-conf.json")
	// /26 subnets: 1024 of them in 10.244.0.0/16.
	if err := os.WriteFile(conf, []byte(`{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		b.Fatal(err)
	}
	n1 := lab.Nodes[0]
	p := kube.FlannelPrefix
	lab.createNode(b, "node1", "10.244.0.0/26", nil)
	twilld := filepath.Join(binaries.ForTest(b), "twilld")
	pr := start(b, "node1", n1.Name, twilld, "msg=ready", "--kube-subnet-mgr", "--kubeconfig-file", lab.Kubeconfig,
		"--kube-annotation-prefix", p, "--net-config-path", conf, "--iface", "eth0", "--node-name", "node1",
		"--subnet-file", filepath.Join(dir, "node1.env"), "--listen", "off")
	rss := func() float64 {
		s, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pr.pid))
		for _, l := range strings.Split(string(s), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				return kb
			}
		}
		return 0
	}
	b.Logf("twilld RSS with no peers: %.0f kB", rss())
	names, err := kube.NewAnnotations(p)
	if err != nil {
		b.Fatal(err)
	}
	// Each peer annotated as a twill node publishes itself.
	annotations := func(ip, mac string) map[string]string {
		return names.Wanted(lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)})
	}
	subnet := func(i int) netip.Prefix { // i from 1
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i / 4), byte(i % 4 * 64)}), 26)
	}
	peer := func(i int, ip, mac string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("peer-%04d", i), Annotations: annotations(ip, mac),
			Labels: map[string]string{"twill-bench": "peer"}},
			Spec: corev1.NodeSpec{PodCIDR: subnet(i).String(), PodCIDRs: []string{subnet(i).String()}}}
	}
	routes := func() int { return strings.Count(n1.IP(b, "route", "show", "proto", "126"), "dev twill.1") }
	ctx := context.Background()
	var lastToRoute, allRoutes time.Duration
	var rssAfter float64
	rounds := 0
	for b.Loop() {
		began := time.Now()
		work := make(chan int)
		errs := make(chan error, nodes)
		for range 8 {
			go func() {
				for i := range work {
					_, err := lab.Client.CoreV1().Nodes().Create(ctx, peer(i, fmt.Sprintf("172.20.%d.%d", i/250, i%250+1),
						fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256)), metav1.CreateOptions{})
					errs <- err
				}
			}()
		}
		for i := 1; i < nodes; i++ {
			work <- i
		}
		close(work)
		for i := 1; i < nodes; i++ {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		// The last one, alone, timed to its route.
		created := time.Now()
		if _, err := lab.Client.CoreV1().Nodes().Create(ctx, peer(nodes, "172.20.9.9", "02:00:00:00:ff:ff"), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		createdAll := time.Since(began)
		for !strings.Contains(n1.IP(b, "route", "show", subnet(nodes).String()), "twill.1") {
			if time.Since(created) > 2*time.Minute {
				b.Fatal("no route to the last node after 2 minutes")
			}
			time.Sleep(5 * time.Millisecond)
		}
		last := time.Since(created)
		for got := routes(); got < nodes; got = routes() {
			if time.Since(began) > 3*time.Minute {
				b.Fatalf("%d of %d routes after 3 minutes", got, nodes)
			}
			time.Sleep(50 * time.Millisecond)
		}
		all := time.Since(began)
		b.StopTimer()
		rounds++
		lastToRoute, allRoutes, rssAfter = lastToRoute+last, allRoutes+all, rssAfter+rss()
		b.Logf("round %d: %d Nodes created in %v; last Node created -> its route in the kernel: %v; all %d routes %v after the first Node; twilld RSS %.0f kB",
			rounds, nodes, createdAll.Round(time.Millisecond), last.Round(time.Millisecond), nodes, all.Round(time.Millisecond), rss())
		// Back to one node for the next round.
		if err := lab.Client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "twill-bench=peer"}); err != nil {
			b.Fatal(err)
		}
		deleted := time.Now()
		for got := routes(); got > 0; got = routes() {
			if time.Since(deleted) > 3*time.Minute {
				b.Fatalf("%d routes left 3 minutes after the Nodes were deleted", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(lastToRoute.Milliseconds())/float64(rounds), "ms-last-node-to-route")
	b.ReportMetric(float64(allRoutes.Milliseconds())/float64(rounds), "ms-all-routes")
	b.ReportMetric(rssAfter/float64(rounds), "kB-twilld-rss")
}
