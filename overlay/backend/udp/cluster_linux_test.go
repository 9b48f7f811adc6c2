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
	"sync/atomic"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"

	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// The test cluster: the shared two-node lab (overlay/backend/backendtest),
// each node running a udp backend in-process.
//
//	podA 10.244.1.2 -- cni0 10.244.1.1 [nodeA 192.168.56.11] ==br0== [nodeB 192.168.56.12 (+.66)] cni0 10.244.2.1 -- podB 10.244.2.2

// run runs a command and returns its output, failing the test if it fails.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	return backendtest.Run(tb, name, args...)
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
	lab     *backendtest.Node
	running *backendtest.Running
}

type cluster struct {
	a, b *node
}

// The data path modes the tests run: the eBPF kernel path (the default),
// userspace with offloads, userspace without.
// "mixed" is node A on the kernel path, node B in userspace: B's coalescer
// gets datagrams whose UDP checksum is zero.
// modes are the data paths the two-node tests run on; attach forces the
// kernel path's attachment (TWILL_UDP_ATTACH): kernel-path-tc runs it as
// classic tc filters, as on kernels before 6.6.
var modes = []struct{ name, options, optionsB, attach string }{
	{"kernel-path", ``, ``, ""},
	{"userspace-offload", `,"KernelPath":false`, `,"KernelPath":false`, ""},
	{"userspace-no-offload", `,"Offload":false`, `,"Offload":false`, ""},
	{"mixed", ``, `,"KernelPath":false`, ""},
	{"kernel-path-tc", ``, ``, "tc"},
}

func udpConfig(tb testing.TB, options string) *netconf.Config {
	tb.Helper()
	cfg, err := netconf.Parse(fmt.Appendf(nil, `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"%s}}`, options))
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// newCluster builds the lab and starts both backends (node A's config with
// options, B's with optionsB; IPMasq on; pods at twill0's MTU), and
// cleans them up (Cleanup must succeed) when the test ends.
func newCluster(tb testing.TB, options, optionsB string) *cluster {
	tb.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("needs /dev/net/tun: ", err)
	}
	lab := backendtest.New(tb, "udp", 2)
	cfgA, cfgB := udpConfig(tb, options), udpConfig(tb, optionsB)
	c := &cluster{a: &node{}, b: &node{}}
	for i, n := range []*node{c.a, c.b} {
		ln := lab.Nodes[i]
		n.lab, n.ns, n.pod, n.podIP = ln, ln.Name, ln.Pod, ln.PodIP
		n.h, n.podH = nsHandle(tb, ln.Name), nsHandle(tb, ln.Pod)
		ln.IP(tb, "link", "set", "veth0", "mtu", "1472")
		run(tb, "ip", "-n", ln.Pod, "link", "set", "eth0", "mtu", "1472")
	}
	lab.Nodes[1].IP(tb, "addr", "add", ipStranger.String()+"/24", "dev", "eth0")
	var started []*Backend
	tb.Cleanup(func() { // after the lab's Start stopped the backends
		for _, b := range started {
			if err := b.Cleanup(context.Background()); err != nil {
				tb.Errorf("cleanup: %v", err)
			}
			b.Close()
		}
	})
	rs := lab.Start(tb, cfgA, func(bn backend.Node, log *slog.Logger) (backend.Backend, error) {
		if bn.PublicIP == ipB {
			bn.Network = cfgB
		}
		bn.IPMasq = true
		b, err := New(bn, log)
		if err == nil {
			started = append(started, b)
		}
		return b, err
	})
	for i, n := range []*node{c.a, c.b} {
		n.running, n.be, n.lease = rs[i], rs[i].Backend.(*Backend), rs[i].Lease
		if rs[i].Prepared.MTU != 1472 {
			tb.Errorf("%s: MTU %d, want 1472", n.ns, rs[i].Prepared.MTU)
		}
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
