package udp

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"

	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// The test cluster: two nodes on one underlay link, each with a cni0 bridge
// and one pod behind it, each running a udp backend in-process.
//
//	podA 10.244.1.2 -- cni0 10.244.1.1 [nodeA 192.168.56.11] ==eth0== [nodeB 192.168.56.12 (+.66)] cni0 10.244.2.1 -- podB 10.244.2.2

var nsSeq atomic.Int32

func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, TUN devices and nftables tables")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("needs /dev/net/tun: ", err)
	}
}

func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNS creates a namespace named with this run's prefix and deletes it
// when the test ends, whatever happens.
func newNS(tb testing.TB, role string) string {
	tb.Helper()
	name := fmt.Sprintf("twt-udp-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func nsHandle(tb testing.TB, name string) netns.NsHandle {
	tb.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

type node struct {
	ns, pod string
	h       netns.NsHandle
	podH    netns.NsHandle
	be      *Backend
	lease   lease.Lease
	podIP   netip.Addr
}

type cluster struct {
	a, b *node
}

var (
	ipA = netip.MustParseAddr("192.168.56.11")
	ipB = netip.MustParseAddr("192.168.56.12")
	// ipStranger is on node B's underlay interface but is no peer.
	ipStranger = netip.MustParseAddr("192.168.56.66")
)

func testLog(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newCluster builds the namespaces and starts both backends (Prepare,
// SetLease, Handle with the peer's Added event, Run).
// The data path modes the tests run: the eBPF kernel path (the default),
// userspace with offloads, userspace without.
// "mixed" is node A on the kernel path, node B in userspace: B's coalescer
// gets datagrams whose UDP checksum is zero.
var modes = []struct{ name, options, optionsB string }{
	{"kernel-path", ``, ``},
	{"userspace-offload", `,"KernelPath":false`, `,"KernelPath":false`},
	{"userspace-no-offload", `,"Offload":false`, `,"Offload":false`},
	{"mixed", ``, `,"KernelPath":false`},
}

func newCluster(tb testing.TB, options, optionsB string) *cluster {
	tb.Helper()
	needRoot(tb)
	c := &cluster{
		a: &node{ns: newNS(tb, "a"), pod: newNS(tb, "pa"), podIP: netip.MustParseAddr("10.244.1.2")},
		b: &node{ns: newNS(tb, "b"), pod: newNS(tb, "pb"), podIP: netip.MustParseAddr("10.244.2.2")},
	}
	run(tb, "ip", "link", "add", "eth0", "netns", c.a.ns, "type", "veth", "peer", "name", "eth0", "netns", c.b.ns)
	var cfgs []*netconf.Config
	for _, o := range []string{options, optionsB} {
		cfg, err := netconf.Parse(fmt.Appendf(nil, `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"%s}}`, o))
		if err != nil {
			tb.Fatal(err)
		}
		cfgs = append(cfgs, cfg)
	}
	for i, n := range []*node{c.a, c.b} {
		cfg := cfgs[i]
		pub := []netip.Addr{ipA, ipB}[i]
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24)
		gw := netconf.Gateway(subnet)
		ip := func(args ...string) { run(tb, "ip", append([]string{"-n", n.ns}, args...)...) }
		ip("addr", "add", pub.String()+"/24", "dev", "eth0")
		ip("link", "set", "eth0", "up")
		ip("link", "add", "cni0", "type", "bridge")
		ip("addr", "add", gw.String()+"/24", "dev", "cni0")
		ip("link", "set", "cni0", "up")
		ip("link", "add", "veth0", "mtu", "1472", "type", "veth", "peer", "name", "eth0", "netns", n.pod)
		ip("link", "set", "veth0", "master", "cni0", "up")
		n.h = nsHandle(tb, n.ns)
		// /proc/sys/net is the namespace of the thread that opens it.
		inNS(tb, n.h, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) })
		run(tb, "ip", "-n", n.pod, "addr", "add", n.podIP.String()+"/24", "dev", "eth0")
		run(tb, "ip", "-n", n.pod, "link", "set", "eth0", "mtu", "1472", "up")
		run(tb, "ip", "-n", n.pod, "route", "add", "default", "via", gw.String())
		n.podH = nsHandle(tb, n.pod)
		n.lease = lease.Lease{Subnet: subnet, Attrs: lease.Attrs{PublicIP: pub, BackendType: netconf.TypeUDP}}
		n.be = New(backend.Node{Name: n.ns, PublicIP: pub, Iface: "eth0", IfaceMTU: 1500,
			IfacePrefix: netip.MustParsePrefix("192.168.56.0/24"), Network: cfg, IPMasq: true, NetNS: "/run/netns/" + n.ns}, testLog(tb))
	}
	run(tb, "ip", "-n", c.b.ns, "addr", "add", ipStranger.String()+"/24", "dev", "eth0")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, n := range []*node{c.a, c.b} {
			if err := n.be.Cleanup(context.Background()); err != nil {
				tb.Errorf("cleanup %s: %v", n.ns, err)
			}
		}
	})
	// Prepare both first: a lease carries its node's BackendData.
	for _, n := range []*node{c.a, c.b} {
		prep, err := n.be.Prepare(ctx)
		if err != nil {
			tb.Fatalf("prepare %s: %v", n.ns, err)
		}
		if prep.MTU != 1472 {
			tb.Errorf("%s: MTU %d, want 1472", n.ns, prep.MTU)
		}
		n.lease.Attrs.BackendData = prep.BackendData
	}
	for _, pair := range [][2]*node{{c.a, c.b}, {c.b, c.a}} {
		n, peer := pair[0], pair[1]
		if err := n.be.SetLease(ctx, n.lease); err != nil {
			tb.Fatalf("set lease %s: %v", n.ns, err)
		}
		if err := n.be.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: peer.lease}}); err != nil {
			tb.Fatalf("handle %s: %v", n.ns, err)
		}
		wg.Go(func() {
			if err := n.be.Run(ctx); err != nil {
				tb.Errorf("run %s: %v", n.ns, err)
			}
		})
	}
	return c
}

