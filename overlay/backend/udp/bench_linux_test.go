package udp

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkPodToPodTCP measures one TCP stream from pod A to pod B through
// the two udp backends (go test -bench PodToPod: MB/s is the figure), in
// each data path mode.
func BenchmarkPodToPodTCP(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			c := newCluster(b, m.options, m.optionsB)
			var ln net.Listener
			inNS(b, c.b.podH, func() (err error) {
				ln, err = net.Listen("tcp4", netip.AddrPortFrom(c.b.podIP, 5002).String())
				return err
			})
			defer ln.Close()
			done := make(chan int64, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					done <- -1
					return
				}
				defer conn.Close()
				n, _ := io.Copy(io.Discard, conn)
				done <- n
			}()
			var conn net.Conn
			inNS(b, c.a.podH, func() (err error) {
				conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(c.b.podIP, 5002).String(), 5*time.Second)
				return err
			})
			chunk := make([]byte, 1<<20)
			rngReader{}.Read(chunk)
			b.SetBytes(int64(len(chunk)))
			var sent int64
			for b.Loop() {
				n, err := conn.Write(chunk)
				sent += int64(n)
				if err != nil {
					b.Fatal(err)
				}
			}
			conn.(*net.TCPConn).CloseWrite()
			if got := <-done; got != sent {
				b.Errorf("pod B received %d bytes, pod A sent %d", got, sent)
			}
			conn.Close()
			pa, _ := peerStatus(c.a, c.b.lease.Subnet)
			b.ReportMetric(float64(pa.TxBytes)/float64(max(pa.TxPackets, 1)), "B/packet")
		})
	}
}
