package web_test

// TestBrowser drives Debian's chromium (through chromedp) against a real
// 3-node vxlan lab. Chromium runs inside the lab's hub namespace, which
// holds the underlay bridge; chromedp talks to it over a pipe (fds 3 and 4
// survive `ip netns exec`), so the host's namespace is not touched.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/vmtest"
)

// artifactDir is where the screenshots go: $TWILL_ARTIFACTS, or a new
// directory under the temp dir. It is kept after the test.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TWILL_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "twill-web-artifacts-"); err != nil {
			t.Fatal(err)
		}
	} else {
		dir = filepath.Join(dir, "web")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// browser starts chromium in the namespace netns and returns a chromedp
// context for one tab.
func browser(t *testing.T, ctx context.Context, netns string) context.Context {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("needs chromium (Debian package chromium; make deps installs it)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			// Run the browser in the lab's namespace; the pipe's fds pass
			// through ip netns exec.
			cmd.Path = "/usr/bin/ip"
			if p, err := exec.LookPath("ip"); err == nil {
				cmd.Path = p
			}
			cmd.Args = append([]string{"ip", "netns", "exec", netns, chromium}, cmd.Args[1:]...)
			if cmd.SysProcAttr == nil {
				cmd.SysProcAttr = &syscall.SysProcAttr{}
			}
			cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		}),
	}
	actx, cancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancel)
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium in %s: %v", netns, err)
	}
	return bctx
}

func shot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("screenshot %s", p)
}