// ping pings dst from the pod namespace pod and returns ping's output and
// whether any reply came.
func ping(tb testing.TB, pod string, dst netip.Addr, count int) (string, bool) {
	tb.Helper()
	out, err := exec.Command("ip", "netns", "exec", pod, "ping", "-n", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", dst.String()).CombinedOutput()
	return string(out), err == nil
}

// inNS runs fn on a thread inside the namespace h (sockets made there stay
// there).
func inNS(tb testing.TB, h netns.NsHandle, fn func() error) {
	tb.Helper()
	if err := namespace.Do(h, fn); err != nil {
		tb.Fatal(err)
	}
}

// transfer sends size bytes of random data over TCP from pod a to pod b
// and returns the SHA-256 sums on both ends.
func transfer(tb testing.TB, from, to *node, size int64) (sent, got [32]byte) {
	tb.Helper()
	var ln net.Listener
	inNS(tb, to.podH, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(to.podIP, 5001).String())
		return err
	})
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		done <- result{sum: [32]byte(h.Sum(nil)), n: n, err: err}
	}()
	var c net.Conn
	inNS(tb, from.podH, func() (err error) {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(to.podIP, 5001).String(), 5*time.Second)
		return err
	})
	_ = c.SetDeadline(time.Now().Add(120 * time.Second))
	h := sha256.New()
	src := io.LimitReader(rngReader{}, size)
	if _, err := io.Copy(io.MultiWriter(c, h), src); err != nil {
		tb.Fatalf("send: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	r := <-done
	c.Close()
	if r.err != nil {
		tb.Fatalf("receive: %v", r.err)
	}
	if r.n != size {
		tb.Errorf("received %d bytes, sent %d", r.n, size)
	}
	return [32]byte(h.Sum(nil)), r.sum
}

// rngReader is a cheap pseudo-random stream (xorshift), so that the data
// is not compressible or regular and the benchmark does not measure a CSPRNG.
type rngReader struct{}

var rngState atomic.Uint64

func init() { rngState.Store(uint64(time.Now().UnixNano()) | 1) }

func (rngReader) Read(p []byte) (int, error) {
	x := rngState.Load()
	n := len(p) &^ 7
	for i := 0; i < n; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	rngState.Store(x)
	if n == 0 {
		p[0] = byte(x)
		return 1, nil
	}
	return n, nil
}

// peerStatus returns n's status of the peer subnet s.
func peerStatus(n *node, s netip.Prefix) (backend.PeerStatus, bool) {
	for _, p := range n.be.Status().Peers {
		if p.Subnet == s {
			return p, true
		}
	}
	return backend.PeerStatus{}, false
}

// eventually polls cond for up to 5 s.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	tb.Fatalf("timed out waiting for %s", what)
}

// sendFrom sends payload as a UDP datagram from src (an address in the
// namespace h) to dst.
func sendFrom(tb testing.TB, h netns.NsHandle, src netip.Addr, dst netip.AddrPort, payload []byte) {
	tb.Helper()
	var uc *net.UDPConn
	inNS(tb, h, func() (err error) {
		uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		return err
	})
	defer uc.Close()
	if _, err := uc.WriteToUDPAddrPort(payload, dst); err != nil {
		tb.Fatalf("send from %s to %s: %v", src, dst, err)
	}
}

// udpInPacket builds an IPv4/UDP packet src:1234 -> dst:port carrying
// payload (UDP checksum 0: none, allowed over IPv4).
func udpInPacket(src, dst netip.Addr, port uint16, payload string) []byte {
	p := ipv4Packet(src.String(), dst.String(), 17, 8+len(payload))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:2], 1234)
	binary.BigEndian.PutUint16(u[2:4], port)
	binary.BigEndian.PutUint16(u[4:6], uint16(8+len(payload)))
	copy(u[8:], payload)
	return p
}
