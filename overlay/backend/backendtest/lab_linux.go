// Package backendtest builds, for a backend's tests, a small cluster out of
// network namespaces: nodes on one underlay segment (a bridge in a switch
// namespace, 192.168.56.0/24), each with a cni0 bridge holding its pod
// subnet's gateway and one pod namespace behind it, and runs a backend
// in-process for each node.
//
// It must only ever change namespaces it created (with overlay/namespace/nstest:
// twt-<test binary>-<pid>-<n>-<role>, deleted when the test ends, passed or not),
// never the namespace the test runs in, and only send traffic to addresses
// inside them. It needs root and the ip command; without them tests skip.
// The package is Linux-only.
package backendtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/netconf"
)

// Underlay is the segment the lab's nodes share.
var Underlay = netip.MustParsePrefix("192.168.56.0/24")

// Lab is a set of nodes on one underlay segment.
type Lab struct {
	Switch string
	Nodes  []*Node
}

// Node is one node namespace and its pod.
type Node struct {
	// Name is the node's namespace; NetNS its path, for backend.Node.
	Name  string
	NetNS string
	// PublicIP is eth0's address on the underlay.
	PublicIP netip.Addr
	// Subnet is the node's pod subnet; its .1 sits on cni0.
	Subnet netip.Prefix
	// Pod is the pod's namespace, PodIP its address (.2 of Subnet).
	Pod   string
	PodIP netip.Addr
	// PublicIPv6, Subnet6 and PodIP6 are the same for IPv6 (AddIPv6);
	// zero without. PublicIPv6 stays zero with AddIPv6(tb, false): IPv6
	// pods over an IPv4-only underlay.
	PublicIPv6 netip.Addr
	Subnet6    netip.Prefix
	PodIP6     netip.Addr
}

// Underlay6 is the IPv6 underlay of AddIPv6.
var Underlay6 = netip.MustParsePrefix("fd00:56::/64")

// AddIPv6 gives every node's pod network IPv6 beside IPv4: node i's pods
// get fd00:10:244:i::/64 (its ::1 on cni0, the pod ::2 with a default
// route to it) and, with underlay, eth0 gets fd00:56::(10+i)/64. IPv6
// forwarding is turned on in the nodes.
func (l *Lab) AddIPv6(tb testing.TB, underlay bool) {
	tb.Helper()
	for i, n := range l.Nodes {
		n.Subnet6 = netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i+1))
		n.PodIP6 = n.Subnet6.Addr().Next().Next()
		gw := n.Subnet6.Addr().Next()
		if underlay {
			n.PublicIPv6 = netip.MustParseAddr(fmt.Sprintf("fd00:56::%d", 11+i))
			Run(tb, "ip", "-n", n.Name, "addr", "add", netip.PrefixFrom(n.PublicIPv6, 64).String(), "dev", "eth0", "nodad")
		}
		Run(tb, "ip", "-n", n.Name, "addr", "add", netip.PrefixFrom(gw, 64).String(), "dev", "cni0", "nodad")
		Run(tb, "ip", "-n", n.Pod, "addr", "add", netip.PrefixFrom(n.PodIP6, 64).String(), "dev", "eth0", "nodad")
		Run(tb, "ip", "-n", n.Pod, "-6", "route", "add", "default", "via", gw.String())
		Run(tb, "ip", "netns", "exec", n.Name, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
	}
}

// NeedRoot skips the test unless it runs as root with the ip command.
func NeedRoot(tb testing.TB) {
	tb.Helper()
	nstest.NeedRoot(tb, "creates network namespaces, devices, routes and nftables tables")
	nstest.NeedCommand(tb, "ip", "builds the lab")
}

