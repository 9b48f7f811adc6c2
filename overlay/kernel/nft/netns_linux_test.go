//go:build linux

package nft

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"
)

func ipCmd(tb testing.TB, args ...string) {
	tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// nsFD opens the namespace's file; it is closed when the test ends.
func nsFD(tb testing.TB, name string) int {
	tb.Helper()
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	tb.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func testLog(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// cluster is a node with one pod behind it and one peer node beside it:
//
//	pod (10.244.1.2/24) --veth-- node (10.244.1.1/24 | 192.168.56.1/24, lo 192.168.56.200/32)
//	                                   --veth-- peer (192.168.56.2/24, lo 10.244.2.1/24)
//
// node routes 10.244.2.0/24 via the peer; the peer routes 10.244.1.0/24 via
// node. The peer's underlay address is also the "outside" for masquerade.
type cluster struct {
	node, pod, peer string
	table           *Table
}

var (
	podAddr      = netip.MustParseAddr("10.244.1.2")
	peerPodAddr  = netip.MustParseAddr("10.244.2.1")
	peerUnderlay = netip.MustParseAddr("192.168.56.2")
	nodeUnderlay = netip.MustParseAddr("192.168.56.1")
	nodeOther    = netip.MustParseAddr("192.168.56.200")
	clusterNet   = netip.MustParsePrefix("10.244.0.0/16")
	nodeSubnet   = netip.MustParsePrefix("10.244.1.0/24")
	peerSubnet   = netip.MustParsePrefix("10.244.2.0/24")
)

func newCluster(t *testing.T) *cluster {
	t.Helper()
	nstest.NeedCommand(t, "ip", "builds the test cluster")
	c := &cluster{node: nstest.New(t, "node").Name, pod: nstest.New(t, "pod").Name, peer: nstest.New(t, "peer").Name}
	ipCmd(t, "-n", c.node, "link", "add", "p0", "type", "veth", "peer", "name", "eth0", "netns", c.pod)
	ipCmd(t, "-n", c.node, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", c.peer)
	ipCmd(t, "-n", c.node, "addr", "add", "10.244.1.1/24", "dev", "p0")
	ipCmd(t, "-n", c.node, "addr", "add", "192.168.56.1/24", "dev", "u0")
	ipCmd(t, "-n", c.node, "addr", "add", "192.168.56.200/32", "dev", "lo")
	ipCmd(t, "-n", c.node, "link", "set", "p0", "up")
	ipCmd(t, "-n", c.node, "link", "set", "u0", "up")
	ipCmd(t, "-n", c.node, "route", "add", "10.244.2.0/24", "via", "192.168.56.2")
	ipCmd(t, "-n", c.pod, "addr", "add", "10.244.1.2/24", "dev", "eth0")
	ipCmd(t, "-n", c.pod, "link", "set", "eth0", "up")
	ipCmd(t, "-n", c.pod, "route", "add", "default", "via", "10.244.1.1")
	ipCmd(t, "-n", c.peer, "addr", "add", "192.168.56.2/24", "dev", "u0")
	ipCmd(t, "-n", c.peer, "addr", "add", "10.244.2.1/24", "dev", "lo")
	ipCmd(t, "-n", c.peer, "link", "set", "u0", "up")
	ipCmd(t, "-n", c.peer, "route", "add", "10.244.1.0/24", "via", "192.168.56.1")
	if err := namespace.DoName(c.node, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatalf("enable forwarding in %s: %v", c.node, err)
	}
	c.table = New(testLog(t), InNetNS(nsFD(t, c.node)))
	return c
}

// udpEcho listens on addr in ns and sends every datagram back (from addr:
// a wildcard socket would answer from the route's source address). It
// stops when the test ends.
func udpEcho(t *testing.T, ns string, addr netip.AddrPort) {
	t.Helper()
	var conn *net.UDPConn
	if err := namespace.DoName(ns, func() (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listen udp %v in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// udpListen listens on port in ns and returns the socket.
func udpListen(t *testing.T, ns string, port int) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := namespace.DoName(ns, func() (err error) {
		conn, err = net.ListenUDP("udp", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		t.Fatalf("listen udp :%d in %s: %v", port, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// udpDial makes a UDP socket in ns, bound to src if src is valid.
func udpDial(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort) *net.UDPConn {
	t.Helper()
	var laddr *net.UDPAddr
	if src.IsValid() {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	var conn *net.UDPConn
	if err := namespace.DoName(ns, func() (err error) {
		conn, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatalf("dial udp %v from %s: %v", dst, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// sourceSeen sends one datagram from ns (bound to src, if valid) to dst,
// where listener reads it, and returns the source address the listener saw.
func sourceSeen(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort, listener *net.UDPConn) netip.Addr {
	t.Helper()
	conn := udpDial(t, ns, src, dst)
	msg := fmt.Sprintf("probe %d", time.Now().UnixNano())
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatalf("send from %s to %v: %v", ns, dst, err)
	}
	buf := make([]byte, 1500)
	listener.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, from, err := listener.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("receive at %v the datagram from %s: %v", dst, ns, err)
		}
		if string(buf[:n]) == msg {
			return from.Addr().Unmap()
		}
	}
}

func timeoutIn(seconds int) time.Time {
	return time.Now().Add(time.Duration(seconds) * time.Second)
}