// waitFor evaluates js (an expression) until it is true.
func waitFor(t *testing.T, ctx context.Context, what, js string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
			t.Fatalf("%s: not within %v (err %v); page:\n%s", what, timeout, err, html)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func evalInt(t *testing.T, ctx context.Context, js string) int64 {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[float64](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return int64(v)
}

func TestBrowser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: brings up a lab of network namespaces")
	}
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("needs chromium (Debian package chromium; make deps installs it)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	art := artifactDir(t)
	bin := binaries.ForTest(t)

	name := fmt.Sprintf("w%d", os.Getpid()%10000000)
	spec := vmtest.Spec{Name: name, Nodes: 3, Backend: "vxlan", PodsPerNode: 1, Bin: bin}
	began := time.Now()
	c, err := vmtest.Up(ctx, spec, nil)
	t.Cleanup(func() {
		if err := vmtest.Down(context.Background(), name); err != nil {
			t.Errorf("down %s: %v", name, err)
		}
	})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("lab %s up in %v", name, time.Since(began).Round(time.Millisecond))
	nodes := c.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	b := browser(t, ctx, c.HubNetNS())
	base := n1.DashboardURL

	// Overview: three nodes, each answering, and the tunnels between them.
	if err := chromedp.Do(b, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "overview shows 3 nodes and 3 tunnels",
		`document.querySelectorAll("svg.topo g.node").length === 3 && document.querySelectorAll("svg.topo g.link").length === 3 && document.querySelectorAll("svg.topo g.node.down").length === 0`, 20*time.Second)
	waitFor(t, b, "the cluster table lists every node as answering",
		`document.querySelectorAll("[data-region=cluster] tbody tr").length === 3 && document.querySelectorAll("[data-region=cluster] .state.unreachable").length === 0`, 15*time.Second)
	waitFor(t, b, "the page is live", `document.getElementById("live").classList.contains("on")`, 10*time.Second)
	for _, n := range nodes {
		js := fmt.Sprintf(`!!document.querySelector('svg.topo g.node[data-subnet=%q]')`, n.Subnet.String())
		if has, err := chromedp.Run(b, chromedp.Evaluate[bool](js)); err != nil || !has {
			t.Errorf("topology lacks node %s (%s)", n.Name, n.Subnet)
		}
	}
	shot(t, b, art, "1-overview")

	// twillctl reads the same API (from the hub, where the nodes answer).
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"status"}, []string{n1.DaemonName, "lease-held", "yes", n1.Subnet.String()}},
		{[]string{"leases"}, []string{n2.DaemonName, n3.Subnet.String(), "(this node)"}},
		{[]string{"routes"}, []string{n2.Subnet.String(), "ok", "twill.1"}},
		{[]string{"tunnels"}, []string{n2.DaemonName, n3.Subnet.String(), "192.168.56."}},
		{[]string{"tunnels", "-o", "json"}, []string{`"tx_packets"`, `"peer": "` + n2.Subnet.String()}},
	} {
		argv := append([]string{filepath.Join(bin, "twillctl")}, tc.args...)
		argv = append(argv, "--node", base)
		out, err := c.Exec(ctx, c.HubNetNS(), argv...)
		if err != nil {
			t.Errorf("twillctl %v: %v\n%s", tc.args, err, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("twillctl %v lacks %q:\n%s", tc.args, w, out)
			}
		}
	}

	// Tunnels: the counters count up while pods talk, without a reload.
	pods := c.Pods()
	var src, dst vmtest.Pod
	for _, p := range pods {
		switch p.Node {
		case n1.Name:
			src = p
		case n2.Name:
			dst = p
		}
	}
	if err := chromedp.Do(b, chromedp.Navigate(base+"/tunnels")); err != nil {
		t.Fatal(err)
	}
	row := fmt.Sprintf(`document.querySelector('#tunnels tr[data-peer=%q]')`, n2.Subnet.String())
	waitFor(t, b, "tunnels table has n2", row+` !== null`, 10*time.Second)
	if _, err := chromedp.Run(b, chromedp.Evaluate[bool](`window.twillNoReload = true`)); err != nil {
		t.Fatal(err)
	}
	txJS := row + `.querySelector(".tx-packets").getAttribute("data-value") * 1`
	before := evalInt(t, b, txJS)
	tctx, tcancel := context.WithCancel(ctx)
	traffic := make(chan error, 1)
	go func() {
		_, err := c.Exec(tctx, src.NetNS, "ping", "-q", "-f", "-s", "1000", "-w", "15", dst.Addr.String())
		traffic <- err
	}()
	seen := []int64{before}
	deadline := time.Now().Add(14 * time.Second)
	for len(seen) < 4 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		if v := evalInt(t, b, txJS); v > seen[len(seen)-1] {
			seen = append(seen, v)
		}
	}
	waitFor(t, b, "n2's tunnel is up with a rate", row+`.classList.contains("t-up")`, 5*time.Second)
	shot(t, b, art, "2-tunnels-transfer")
	if noReload, err := chromedp.Run(b, chromedp.Evaluate[bool](`window.twillNoReload === true`)); err != nil || !noReload {
		t.Errorf("the page reloaded (marker lost)")
	}
	if len(seen) < 4 {
		t.Errorf("tx packets to n2 did not count up live three times during the transfer: %v", seen)
	} else {
		t.Logf("tx packets to n2 as the page showed them, live: %v", seen)
	}
	tcancel()
	<-traffic

	// Leases and routes pages.
	if err := chromedp.Do(b, chromedp.Navigate(base+"/leases")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "3 leases, own highlighted", `document.querySelectorAll("#leases tbody tr[data-subnet]").length === 3 && document.querySelectorAll("#leases tr.own").length === 1`, 10*time.Second)
	shot(t, b, art, "3-leases")
	if err := chromedp.Do(b, chromedp.Navigate(base+"/routes")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "routes in sync with 2 peer routes", `document.querySelectorAll("[data-table=Routes] tr.r-ok").length === 2 && !!document.querySelector(".pill.ok")`, 10*time.Second)
	shot(t, b, art, "4-routes")

	// A node stopped and cut off: its tunnel turns unreachable.
	if err := chromedp.Do(b, chromedp.Navigate(base+"/tunnels")); err != nil {
		t.Fatal(err)
	}
	if err := c.StopDaemon(ctx, n3.Name, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.SetUnderlay(ctx, n3.Name, false); err != nil {
		t.Fatal(err)
	}
	row3 := fmt.Sprintf(`document.querySelector('#tunnels tr[data-peer=%q]')`, n3.Subnet.String())
	waitFor(t, b, "n3's tunnel turns unreachable", row3+` !== null && `+row3+`.classList.contains("t-unreachable")`, 20*time.Second)
	shot(t, b, art, "5-tunnels-n3-unreachable")
	if err := chromedp.Do(b, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "overview marks n3", fmt.Sprintf(`!!document.querySelector('svg.topo g.node.down[data-subnet=%q]') && document.querySelectorAll("svg.topo g.link.unreachable").length >= 1`, n3.Subnet.String()), 10*time.Second)
	shot(t, b, art, "6-overview-n3-down")

	// A lease removed from etcd leaves the leases table, live.
	if err := chromedp.Do(b, chromedp.Navigate(base+"/leases")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "n3's lease listed", fmt.Sprintf(`!!document.querySelector('#leases tr[data-subnet=%q]')`, n3.Subnet.String()), 10*time.Second)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.EtcdEndpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	key := c.EtcdPrefix() + "/subnets/" + lease.SubnetKey(n3.Subnet)
	resp, err := cli.Delete(ctx, key)
	if err != nil || resp.Deleted != 1 {
		t.Fatalf("delete %s: deleted %v, %v", key, resp, err)
	}
	waitFor(t, b, "n3's lease leaves the table", fmt.Sprintf(`!document.querySelector('#leases tr[data-subnet=%q]') && document.querySelectorAll("#leases tbody tr[data-subnet]").length === 2`, n3.Subnet.String()), 15*time.Second)
	shot(t, b, art, "7-leases-n3-removed")

	// A lease twill must skip (host-gw data on a vxlan network, a node name
	// with markup in it): the overview lists it with its reason, the cluster
	// table marks it, and the markup stays text.
	grant, err := cli.Grant(ctx, 120)
	if err != nil {
		t.Fatal(err)
	}
	skipped := "10.244.200.0/24"
	skippedKey := c.EtcdPrefix() + "/subnets/10.244.200.0-24"
	value := `{"PublicIP":"192.168.56.250","PublicIPv6":null,"BackendType":"host-gw","Twill":{"Node":"<b>evil</b>"}}`
	if _, err := cli.Put(ctx, skippedKey, value, clientv3.WithLease(grant.ID)); err != nil {
		t.Fatalf("put %s: %v", skippedKey, err)
	}
	if err := chromedp.Do(b, chromedp.Navigate(base+"/")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "the overview lists the skipped peer with its reason", fmt.Sprintf(`(() => {
		const r = document.querySelector('#unrouted tr[data-subnet=%q]');
		return !!r && r.innerText.includes("192.168.56.250") && r.innerText.includes("<b>evil</b>") && r.innerText.includes('backend type "host-gw"');
	})()`, skipped), 15*time.Second)
	waitFor(t, b, "the cluster table marks the skipped lease", fmt.Sprintf(`(() => {
		const r = document.querySelector('[data-region=cluster] tr.unrouted[data-subnet=%q]');
		return !!r && r.innerText.includes("not routed by this node") && !document.querySelector("main b");
	})()`, skipped), 10*time.Second)
	waitFor(t, b, "readiness fails peers-routable", `[...document.querySelectorAll(".checks li.bad .cname")].some(e => e.innerText === "peers-routable")`, 10*time.Second)
	shot(t, b, art, "8-overview-peer-not-routed")
	if _, err := cli.Delete(ctx, skippedKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, b, "the list goes when the lease does", `!document.querySelector("#unrouted")`, 15*time.Second)

	// Figures for the report.
	subnets := []string{}
	for _, n := range nodes {
		subnets = append(subnets, n.Subnet.String())
	}
	slices.Sort(subnets)
	t.Logf("nodes %s; dashboard %s; packets seen %s", strings.Join(subnets, " "), base, strconv.Itoa(len(seen)))
	_ = n2
}
