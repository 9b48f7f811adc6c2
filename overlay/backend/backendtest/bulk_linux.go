package backendtest

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"
)

// BulkTransfer sends size pseudo-random bytes over TCP from from's pod to
// to's pod, checks that they arrived with the same SHA-256, and returns how
// long it took.
func BulkTransfer(tb testing.TB, from, to *Node, size int64) time.Duration {
	tb.Helper()
	return bulkTransfer(tb, from, to, "tcp4", to.PodIP, size)
}

// BulkTransfer6 is BulkTransfer over IPv6 (AddIPv6), to to's PodIP6.
func BulkTransfer6(tb testing.TB, from, to *Node, size int64) time.Duration {
	tb.Helper()
	return bulkTransfer(tb, from, to, "tcp6", to.PodIP6, size)
}

func bulkTransfer(tb testing.TB, from, to *Node, network string, dst netip.Addr, size int64) time.Duration {
	tb.Helper()
	var l net.Listener
	if err := namespace.DoName(to.Pod, func() (err error) {
		l, err = net.Listen(network, net.JoinHostPort(dst.String(), "0"))
		return err
	}); err != nil {
		tb.Fatalf("listen in %s: %v", to.Pod, err)
	}
	defer l.Close()
	type result struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		r.n, r.err = n, err
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	var c net.Conn
	if err := namespace.DoName(from.Pod, func() (err error) {
		c, err = net.DialTimeout(network, l.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		tb.Fatalf("connect from %s to %s: %v", from.Pod, l.Addr(), err)
	}
	start := time.Now()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < size; {
		chunk := buf[:min(int64(len(buf)), size-sent)]
		src.Read(chunk)
		h.Write(chunk)
		k, err := c.Write(chunk)
		sent += int64(k)
		if err != nil {
			c.Close()
			tb.Fatalf("send %s -> %s after %d bytes: %v", from.Pod, dst, sent, err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	r := <-got
	c.Close()
	took := time.Since(start)
	var want [32]byte
	copy(want[:], h.Sum(nil))
	if r.err != nil || r.n != size || r.sum != want {
		tb.Fatalf("transfer %s -> %s: received %d of %d bytes (err %v), checksum match %v", from.Pod, dst, r.n, size, r.err, r.sum == want)
	}
	return took
}

// CheckBulkCounters sends 64 MiB from rs[0]'s pod to rs[1]'s pod and checks
// that rs[0]'s tx counter towards rs[1] and rs[1]'s rx counter from rs[0]
// grew by 64 MiB plus no more than the IP and TCP headers of the packets.
func CheckBulkCounters(tb testing.TB, rs []*Running, mtu int) {
	tb.Helper()
	const size = 64 << 20
	a, b := rs[0], rs[1]
	txBefore, _ := a.Peer(b.Node.Subnet)
	rxBefore, _ := b.Peer(a.Node.Subnet)
	took := BulkTransfer(tb, a.Node, b.Node, size)
	txAfter, _ := a.Peer(b.Node.Subnet)
	rxAfter, _ := b.Peer(a.Node.Subnet)
	tx, rx := txAfter.TxBytes-txBefore.TxBytes, rxAfter.RxBytes-rxBefore.RxBytes
	// At most one 52-byte IP+TCP header (with timestamps) per MSS of
	// payload, and 1% for retransmissions.
	mss := int64(mtu - 52)
	limit := uint64(float64(size+size/mss*52) * 1.01)
	tb.Logf("64 MiB in %v (%.0f Mbit/s): %s tx %d B, %s rx %d B (payload %d B, limit %d B)",
		took.Round(time.Millisecond), float64(size)*8/took.Seconds()/1e6, a.Node.Name, tx, b.Node.Name, rx, size, limit)
	for _, c := range []struct {
		what string
		v    uint64
	}{{a.Node.Name + " tx bytes to " + b.Node.Subnet.String(), tx}, {b.Node.Name + " rx bytes from " + a.Node.Subnet.String(), rx}} {
		if c.v < size || c.v > limit {
			tb.Errorf("%s grew by %d during a %d-byte transfer, want %d..%d", c.what, c.v, size, size, limit)
		}
	}
}
