package vmtest

// These tests bring up real labs: etcd and twilld processes built from this
// tree, node and pod namespaces, the CNI plugin. Labs run without host
// access, so nothing is made in the host's own namespace; every lab is named
// t<pid><letter> and removed at cleanup, also when a test fails.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/subnetfile"
)

var (
	binDir   string
	binBuild error
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		binDir, binBuild = binaries.Dir(context.Background())
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and runs twilld in them")
	}
	if binBuild != nil {
		t.Fatal(binBuild)
	}
}

// labName is a lab name unique to this test run.
func labName(suffix string) string {
	return fmt.Sprintf("t%d%s", os.Getpid()%10000000, suffix)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// up brings up a lab and removes it at cleanup, checking that nothing of
// it is left.
func up(t *testing.T, spec Spec) *Lab {
	t.Helper()
	spec.Bin = binDir
	began := time.Now()
	c, err := Up(testCtx(t), spec, nil)
	t.Cleanup(func() {
		// Also after a failed Up: Down finds leftovers by name.
		var procs []proc
		if c != nil {
			procs = c.procs()
		}
		if err := Down(context.Background(), spec.Name); err != nil {
			t.Errorf("down %s: %v", spec.Name, err)
		}
		assertGone(t, spec.Name, procs)
	})
	if err != nil {
		t.Fatalf("up %s: %v", spec.Name, err)
	}
	t.Logf("lab %s up in %v", spec.Name, time.Since(began).Round(time.Millisecond))
	return c
}

// procs is every process the lab recorded.
func (c *Lab) procs() []proc {
	st := c.snapshot()
	out := []proc{st.Etcd}
	for _, n := range st.Nodes {
		out = append(out, n.Daemon)
	}
	if st.Router != nil {
		out = append(out, st.Router.Procs...)
	}
	return out
}

// assertGone checks that nothing of lab name remains: namespaces, the
// host link, the processes, the directory.
func assertGone(t *testing.T, name string, procs []proc) {
	t.Helper()
	if ns := labNamespaces(name); len(ns) > 0 {
		t.Errorf("lab %s: namespaces left: %v", name, ns)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"-") {
			t.Errorf("lab %s: namespace %s left", name, e.Name())
		}
	}
	if _, err := net.InterfaceByName(name + "-host"); err == nil {
		t.Errorf("lab %s: link %s-host left", name, name)
	}
	for _, p := range procs {
		if p.alive() {
			t.Errorf("lab %s: pid %d (%s) still runs", name, p.PID, p.Exe)
		}
	}
	if _, err := os.Stat(labDir(name)); !os.IsNotExist(err) {
		t.Errorf("lab %s: directory %s left (%v)", name, labDir(name), err)
	}
}

func ping(ctx context.Context, c *Lab, from string, to netip.Addr) error {
	_, err := c.Exec(ctx, from, "ping", "-c", "1", "-W", "1", to.String())
	return err
}

