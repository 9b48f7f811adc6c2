package bgp_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/bgprouter"
	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// gatewayLab is gateway BGP in namespaces: two nodes in two L3 subnets
// (racks), joined only by a router namespace running BIRD 2 (or FRR),
// which also holds the lab's etcd. The router has a loopback address
// (192.168.56.1) both nodes peer with (iBGP, the router a route reflector
// that sets itself as next hop); each node has one pod on a veth.
//
//	podA --- a1 eth0 192.168.56.66/27 === ra .65 [router lo .1] rb .97 === b1 eth0 192.168.56.98/27 --- podB
type gatewayLab struct {
	t      *testing.T
	bin    string
	dir    string
	router *nstest.NS
	nodes  []*gwNode
	frrDir string // FRR's directory (its logs), if it runs
}

type gwNode struct {
	name    string
	ns, pod *nstest.NS
	ip, gw  netip.Addr
	subnet  netip.Prefix
	podIP   netip.Addr
	cmd     *exec.Cmd
	log     string
	netCfg  string
	etcd    string
	// logOff is the log's size when twilld was last started.
	logOff int64
	// args are extra twilld flags.
	args []string
}

const routerID = "192.168.56.1"

func ipc(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func inNS(t testing.TB, ns *nstest.NS, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...).CombinedOutput()
	return string(out), err
}