// Run runs a command and fails the test if it fails; it returns the output.
func Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// New builds a lab of n nodes (node i, from 1: public IP 192.168.56.1i,
// subnet 10.244.i.0/24, pod 10.244.i.2). tag is no longer used: nstest
// names the namespaces after the test binary.
func New(tb testing.TB, tag string, n int) *Lab {
	tb.Helper()
	NeedRoot(tb)
	l := &Lab{}
	l.Switch = l.netns(tb, "sw")
	Run(tb, "ip", "-n", l.Switch, "link", "add", "br0", "type", "bridge")
	Run(tb, "ip", "-n", l.Switch, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		node := &Node{
			PublicIP: netip.AddrFrom4([4]byte{192, 168, 56, byte(10 + i)}),
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			PodIP:    netip.AddrFrom4([4]byte{10, 244, byte(i), 2}),
		}
		node.Name = l.netns(tb, fmt.Sprintf("node%d", i))
		node.NetNS = "/run/netns/" + node.Name
		node.Pod = l.netns(tb, fmt.Sprintf("pod%d", i))
		port := fmt.Sprintf("p%d", i)
		Run(tb, "ip", "-n", l.Switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.Name)
		Run(tb, "ip", "-n", l.Switch, "link", "set", port, "master", "br0", "up")
		Run(tb, "ip", "-n", node.Name, "addr", "add", netip.PrefixFrom(node.PublicIP, 24).String(), "dev", "eth0")
		Run(tb, "ip", "-n", node.Name, "link", "set", "eth0", "up")
		gw := node.Subnet.Addr().Next()
		Run(tb, "ip", "-n", node.Name, "link", "add", "cni0", "type", "bridge")
		// As overlay/cni makes its bridge: no DAD, else the node sends no
		// neighbour solicitation to a pod on cni0 for forwarded IPv6
		// packets until cni0's link-local address is no longer tentative.
		Run(tb, "ip", "netns", "exec", node.Name, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/cni0/accept_dad")
		Run(tb, "ip", "-n", node.Name, "addr", "add", netip.PrefixFrom(gw, 24).String(), "dev", "cni0")
		Run(tb, "ip", "-n", node.Name, "link", "set", "cni0", "up")
		Run(tb, "ip", "-n", node.Name, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", node.Pod)
		Run(tb, "ip", "-n", node.Name, "link", "set", "veth0", "master", "cni0", "up")
		Run(tb, "ip", "-n", node.Pod, "addr", "add", netip.PrefixFrom(node.PodIP, 24).String(), "dev", "eth0")
		Run(tb, "ip", "-n", node.Pod, "link", "set", "eth0", "up")
		Run(tb, "ip", "-n", node.Pod, "route", "add", "default", "via", gw.String())
		// Forwarding on in the node only; /proc/sys/net is the opener's namespace's.
		Run(tb, "ip", "netns", "exec", node.Name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
		l.Nodes = append(l.Nodes, node)
	}
	return l
}

func (l *Lab) netns(tb testing.TB, role string) string {
	tb.Helper()
	return nstest.New(tb, role).Name
}

// IP runs `ip -n <node> args...` and returns its output.
func (n *Node) IP(tb testing.TB, args ...string) string {
	tb.Helper()
	return Run(tb, "ip", append([]string{"-n", n.Name}, args...)...)
}

// BackendNode describes the node to a backend working in its namespace.
func (n *Node) BackendNode(cfg *netconf.Config) backend.Node {
	b := backend.Node{
		Name:        strings.TrimPrefix(n.Name, "twt-"),
		PublicIP:    n.PublicIP,
		Iface:       "eth0",
		IfaceMTU:    1500,
		IfacePrefix: Underlay,
		Network:     cfg,
		NetNS:       n.NetNS,
	}
	if n.PublicIPv6.IsValid() {
		b.PublicIPv6, b.IfacePrefix6 = n.PublicIPv6, Underlay6
	}
	return b
}

// Lease is the node's lease as its backend would publish it.
func (n *Node) Lease(backendType string, data json.RawMessage) lease.Lease {
	return lease.Lease{
		Subnet:     n.Subnet,
		IPv6Subnet: n.Subnet6,
		Attrs:      lease.Attrs{PublicIP: n.PublicIP, PublicIPv6: n.PublicIPv6, BackendType: backendType, BackendData: data},
		Expiration: time.Now().Add(time.Hour),
	}
}

var received = regexp.MustCompile(`(\d+) received`)

// Ping sends count echo requests of 56 bytes (84-byte IP packets) from the
// node's pod to dst and returns how many replies came back.
func (n *Node) Ping(tb testing.TB, dst netip.Addr, count int) int {
	tb.Helper()
	out, _ := exec.Command("ip", "netns", "exec", n.Pod, "ping", "-n", "-q", "-c", strconv.Itoa(count),
		"-i", "0.2", "-W", "1", "-s", "56", dst.String()).CombinedOutput()
	m := received.FindSubmatch(out)
	if m == nil {
		tb.Fatalf("ping %s from %s: %s", dst, n.Pod, out)
	}
	k, _ := strconv.Atoi(string(m[1]))
	return k
}

// Running is a backend running for one node.
type Running struct {
	Node     *Node
	Backend  backend.Backend
	Prepared backend.Prepared
	Lease    lease.Lease

	stop func()
	logs *logLines
}

// logLines keeps what a backend logged, for checks on its log.
type logLines struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Logged returns the lines the backend logged so far that contain every
// one of words.
func (r *Running) Logged(words ...string) []string {
	r.logs.mu.Lock()
	defer r.logs.mu.Unlock()
	var out []string
	for line := range strings.Lines(r.logs.buf.String()) {
		if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// Stop ends the backend's Run and waits for it (Cleanup wants a backend
// that is not running). It is also done when the test ends.
func (r *Running) Stop() { r.stop() }

// Start makes a backend for each node with newBackend, prepares it, gives
// it its lease and every other node's, and runs it until the test ends.
func (l *Lab) Start(tb testing.TB, cfg *netconf.Config, newBackend func(backend.Node, *slog.Logger) (backend.Backend, error)) []*Running {
	tb.Helper()
	ctx := context.Background()
	var rs []*Running
	for _, n := range l.Nodes {
		logs := &logLines{}
		log := slog.New(slog.NewTextHandler(io.MultiWriter(tb.Output(), logs), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.Name)
		b, err := newBackend(n.BackendNode(cfg), log)
		if err != nil {
			tb.Fatalf("new backend for %s: %v", n.Name, err)
		}
		p, err := b.Prepare(ctx)
		if err != nil {
			tb.Fatalf("prepare %s backend on %s: %v", b.Type(), n.Name, err)
		}
		r := &Running{Node: n, Backend: b, Prepared: p, Lease: n.Lease(b.Type(), p.BackendData), logs: logs}
		r.Lease.Attrs.BackendV6Data = p.BackendV6Data
		if err := b.SetLease(ctx, r.Lease); err != nil {
			tb.Fatalf("set lease on %s: %v", n.Name, err)
		}
		rs = append(rs, r)
	}
	for _, r := range rs {
		var evs []lease.Event
		for _, o := range rs {
			if o != r {
				evs = append(evs, lease.Event{Type: lease.Added, Lease: o.Lease})
			}
		}
		if err := r.Backend.Handle(ctx, evs); err != nil {
			tb.Fatalf("handle peers on %s: %v", r.Node.Name, err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := r.Backend.Run(rctx); err != nil {
				tb.Errorf("run backend on %s: %v", r.Node.Name, err)
			}
		}()
		r.stop = sync.OnceFunc(func() {
			cancel()
			<-done
		})
		tb.Cleanup(r.stop)
	}
	for _, r := range rs {
		r.WaitInSync(tb)
	}
	return rs
}

// WaitInSync waits until the backend reports the kernel in sync.
func (r *Running) WaitInSync(tb testing.TB) {
	tb.Helper()
	Eventually(tb, 10*time.Second, func() string {
		st := r.Backend.Status()
		if st.InSync {
			return ""
		}
		return fmt.Sprintf("%s backend on %s not in sync: %v", r.Backend.Type(), r.Node.Name, st.Problems)
	})
}

// Peer is the backend's status for the peer subnet; false if not listed.
func (r *Running) Peer(subnet netip.Prefix) (backend.PeerStatus, bool) {
	for _, p := range r.Backend.Status().Peers {
		if p.Subnet == subnet {
			return p, true
		}
	}
	return backend.PeerStatus{}, false
}

// Eventually polls cond (which says what is still wrong, or "") until it
// holds, failing the test with the last complaint after timeout.
func Eventually(tb testing.TB, timeout time.Duration, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %s", timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingCount is how many echo requests CheckPodToPod sends each way.
const pingCount = 5

// CheckPodToPod pings from every node's pod to every other node's pod and
// checks that all replies came back and that both nodes' per-peer counters
// counted the requests and the replies (84-byte IP packets).
func CheckPodToPod(tb testing.TB, rs []*Running) {
	tb.Helper()
	checkPodToPod(tb, rs, false)
}

// CheckPodToPod6 is CheckPodToPod over IPv6 (AddIPv6): the pods' IPv6
// addresses, the peers' IPv6 subnets' counters, 104-byte IPv6 packets.
func CheckPodToPod6(tb testing.TB, rs []*Running) {
	tb.Helper()
	checkPodToPod(tb, rs, true)
}

func checkPodToPod(tb testing.TB, rs []*Running, ipv6 bool) {
	tb.Helper()
	subnet, podIP, size := func(n *Node) netip.Prefix { return n.Subnet }, func(n *Node) netip.Addr { return n.PodIP }, uint64(84)
	if ipv6 {
		subnet, podIP, size = func(n *Node) netip.Prefix { return n.Subnet6 }, func(n *Node) netip.Addr { return n.PodIP6 }, 104
	}
	for _, from := range rs {
		for _, to := range rs {
			if from == to {
				continue
			}
			fromBefore, _ := from.Peer(subnet(to.Node))
			toBefore, _ := to.Peer(subnet(from.Node))
			if got := from.Node.Ping(tb, podIP(to.Node), pingCount); got != pingCount {
				tb.Fatalf("%s backend: ping %s -> %s: %d of %d replies\n%s routes:\n%s%s", from.Backend.Type(),
					podIP(from.Node), podIP(to.Node), got, pingCount, from.Node.Name, from.Node.IP(tb, "route"), from.Node.IP(tb, "-6", "route"))
			}
			fromAfter, ok1 := from.Peer(subnet(to.Node))
			toAfter, ok2 := to.Peer(subnet(from.Node))
			if !ok1 || !ok2 {
				tb.Fatalf("peers missing from status: %s lists %s: %t; %s lists %s: %t", from.Node.Name, subnet(to.Node), ok1, to.Node.Name, subnet(from.Node), ok2)
			}
			checkCounted(tb, from.Node.Name+" tx to "+subnet(to.Node).String(), size, fromBefore.TxPackets, fromAfter.TxPackets, fromBefore.TxBytes, fromAfter.TxBytes)
			checkCounted(tb, from.Node.Name+" rx from "+subnet(to.Node).String(), size, fromBefore.RxPackets, fromAfter.RxPackets, fromBefore.RxBytes, fromAfter.RxBytes)
			checkCounted(tb, to.Node.Name+" rx from "+subnet(from.Node).String(), size, toBefore.RxPackets, toAfter.RxPackets, toBefore.RxBytes, toAfter.RxBytes)
			checkCounted(tb, to.Node.Name+" tx to "+subnet(from.Node).String(), size, toBefore.TxPackets, toAfter.TxPackets, toBefore.TxBytes, toAfter.TxBytes)
			tb.Logf("%s -> %s: %d/%d replies; %s counters tx %d pkts %d B, rx %d pkts %d B", podIP(from.Node), podIP(to.Node),
				pingCount, pingCount, from.Node.Name, fromAfter.TxPackets, fromAfter.TxBytes, fromAfter.RxPackets, fromAfter.RxBytes)
		}
	}
}

func checkCounted(tb testing.TB, what string, size, p0, p1, b0, b1 uint64) {
	tb.Helper()
	// Exactly the pings: nothing else crosses between the pods.
	if p1-p0 != pingCount || b1-b0 != pingCount*size {
		tb.Errorf("counter %s: +%d packets +%d bytes, want +%d packets +%d bytes", what, p1-p0, b1-b0, pingCount, pingCount*size)
	}
}

// CheckPeerExpires tells rs[0] that rs[1]'s lease expired and checks that
// its route is gone, the peer left the status and pings fail.
func CheckPeerExpires(tb testing.TB, rs []*Running) {
	tb.Helper()
	a, b := rs[0], rs[1]
	if err := a.Backend.Handle(context.Background(), []lease.Event{{Type: lease.Expired, Lease: b.Lease}}); err != nil {
		tb.Fatal(err)
	}
	Eventually(tb, 10*time.Second, func() string {
		if out := a.Node.IP(tb, "route", "show", b.Node.Subnet.String()); strings.TrimSpace(out) != "" {
			return fmt.Sprintf("route to the expired peer still there: %s", out)
		}
		return ""
	})
	a.WaitInSync(tb)
	if _, ok := a.Peer(b.Node.Subnet); ok {
		tb.Errorf("expired peer %s still in status", b.Node.Subnet)
	}
	if got := a.Node.Ping(tb, b.Node.PodIP, 2); got != 0 {
		tb.Errorf("ping to the expired peer's pod %s: %d replies, want none", b.Node.PodIP, got)
	}
}