// eventually retries f for a few seconds: a link that came up needs a
// moment before a ping goes through.
func eventually(f func() error) error {
	var err error
	for range 20 {
		if err = f(); err == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

func twillctl(ctx context.Context, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, filepath.Join(binDir, "twillctl"), args...).CombinedOutput()
}

func TestLab(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	name := labName("a")
	c := up(t, Spec{Name: name, Nodes: 3, Backend: "alloc", PodsPerNode: 2, Outside: true})

	nodes := c.Nodes()
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(nodes))
	}
	subnets := map[netip.Prefix]string{}
	for _, n := range nodes {
		if !n.Running || n.PID == 0 {
			t.Errorf("node %s: twilld (pid %d) does not run", n.Name, n.PID)
		}
		if !n.Subnet.IsValid() {
			t.Errorf("node %s: no subnet from %s", n.Name, n.SubnetFile)
			continue
		}
		if other, dup := subnets[n.Subnet]; dup {
			t.Errorf("nodes %s and %s both have subnet %s", other, n.Name, n.Subnet)
		}
		subnets[n.Subnet] = n.Name
		// The daemon runs in the node's namespace.
		if ino, err := netnsInode(n.NetNS); err != nil {
			t.Error(err)
		} else if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", n.PID)); link != fmt.Sprintf("net:[%d]", ino) {
			t.Errorf("node %s: twilld runs in %s, not in %s (inode %d)", n.Name, link, n.NetNS, ino)
		}
	}

	pods := c.Pods()
	if len(pods) != 6 {
		t.Fatalf("%d pods, want 6: %v", len(pods), pods)
	}
	byNode := map[string][]Pod{}
	for _, p := range pods {
		n, err := c.Node(p.Node)
		if err != nil {
			t.Fatal(err)
		}
		if !n.Subnet.Contains(p.Addr) {
			t.Errorf("pod %s has %s, outside its node %s's subnet %s", p.Name, p.Addr, n.Name, n.Subnet)
		}
		// The address is on the pod's eth0 in the kernel, not only in the
		// state file.
		out, err := c.Exec(ctx, p.NetNS, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(string(out), p.Addr.String()+"/") {
			t.Errorf("pod %s: eth0 lacks %s: %v\n%s", p.Name, p.Addr, err, out)
		}
		byNode[p.Node] = append(byNode[p.Node], p)
	}
	for node, ps := range byNode {
		if len(ps) != 2 {
			t.Errorf("node %s has %d pods, want 2", node, len(ps))
			continue
		}
		if err := ping(ctx, c, ps[0].NetNS, ps[1].Addr); err != nil {
			t.Errorf("pod %s cannot ping pod %s on the same node %s: %v", ps[0].Name, ps[1].Name, node, err)
		}
	}

	t.Run("status json", func(t *testing.T) {
		out, err := twillctl(ctx, "lab", "status", "--lab", name, "-o", "json")
		if err != nil {
			t.Fatalf("lab status: %v\n%s", err, out)
		}
		var s struct {
			Nodes []map[string]any `json:"nodes"`
			Pods  []map[string]any `json:"pods"`
		}
		if err := json.Unmarshal(out, &s); err != nil {
			t.Fatalf("lab status -o json: %v\n%s", err, out)
		}
		if len(s.Nodes) != 3 || len(s.Pods) != 6 {
			t.Fatalf("lab status -o json: %d nodes and %d pods, want 3 and 6\n%s", len(s.Nodes), len(s.Pods), out)
		}
		for _, n := range s.Nodes {
			for _, k := range []string{"name", "netns", "underlay", "subnet", "dashboard", "pid"} {
				if v, ok := n[k]; !ok || v == "" || v == float64(0) {
					t.Errorf("node %v: field %q is %v", n["name"], k, v)
				}
			}
		}
		for _, p := range s.Pods {
			for _, k := range []string{"name", "node", "netns_path", "addr"} {
				if v, ok := p[k]; !ok || v == "" {
					t.Errorf("pod %v: field %q is %v", p["name"], k, v)
				}
			}
		}
	})

	t.Run("pod add and del", func(t *testing.T) {
		out, err := twillctl(ctx, "pod", "add", "--lab", name, "n2", "web")
		if err != nil {
			t.Fatalf("pod add: %v\n%s", err, out)
		}
		var web Pod
		for _, p := range c.Pods() {
			if p.Name == "web" {
				web = p
			}
		}
		n2, _ := c.Node("n2")
		if !n2.Subnet.Contains(web.Addr) {
			t.Fatalf("pod web (added by twillctl) has %v, not in n2's %s", web.Addr, n2.Subnet)
		}
		if err := ping(ctx, c, byNode["n2"][0].NetNS, web.Addr); err != nil {
			t.Errorf("ping web: %v", err)
		}
		if err := c.DelPod(ctx, "web"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(web.NetNSPath); !os.IsNotExist(err) {
			t.Errorf("pod namespace %s still there after DelPod (%v)", web.NetNSPath, err)
		}
		if len(c.Pods()) != 6 {
			t.Errorf("%d pods after DelPod, want 6", len(c.Pods()))
		}
	})

	t.Run("daemon crash and restart keeps the subnet", func(t *testing.T) {
		before, _ := c.Node("n1")
		if err := c.StopDaemon(ctx, "n1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if n, _ := c.Node("n1"); n.Running {
			t.Fatalf("twilld on n1 (pid %d) still runs after SIGKILL", n.PID)
		}
		if err := c.StartDaemon(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		after, _ := c.Node("n1")
		if !after.Running || after.PID == before.PID {
			t.Errorf("after StartDaemon: pid %d (was %d), running %v", after.PID, before.PID, after.Running)
		}
		if after.Subnet != before.Subnet {
			t.Errorf("n1's subnet changed across a crash: %s -> %s", before.Subnet, after.Subnet)
		}
		// A clean stop, too.
		if err := c.StopDaemon(ctx, "n1", syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.StartDaemon(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("underlay down and up", func(t *testing.T) {
		n1, _ := c.Node("n1")
		if err := ping(ctx, c, "n2", n1.UnderlayIP); err != nil {
			t.Fatalf("n2 cannot reach n1 at %s before the cut: %v", n1.UnderlayIP, err)
		}
		if err := c.SetUnderlay(ctx, "n1", false); err != nil {
			t.Fatal(err)
		}
		if err := ping(ctx, c, "n2", n1.UnderlayIP); err == nil {
			t.Errorf("n2 reaches n1 at %s with n1's underlay down", n1.UnderlayIP)
		}
		if err := c.SetUnderlay(ctx, "n1", true); err != nil {
			t.Fatal(err)
		}
		if err := eventually(func() error { return ping(ctx, c, "n2", n1.UnderlayIP) }); err != nil {
			t.Errorf("n2 cannot reach n1 at %s after the underlay came back: %v", n1.UnderlayIP, err)
		}
	})

	t.Run("etcd stop and start", func(t *testing.T) {
		leases := func() (string, error) {
			out, err := twillctl(ctx, "leases", "--etcd-endpoints", c.EtcdEndpoint(), "--etcd-prefix", c.EtcdPrefix())
			return string(out), err
		}
		if out, err := leases(); err != nil {
			t.Fatalf("leases through %s: %v\n%s", c.EtcdEndpoint(), err, out)
		}
		pid, _ := c.EtcdPID()
		if err := c.StopEtcd(ctx); err != nil {
			t.Fatal(err)
		}
		if _, running := c.EtcdPID(); running {
			t.Fatalf("etcd (pid %d) runs after StopEtcd", pid)
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		out, err := twillctl(dctx, "leases", "--etcd-endpoints", c.EtcdEndpoint())
		cancel()
		if err == nil {
			t.Errorf("leases answered with etcd stopped:\n%s", out)
		}
		if err := c.StartEtcd(ctx); err != nil {
			t.Fatal(err)
		}
		list, err := leases()
		if err != nil {
			t.Fatalf("leases after StartEtcd: %v\n%s", err, list)
		}
		// The data survived: every node's lease is there.
		for _, n := range c.Nodes() {
			if !strings.Contains(list, n.Subnet.String()) {
				t.Errorf("after the etcd restart, no lease of %s (%s):\n%s", n.Name, n.Subnet, list)
			}
		}
		// And the nodes reach it over the underlay.
		if _, err := c.Exec(ctx, "n3", filepath.Join(binDir, "twillctl"), "leases", "--etcd-endpoints", c.NodeEtcdEndpoint()); err != nil {
			t.Errorf("n3 cannot reach etcd at %s: %v", c.NodeEtcdEndpoint(), err)
		}
	})

	t.Run("outside", func(t *testing.T) {
		ns, addr, ok := c.Outside()
		if !ok {
			t.Fatal("no outside namespace")
		}
		if err := ping(ctx, c, "n1", addr); err != nil {
			t.Errorf("n1 cannot reach the outside %s (%s): %v", addr, ns, err)
		}
	})

	// Down, and check explicitly (cleanup checks again, then Down is a
	// no-op).
	procs := c.procs()
	began := time.Now()
	if err := Down(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab %s down in %v", name, time.Since(began).Round(time.Millisecond))
	assertGone(t, name, procs)
}

func TestTwoLabsSideBySide(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	a := up(t, Spec{Name: labName("b"), Backend: "alloc", PodsPerNode: 1})
	b := up(t, Spec{Name: labName("c"), Backend: "alloc", PodsPerNode: 1})
	for _, c := range []*Lab{a, b} {
		n := c.Nodes()[0]
		if !n.Running || !n.Subnet.IsValid() {
			t.Errorf("lab %s: node %+v not ready", c.Name(), n)
		}
		p := c.Pods()[0]
		if err := ping(ctx, c, p.NetNS, netip.MustParsePrefix(n.Subnet.String()).Addr().Next()); err != nil {
			t.Errorf("lab %s: pod cannot reach its gateway: %v", c.Name(), err)
		}
	}
	// Without --lab, the lab and pod commands say which labs run and how
	// to choose (other tests' labs may run too).
	for _, args := range [][]string{{"lab", "status"}, {"pod", "del", "web"}, {"pod", "list"}} {
		out, err := twillctl(ctx, args...)
		if err == nil || !strings.Contains(string(out), "labs run (") || !strings.Contains(string(out), a.Name()) ||
			!strings.Contains(string(out), b.Name()) || !strings.Contains(string(out), "say which with --lab NAME") {
			t.Errorf("twillctl %v with two labs up: %v\n%s", args, err, out)
		}
	}
	// Removing one leaves the other running.
	if err := Down(ctx, a.Name()); err != nil {
		t.Fatal(err)
	}
	if n := b.Nodes()[0]; !n.Running {
		t.Errorf("lab %s's twilld stopped when lab %s went down", b.Name(), a.Name())
	}
	if err := ping(ctx, b, b.Pods()[0].NetNS, b.Nodes()[0].UnderlayIP); err != nil {
		t.Errorf("lab %s broken after lab %s went down: %v", b.Name(), a.Name(), err)
	}
	names, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if !contains(names, b.Name()) || contains(names, a.Name()) {
		t.Errorf("List() = %v, want %s and not %s", names, b.Name(), a.Name())
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// twillctl lab up prints progress lines and one status table, no log
// lines (those go to the lab's lab.log).
func TestLabUpOutput(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	name := labName("o")
	t.Cleanup(func() {
		if out, err := twillctl(context.Background(), "lab", "down", name); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
	})
	out, err := twillctl(ctx, "lab", "up", "--lab", name, "--nodes", "2", "--backend", "alloc", "--pods-per-node", "1", "--host-access=false", "--bin", binDir)
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"bringing up lab " + name + ": 2 nodes (netns), backend alloc, 1 pod per node\n",
		"  twilld started: node=n1 pid=", "  pod added: pod=n2p1 node=n2 addr=", "lab " + name + " is up in ",
		"its log is /run/twill-lab/" + name + "/lab.log"} {
		if !strings.Contains(text, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, text)
		}
	}
	for _, bad := range []string{"level=", "time=", "INFO", "lab=" + name, "1 pods"} {
		if strings.Contains(text, bad) {
			t.Errorf("lab up output has %q:\n%s", bad, text)
		}
	}
	if n := strings.Count(text, "\nNODE  "); n != 1 {
		t.Errorf("lab up printed %d status tables, want 1:\n%s", n, text)
	}
	log, err := os.ReadFile(filepath.Join(StateDir, name, "lab.log"))
	if err != nil || !strings.Contains(string(log), "level=INFO msg=\"twilld started\"") {
		t.Errorf("lab.log: %v\n%s", err, log)
	}
	out, err = twillctl(ctx, "lab", "up", "--lab", name, "--nodes", "1", "--backend", "alloc", "--host-access=false", "--bin", binDir, "--status=false")
	if err != nil || strings.Contains(string(out), "\nNODE  ") || !strings.Contains(string(out), "removing the existing lab of the same name") {
		t.Errorf("lab up --status=false over the lab: %v\n%s", err, out)
	}
}

func TestUpTwice(t *testing.T) {
	needRoot(t)
	name := labName("d")
	first := up(t, Spec{Name: name, Backend: "alloc", PodsPerNode: 1})
	old := first.procs()
	second := up(t, Spec{Name: name, Nodes: 2, Backend: "alloc", PodsPerNode: 1})
	for _, p := range old {
		if p.alive() {
			t.Errorf("pid %d (%s) of the first lab still runs after the second Up", p.PID, p.Exe)
		}
	}
	if n := len(second.Nodes()); n != 2 {
		t.Errorf("second lab has %d nodes, want 2", n)
	}
	for _, n := range second.Nodes() {
		if !n.Running {
			t.Errorf("second lab: node %s does not run", n.Name)
		}
	}
	if n := len(second.Pods()); n != 2 {
		t.Errorf("second lab has %d pods, want 2", n)
	}
}

func TestDownAfterCrash(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	name := labName("e")
	c := up(t, Spec{Name: name, Nodes: 2, Backend: "alloc", PodsPerNode: 1, Outside: true})
	procs := c.procs()
	// The state is lost (as if /run was cleaned while the processes ran);
	// Down finds the processes by their namespaces and the namespaces by
	// their names.
	if err := os.RemoveAll(labDir(name)); err != nil {
		t.Fatal(err)
	}
	if err := Down(ctx, name); err != nil {
		t.Fatalf("down without state: %v", err)
	}
	assertGone(t, name, procs)
	// Nothing there: Down succeeds.
	if err := Down(ctx, name); err != nil {
		t.Errorf("down of a lab that is not there: %v", err)
	}
}

func TestUpFailsCleanly(t *testing.T) {
	needRoot(t)
	name := labName("f")
	// twilld refuses to start; Up reports it with the daemon's log and
	// leaves nothing behind.
	_, err := Up(testCtx(t), Spec{Name: name, Backend: "alloc", Bin: binDir, TwilldArgs: []string{"--no-such-flag"}}, nil)
	if err == nil {
		Down(context.Background(), name)
		t.Fatal("Up with a twilld that cannot start succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("Up's error does not show twilld's complaint: %v", err)
	}
	t.Logf("Up: %v", err)
	assertGone(t, name, nil)
}

func TestSpecValidation(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "abcdefghijk", Backend: "alloc"}, "too long"},
		{Spec{Name: "Lab", Backend: "alloc"}, "lower-case"},
		{Spec{Name: "a-b", Backend: "alloc"}, "lower-case"},
		{Spec{Name: "ok", Nodes: MaxNodes + 1, Backend: "alloc"}, "nodes"},
		{Spec{Name: "ok"}, "neither a backend"},
		{Spec{Name: "ok", NetConfig: "{"}, "not JSON"},
		{Spec{Name: "ok", Driver: "vagrant", Backend: "alloc"}, "want one of [netns qemu]"},
		{Spec{Name: "ok", Driver: "qemu", Nodes: MaxVMs + 1, Backend: "alloc"}, "at most 3 VMs"},
		{Spec{Name: "ok", Driver: "qemu", Backend: "alloc", Accel: "hvf"}, "want tcg, kvm or auto"},
		{Spec{Name: "ok", Nodes: 2, Backend: "vxlan", FlannelNodes: []string{"n3"}}, `flannel_nodes: node "n3": no such node (the lab has n1..n2)`},
		{Spec{Name: "ok", Driver: "qemu", SystemImage: "/x", Nodes: 2, Backend: "vxlan", FlannelNodes: []string{"n2"}}, "not on a system image"},
		{Spec{Name: "ok", Nodes: 2, Backend: "vxlan", Store: "kube", FlannelNodes: []string{"n2"}}, "flanneld on the etcd store only"},
		{Spec{Name: "ok", Driver: "qemu", Nodes: 2, Backend: "vxlan", Store: "kube", SystemImage: "/x.qcow2"}, "store kube: a system image lab's twill is Ansible's"},
	} {
		_, err := tc.spec.withDefaults()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.spec, err, tc.want)
		}
	}
	s, err := Spec{Backend: "vxlan"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != DefaultName || s.Nodes != 1 || s.NetConfig != `{"Backend":{"Type":"vxlan"},"Network":"10.244.0.0/16"}` {
		t.Errorf("defaults: %+v", s)
	}
	for slot := range hostSlots {
		l := slotLayout(slot)
		for _, a := range []netip.Addr{l.Hub, l.Host, l.Outside, l.nodeAddr(1), l.nodeAddr(MaxNodes)} {
			if !l.Prefix.Contains(a) {
				t.Errorf("slot %d: %s outside %s", slot, a, l.Prefix)
			}
		}
	}
}

// TestUnderlayLab brings up a macvlan lab with the default network config:
// pods get addresses of the slot's pod range on the lab's /24, the nodes'
// subnet files describe the underlay, and a pod reaches the hub (its
// gateway) and a pod on the other node directly.
func TestUnderlayLab(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	c := up(t, Spec{Name: labName("u"), Backend: "macvlan", Nodes: 2, PodsPerNode: 1})
	pods := slotLayout(0).Pods
	for _, p := range c.Pods() {
		if !pods.Contains(p.Addr) {
			t.Errorf("pod %s has %s, outside the lab's pod range %s", p.Name, p.Addr, pods)
		}
	}
	for _, n := range c.Nodes() {
		sf, err := subnetfile.Read(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		if !sf.IsSublink() || sf.Sublink.Master != "eth0" || sf.Sublink.Mode != "bridge" ||
			sf.Sublink.Subnet.String() != "192.168.56.0/24" || sf.Sublink.Gateway != c.snapshot().HubAddr {
			t.Errorf("node %s subnet file: %+v", n.Name, sf)
		}
	}
	ps := c.Pods()
	if err := ping(ctx, c, ps[0].NetNS, c.snapshot().HubAddr); err != nil {
		t.Errorf("pod to the hub: %v", err)
	}
	if err := ping(ctx, c, ps[0].NetNS, ps[1].Addr); err != nil {
		t.Errorf("pod to the other node's pod: %v", err)
	}
}