func mustIn(t testing.TB, ns *nstest.NS, args ...string) string {
	t.Helper()
	out, err := inNS(t, ns, args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// start runs a long-lived process inside ns, logging to logPath; it is
// killed (by its PID) when the test ends.
func start(t testing.TB, ns *nstest.NS, logPath string, name string, args ...string) *exec.Cmd {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// waitFor polls cond every 50 ms until it is true or within has passed,
// and returns how long it took.
func waitFor(t testing.TB, within time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	t0 := time.Now()
	var last string
	for time.Since(t0) < within {
		var ok bool
		if ok, last = cond(); ok {
			return time.Since(t0)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last: %s", what, within, last)
	return 0
}

func newGatewayLab(t *testing.T, netConfig string, nodeArgs ...[]string) *gatewayLab {
	nstest.NeedRoot(t, "creates network namespaces, a router and pods")
	for _, c := range []string{"ip", "bird", "birdc"} {
		nstest.NeedCommand(t, c, "the gateway lab's router runs BIRD 2 (Debian package bird2)")
	}
	l := &gatewayLab{t: t, bin: binaries.ForTest(t), dir: t.TempDir()}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, name := range []string{"a1.log", "b1.log", "bird.log", "zebra.log", "bgpd.log"} {
			b, _ := os.ReadFile(filepath.Join(l.dir, name))
			if l.frrDir != "" && strings.HasSuffix(name, "d.log") || name == "zebra.log" {
				b, _ = os.ReadFile(filepath.Join(l.frrDir, name))
			}
			var keep []string
			for _, line := range strings.Split(string(b), "\n") {
				if !strings.Contains(line, "level=DEBUG") {
					keep = append(keep, line)
				}
			}
			t.Logf("%s (without debug):\n%s", name, strings.Join(keep[max(0, len(keep)-40):], "\n"))
		}
	})
	l.router = nstest.New(t, "rtr")
	ipc(t, "-n", l.router.Name, "addr", "add", routerID+"/32", "dev", "lo")
	mustIn(t, l.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i, rack := range []struct{ name, node, gw string }{{"a1", "192.168.56.66", "192.168.56.65"}, {"b1", "192.168.56.98", "192.168.56.97"}} {
		n := &gwNode{name: rack.name, ip: netip.MustParseAddr(rack.node), gw: netip.MustParseAddr(rack.gw)}
		if i < len(nodeArgs) {
			n.args = nodeArgs[i]
		}
		n.ns, n.pod = nstest.New(t, rack.name), nstest.New(t, rack.name+"p")
		rl := fmt.Sprintf("r%d", i)
		ipc(t, "-n", l.router.Name, "link", "add", rl, "type", "veth", "peer", "name", "eth0", "netns", n.ns.Name)
		ipc(t, "-n", l.router.Name, "addr", "add", rack.gw+"/27", "dev", rl)
		ipc(t, "-n", l.router.Name, "link", "set", rl, "up")
		ipc(t, "-n", n.ns.Name, "addr", "add", rack.node+"/27", "dev", "eth0")
		ipc(t, "-n", n.ns.Name, "link", "set", "eth0", "up")
		ipc(t, "-n", n.ns.Name, "route", "add", "default", "via", rack.gw)
		mustIn(t, n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		l.nodes = append(l.nodes, n)
	}
	// etcd in the router, on its loopback address: both racks reach it.
	l.startCluster(netConfig, routerID)
	return l
}

// startCluster starts etcd in the router (or switch) namespace on addr,
// then twilld on every node with netConfig, and adds the pods.
func (l *gatewayLab) startCluster(netConfig, addr string) {
	t := l.t
	etcdLog := filepath.Join(l.dir, "etcd.log")
	start(t, l.router, etcdLog, filepath.Join(l.bin, "twillctl"), "etcd", "--data-dir", filepath.Join(l.dir, "etcd"),
		"--listen-client-urls", "http://"+addr+":2379")
	waitFor(t, 60*time.Second, "etcd ready", func() (bool, string) {
		b, _ := os.ReadFile(etcdLog)
		return strings.Contains(string(b), "etcd ready at"), lastLine(string(b))
	})
	cfg := filepath.Join(l.dir, "net-config.json")
	if err := os.WriteFile(cfg, []byte(netConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.nodes {
		n.netCfg, n.etcd, n.log = cfg, "http://"+addr+":2379", filepath.Join(l.dir, n.name+".log")
		l.startTwilld(n)
	}
	for _, n := range l.nodes {
		l.waitReady(n)
		l.addPod(n)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func (l *gatewayLab) subnetFile(n *gwNode) string { return filepath.Join(l.dir, n.name+".env") }

func (l *gatewayLab) startTwilld(n *gwNode) {
	n.logOff = 0
	if fi, err := os.Stat(n.log); err == nil {
		n.logOff = fi.Size()
	}
	args := []string{"--etcd-endpoints", n.etcd, "--net-config", n.netCfg,
		"--public-ip", n.ip.String(), "--node-name", n.name, "--subnet-file", l.subnetFile(n),
		"--listen", n.ip.String() + ":9180", "--log-level", "debug"}
	n.cmd = start(l.t, n.ns, n.log, filepath.Join(l.bin, "twilld"), append(args, n.args...)...)
}

// waitReady waits for the node's log to say ready and reads its subnet.
func (l *gatewayLab) waitReady(n *gwNode) time.Duration {
	l.t.Helper()
	off := n.logOff
	d := waitFor(l.t, 30*time.Second, n.name+" ready", func() (bool, string) {
		b, _ := os.ReadFile(n.log)
		if int64(len(b)) < off {
			return false, ""
		}
		return strings.Contains(string(b[off:]), "msg=ready"), lastLine(string(b))
	})
	f, err := subnetfile.Read(l.subnetFile(n))
	if err != nil {
		l.t.Fatalf("%s: subnet file: %v", n.name, err)
	}
	n.subnet = f.NodeSubnet()
	return d
}

// addPod puts the node's pod on a veth: the node side holds the subnet's
// .1, the pod .2.
func (l *gatewayLab) addPod(n *gwNode) {
	t := l.t
	gw := n.subnet.Addr().Next()
	n.podIP = gw.Next()
	ipc(t, "-n", n.ns.Name, "link", "add", "cni0", "type", "veth", "peer", "name", "eth0", "netns", n.pod.Name)
	ipc(t, "-n", n.ns.Name, "addr", "add", fmt.Sprintf("%s/%d", gw, n.subnet.Bits()), "dev", "cni0")
	ipc(t, "-n", n.ns.Name, "link", "set", "cni0", "up")
	ipc(t, "-n", n.pod.Name, "addr", "add", fmt.Sprintf("%s/%d", n.podIP, n.subnet.Bits()), "dev", "eth0")
	ipc(t, "-n", n.pod.Name, "link", "set", "eth0", "up")
	ipc(t, "-n", n.pod.Name, "route", "add", "default", "via", gw.String())
}

// birdConfig is the router's BIRD 2 config: iBGP with each node, as a
// route reflector that makes itself the next hop (its address on the
// node's rack), graceful restart on, learned routes into the kernel.
func (l *gatewayLab) birdConfig(asn int, extra ...string) string {
	return l.birdConfigASNs(asn, nil, extra...)
}

// routerConfig is the router's sessions with the nodes: node i in AS
// nodeASN[i] (eBGP, the router no reflector then); nil for the router's
// AS (iBGP).
func (l *gatewayLab) routerConfig(asn int, nodeASN []int) bgprouter.Config {
	c := bgprouter.Config{ID: netip.MustParseAddr(routerID), ASN: uint32(asn), DirectInterfaces: "r*"}
	for i, n := range l.nodes {
		peerASN := asn
		if nodeASN != nil {
			peerASN = nodeASN[i]
		}
		c.Neighbors = append(c.Neighbors, bgprouter.Neighbor{Name: fmt.Sprintf("node%d", i), Addr: n.ip, ASN: uint32(peerASN), NextHop: n.gw})
	}
	return c
}

// birdConfigASNs is birdConfig with node i in AS nodeASN[i].
func (l *gatewayLab) birdConfigASNs(asn int, nodeASN []int, extra ...string) string {
	c := l.routerConfig(asn, nodeASN)
	c.Extra = strings.Join(extra, "")
	return c.BIRD()
}

func (l *gatewayLab) startBIRD(asn int, extra ...string) (sock string) {
	return l.startBIRDWith(l.birdConfig(asn, extra...))
}

func (l *gatewayLab) startBIRDWith(config string) (sock string) {
	conf := filepath.Join(l.dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		l.t.Fatal(err)
	}
	sock = filepath.Join(l.dir, "bird.ctl")
	start(l.t, l.router, filepath.Join(l.dir, "bird.log"), "bird", "-f", "-c", conf, "-s", sock, "-P", filepath.Join(l.dir, "bird.pid"))
	return sock
}

func birdc(t testing.TB, sock string, args ...string) string {
	out, _ := exec.Command("birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	return string(out)
}

// twillRoute returns the node's kernel route to dst of twill's protocol,
// or "".
func twillRoute(t testing.TB, n *gwNode, dst netip.Prefix) string {
	out, _ := exec.Command("ip", "-n", n.ns.Name, "route", "show", dst.String(), "proto", "126").CombinedOutput()
	return strings.TrimSpace(string(out))
}

func ping(t testing.TB, from *gwNode, to netip.Addr) error {
	out, err := inNS(t, from.pod, "ping", "-c", "1", "-W", "1", to.String())
	if err != nil {
		return fmt.Errorf("ping %s from %s's pod: %v: %s", to, from.name, err, lastLine(out))
	}
	return nil
}

// TestGatewayBIRD: nodes in two L3 subnets peer only with the router's
// BIRD; it learns each node's subnet, the nodes route to each other's
// through it, nothing is encapsulated, and a twilld restart loses no ping
// (graceful restart: the kernel keeps the routes, BIRD keeps the node's).
func TestGatewayBIRD(t *testing.T) {
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"RestartTime":20,"ConnectRetry":1,
		"Peers":[{"Address":"` + routerID + `","ASN":64512}]}}`
	l := newGatewayLab(t, cfg)
	t0 := time.Now()
	sock := l.startBIRD(64512)
	playGateway(t, l, t0, "BIRD", "bird", func() (bool, string) {
		out := birdc(t, sock, "show", "protocols")
		return len(bgprouter.BIRDEstablished(out)) == 2, out
	})
}

// playGateway checks a gateway lab whose router was started at t0:
// sessionsUp says whether the router has both sessions established;
// routerProto is the protocol of the routes the router installs.
func playGateway(t *testing.T, l *gatewayLab, t0 time.Time, router, routerProto string, sessionsUp func() (bool, string)) {
	a, b := l.nodes[0], l.nodes[1]
	learn := waitFor(t, 30*time.Second, "both sessions established at the router", sessionsUp)
	t.Logf("%s: both sessions established %s after it started", router, learn.Round(time.Millisecond))
	// The router learns every node's subnet, with the node as next hop.
	waitFor(t, 20*time.Second, "the router's kernel routes both subnets to their nodes", func() (bool, string) {
		out := ipc(t, "-n", l.router.Name, "route", "show", "proto", routerProto)
		via := func(n *gwNode) bool {
			return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(n.subnet.String()) + ` (nhid \d+ )?via ` + regexp.QuoteMeta(n.ip.String()) + ` `).MatchString(out)
		}
		return via(a) && via(b), out
	})
	// Each node routes the other's subnet via its rack's router address.
	for _, pair := range [][2]*gwNode{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		waitFor(t, 20*time.Second, from.name+" learns "+to.subnet.String(), func() (bool, string) {
			r := twillRoute(t, from, to.subnet)
			return strings.Contains(r, "via "+from.gw.String()+" dev eth0"), r
		})
		if r := ipc(t, "-n", from.ns.Name, "route", "show", "type", "blackhole", from.subnet.String()); !strings.Contains(r, "proto 126") {
			t.Errorf("%s: no blackhole of twill's for its own subnet %s: %q", from.name, from.subnet, r)
		}
	}
	t.Logf("routes in both nodes' kernels %s after %s started", time.Since(t0).Round(time.Millisecond), router)
	for _, pair := range [][2]*gwNode{{a, b}, {b, a}} {
		if err := ping(t, pair[0], pair[1].podIP); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing encapsulated: the nodes have no tunnel device.
	for _, n := range l.nodes {
		out := ipc(t, "-n", n.ns.Name, "-d", "link", "show")
		if m := regexp.MustCompile(`(?m)^\s+(ipip|vxlan|tun|gre|wireguard)\b`).FindString(out); m != "" {
			t.Errorf("%s has a tunnel device (%s):\n%s", n.name, strings.TrimSpace(m), out)
		}
	}
	transfer(t, l, b, a, 64<<20)
	// twillctl bgp lists the session as calicoctl node status would.
	out := l.twillctl(a, "bgp")
	if !regexp.MustCompile(`192\.168\.56\.1\s+64512\s+external\s+Established`).MatchString(out) {
		t.Errorf("twillctl bgp on a1:\n%s", out)
	}
	t.Logf("twillctl bgp on a1:\n%s", out)

	// Graceful restart: pings every 10 ms across a twilld restart on a1
	// lose nothing; the router keeps a1's route all along.
	t.Run("restart", func(t *testing.T) {
		stop := make(chan struct{})
		var sent, lost int
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent++
				if ping(t, b, a.podIP) != nil {
					lost++
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
		// The router's kernel route to a1's subnet is never deleted, not
		// even for the moment of a delete and add (BIRD's way of changing
		// a route): a ping in flight then would be lost.
		var routerRoutes bytes.Buffer
		mon := exec.Command("ip", "-n", l.router.Name, "-ts", "monitor", "route") // -ts: flushed per line
		mon.Stdout = &routerRoutes
		if err := mon.Start(); err != nil {
			t.Fatalf("ip monitor route on the router: %v", err)
		}
		defer func() { _ = mon.Process.Kill(); _ = mon.Wait() }()
		time.Sleep(300 * time.Millisecond)
		if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_ = a.cmd.Wait()
		if r := ipc(t, "-n", l.router.Name, "route", "show", a.subnet.String()); !strings.Contains(r, "via "+a.ip.String()) {
			t.Errorf("router lost %s while a1's twilld is down: %q", a.subnet, r)
		}
		if r := twillRoute(t, a, b.subnet); r == "" {
			t.Errorf("a1's kernel lost the route to %s while twilld is down", b.subnet)
		}
		time.Sleep(time.Second)
		l.startTwilld(a)
		ready := l.waitReady(a)
		back := waitFor(t, 30*time.Second, "a1's session back", sessionsUp)
		time.Sleep(2 * time.Second) // past the End-of-RIB: the stale routes are replaced by learned ones
		close(stop)
		wg.Wait()
		t.Logf("twilld restart on a1: ready in %s, session back %s later; %d pings every 10 ms, %d lost", ready.Round(time.Millisecond), back.Round(time.Millisecond), sent, lost)
		if lost != 0 {
			t.Errorf("%d of %d pings lost across the twilld restart", lost, sent)
		}
		_ = mon.Process.Kill()
		_ = mon.Wait()
		for line := range strings.Lines(routerRoutes.String()) {
			if strings.Contains(line, "] Deleted "+a.subnet.String()+" ") {
				t.Errorf("the router deleted its route to %s during a1's twilld restart (%s): peers must keep it until a1's End-of-RIB:\n%s", a.subnet, router, routerRoutes.String())
				break
			}
		}
		if r := twillRoute(t, a, b.subnet); !strings.Contains(r, "via "+a.gw.String()) {
			t.Errorf("after the restart a1's route to %s = %q", b.subnet, r)
		}
	})

	// A node that stops (twilld killed, its rack's link down): the router
	// withdraws its subnet, at the latest after the hold time and the
	// restart time (graceful restart keeps it that long; FRR drops it at
	// once when the next hop's link goes), and the other node's kernel
	// loses it.
	t.Run("node-stops", func(t *testing.T) {
		t0 := time.Now()
		_ = b.cmd.Process.Kill()
		_ = b.cmd.Wait()
		ipc(t, "-n", b.ns.Name, "link", "set", "eth0", "down")
		gone := waitFor(t, 60*time.Second, "a1 loses "+b.subnet.String(), func() (bool, string) {
			r := twillRoute(t, a, b.subnet)
			return r == "", r
		})
		t.Logf("b1 stopped: its subnet gone from a1's kernel after %s (%s; at most hold time 9 s + restart time 20 s)", gone.Round(time.Millisecond), router)
		_ = t0
	})
}

// twillctl runs twillctl against the node's API from inside its namespace.
func (l *gatewayLab) twillctl(n *gwNode, args ...string) string {
	args = append(args, "--node", "http://"+n.ip.String()+":9180")
	out, _ := inNS(l.t, n.ns, append([]string{filepath.Join(l.bin, "twillctl")}, args...)...)
	return out
}

// TestGatewayASPerRack: each rack's node has its own AS (twilld
// --bgp-asn) and peers by eBGP with the router (AS 65000, given per node
// by --bgp-peer: no Backend.Peers); the nodes learn each other's subnets
// through it and their pods talk.
func TestGatewayASPerRack(t *testing.T) {
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"ConnectRetry":1}}`
	l := newGatewayLab(t, cfg,
		[]string{"--bgp-asn", "65001", "--bgp-peer", routerID + ":65000"},
		[]string{"--bgp-asn", "65002", "--bgp-peer", routerID + ":65000"})
	sock := l.startBIRDWith(l.birdConfigASNs(65000, []int{65001, 65002}))
	a, b := l.nodes[0], l.nodes[1]
	waitFor(t, 30*time.Second, "both eBGP sessions established", func() (bool, string) {
		out := birdc(t, sock, "show", "protocols")
		return len(bgprouter.BIRDEstablished(out)) == 2, out
	})
	for _, pair := range [][2]*gwNode{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		waitFor(t, 20*time.Second, from.name+" learns "+to.subnet.String(), func() (bool, string) {
			r := twillRoute(t, from, to.subnet)
			return strings.Contains(r, "via "+from.gw.String()+" dev eth0"), r
		})
		if err := ping(t, from, to.podIP); err != nil {
			t.Fatal(err)
		}
	}
	out := l.twillctl(a, "bgp")
	if !regexp.MustCompile(`192\.168\.56\.1\s+65000\s+external\s+Established`).MatchString(out) {
		t.Errorf("twillctl bgp on a1:\n%s", out)
	}
	if r := birdc(t, sock, "show", "route", "all", b.subnet.String()); !strings.Contains(r, "65002") {
		t.Errorf("BIRD's route to %s does not have AS path 65002:\n%s", b.subnet, r)
	}
}

// TestGatewayWrongASN: a router whose AS is not the one configured for it
// refuses the session; the node shows the session's error and is not
// ready, naming the peer.
func TestGatewayWrongASN(t *testing.T) {
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"ConnectRetry":1,
		"Peers":[{"Address":"` + routerID + `","ASN":65000}]}}`
	l := newGatewayLab(t, cfg)
	l.startBIRD(64512)
	a := l.nodes[0]
	var st string
	waitFor(t, 30*time.Second, "a1 not ready, naming the peer", func() (bool, string) {
		st = l.twillctl(a, "status")
		return strings.Contains(st, "bgp-sessions") && strings.Contains(st, routerID+" (AS 65000, external)"), st
	})
	t.Logf("twillctl status on a1:\n%s", st)
	bgp := l.twillctl(a, "bgp")
	if !strings.Contains(bgp, routerID) || strings.Contains(bgp, "Established") || !strings.Contains(bgp, "as number mismatch") {
		t.Errorf("twillctl bgp on a1:\n%s", bgp)
	}
	t.Logf("twillctl bgp on a1:\n%s", bgp)
	// The dashboard's BGP sessions table shows the peer with its error.
	page := mustIn(t, a.ns, filepath.Join(l.bin, "twillctl"), "vm", "http-get", "--url", "http://"+a.ip.String()+":9180/tunnels")
	row := regexp.MustCompile(`(?s)<tr data-peer="` + regexp.QuoteMeta(routerID) + `".*?</tr>`).FindString(page)
	if !strings.Contains(row, "65000") || !strings.Contains(row, "as number mismatch") {
		t.Errorf("the dashboard's row for %s lacks its AS or its error: %q\n%s", routerID, row, page[:min(len(page), 2000)])
	}
}

// TestGatewayBIRDLearns1000: BIRD advertises 1000 more prefixes (static
// blackholes of the router, in the cluster network); the time until all
// are in a node's kernel is printed.
func TestGatewayBIRDLearns1000(t *testing.T) {
	cfg := `{"Network":"10.0.0.0/8","SubnetMax":"10.127.255.0","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"ConnectRetry":1,
		"Peers":[{"Address":"` + routerID + `","ASN":64512}]}}`
	l := newGatewayLab(t, cfg)
	var static strings.Builder
	static.WriteString("protocol static learn1000 {\n\tipv4;\n")
	for i := range 1000 {
		fmt.Fprintf(&static, "\troute 10.%d.%d.0/24 blackhole;\n", 200+i/256, i%256)
	}
	static.WriteString("}\n")
	l.startBIRD(64512, static.String())
	a := l.nodes[0]
	var n int
	took := waitFor(t, 60*time.Second, "a1 holds the 1000 routes", func() (bool, string) {
		out, _ := exec.Command("ip", "-n", a.ns.Name, "route", "show", "proto", "126", "root", "10.200.0.0/14").CombinedOutput()
		n = strings.Count(string(out), "via "+a.gw.String())
		return n == 1000, fmt.Sprintf("%d routes", n)
	})
	t.Logf("1000 prefixes from BIRD in a1's kernel %s after BIRD started (the session's setup included)", took.Round(time.Millisecond))
}

// transfer sends size bytes from one node's pod to another's and checks
// they arrived intact (twillctl nettest: SHA-256 on both sides).
func transfer(t *testing.T, l *gatewayLab, from, to *gwNode, size int) {
	t.Helper()
	twillctl := filepath.Join(l.bin, "twillctl")
	addr := netip.AddrPortFrom(to.podIP, 5201).String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", to.pod.Name, twillctl, "nettest", "serve", "--listen", addr, "--timeout", "50s")
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	snd, err := exec.CommandContext(ctx, "ip", "netns", "exec", from.pod.Name, twillctl, "nettest", "send", "--to", addr, "--size", fmt.Sprint(size), "--timeout", "50s").CombinedOutput()
	if err != nil {
		cancel()
		_ = srv.Wait()
		t.Fatalf("send %d bytes to %s: %v: %s", size, addr, err, snd)
	}
	_ = srv.Wait()
	sum := regexp.MustCompile(`"sha256": ?"([0-9a-f]{64})"`)
	s, r := sum.FindStringSubmatch(string(snd)), sum.FindStringSubmatch(srvOut.String())
	if s == nil || r == nil || s[1] != r[1] {
		t.Fatalf("transfer: sent %q, received %q", lastLine(string(snd)), lastLine(srvOut.String()))
	}
	t.Logf("%d bytes %s -> %s intact: %s", size, from.name, to.name, lastLine(string(snd)))
}

// frrConfig is the router's FRR bgpd config: the same as birdConfig's
// (iBGP route reflector, itself as next hop on each rack, graceful
// restart).
func (l *gatewayLab) frrConfig(asn int) string { return l.routerConfig(asn, nil).FRR() }

// startFRR runs zebra (it installs the learned routes in the router's
// kernel) and bgpd in the router namespace; vtysh reaches them through
// the returned socket directory.
func (l *gatewayLab) startFRR(asn int) (vty string) {
	t := l.t
	// FRR's daemons run as its user frr: their directory is one it may
	// enter and write (the test's temporary directory is root's only).
	vty, err := os.MkdirTemp("", "twt-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vty) })
	if err := os.Chmod(vty, 0o777); err != nil {
		t.Fatal(err)
	}
	zconf, bconf := filepath.Join(vty, "zebra.conf"), filepath.Join(vty, "bgpd.conf")
	if err := os.WriteFile(zconf, []byte("hostname rtr\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bconf, []byte(l.frrConfig(asn)), 0o644); err != nil {
		t.Fatal(err)
	}
	zsock := filepath.Join(vty, "zserv.api")
	common := []string{"-u", "frr", "-g", "frr", "--vty_socket", vty, "-z", zsock}
	start(t, l.router, filepath.Join(vty, "zebra.log"), "/usr/lib/frr/zebra", append(common, "-f", zconf, "-i", filepath.Join(vty, "zebra.pid"))...)
	waitFor(t, 10*time.Second, "zebra's socket", func() (bool, string) {
		_, err := os.Stat(zsock)
		return err == nil, fmt.Sprint(err)
	})
	l.frrDir = vty
	start(t, l.router, filepath.Join(vty, "bgpd.log"), "/usr/lib/frr/bgpd", append(common, "-f", bconf, "-i", filepath.Join(vty, "bgpd.pid"))...)
	return vty
}

// TestGatewayFRR is TestGatewayBIRD with FRR as the router.
func TestGatewayFRR(t *testing.T) {
	nstest.NeedCommand(t, "vtysh", "the router runs FRR (Debian package frr)")
	if _, err := os.Stat("/usr/lib/frr/bgpd"); err != nil {
		t.Skip("needs FRR's bgpd (Debian package frr)")
	}
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","NodeMesh":false,"HoldTime":9,"RestartTime":20,"ConnectRetry":1,
		"Peers":[{"Address":"` + routerID + `","ASN":64512}]}}`
	l := newGatewayLab(t, cfg)
	t0 := time.Now()
	vty := l.startFRR(64512)
	playGateway(t, l, t0, "FRR", "bgp", func() (bool, string) {
		out, _ := exec.Command("vtysh", "--vty_socket", vty, "-c", "show bgp summary").CombinedOutput()
		return len(bgprouter.FRREstablished(string(out))) == len(l.nodes), string(out)
	})
}
