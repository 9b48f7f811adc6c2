package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"

	"github.com/twillnet/twill/overlay/namespace"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/vmtest"
)

// refPort is the reference tunnel's UDP port.
const refPort = 8286

// refTunnel is the reference the udp backend is measured against: flannel's
// udp design, one packet per system call. Per node a TUN (no offloads, no
// virtio-net header) and a UDP socket; one goroutine reads a packet from
// the TUN and sends it with one sendto to the other node, another receives
// one datagram and writes it to the TUN. No checks, no batching. It runs
// inside the bench process (its CPU time is the process's).
type refTunnel struct {
	files []*os.File
	conns []*net.UDPConn
	wg    sync.WaitGroup
}

func startRefTunnel(ctx context.Context, nodes []vmtest.Node, pods []vmtest.Pod) (*refTunnel, error) {
	rt := &refTunnel{}
	for i, n := range nodes {
		peer := nodes[1-i]
		var tf *os.File
		var uc *net.UDPConn
		err := namespace.DoName(n.NetNS, func() error {
			var err error
			tf, err = openPlainTUN("ref0")
			if err != nil {
				return err
			}
			uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.UnderlayIP, refPort)))
			if err != nil {
				tf.Close()
				return fmt.Errorf("listen udp %s:%d: %w", n.UnderlayIP, refPort, err)
			}
			return nil
		})
		if err != nil {
			rt.close()
			return nil, err
		}
		rt.files = append(rt.files, tf)
		rt.conns = append(rt.conns, uc)
		for _, s := range [][]string{
			{"ip", "link", "set", "ref0", "mtu", "1472", "up"},
			{"ip", "addr", "add", n.Subnet.Masked().Addr().String() + "/32", "dev", "ref0"},
			{"ip", "route", "replace", peer.Subnet.Masked().String(), "dev", "ref0"},
		} {
			if out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", n.NetNS}, s[1:]...)...).CombinedOutput(); err != nil {
				rt.close()
				return nil, fmt.Errorf("%v: %w: %s", s, err, out)
			}
		}
		to := netip.AddrPortFrom(peer.UnderlayIP, refPort)
		rt.wg.Go(func() {
			buf := make([]byte, 65535)
			for {
				n, err := tf.Read(buf)
				if err != nil {
					return
				}
				if _, err := uc.WriteToUDPAddrPort(buf[:n], to); err != nil && errors.Is(err, net.ErrClosed) {
					return
				}
			}
		})
		rt.wg.Go(func() {
			buf := make([]byte, 65535)
			for {
				n, _, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if _, err := tf.Write(buf[:n]); err != nil && errors.Is(err, os.ErrClosed) {
					return
				}
			}
		})
	}
	// The pods' MTU matches the TUN's.
	if err := setPodMTU(ctx, pods, 1472); err != nil {
		rt.close()
		return nil, err
	}
	return rt, nil
}

func (rt *refTunnel) close() {
	for _, f := range rt.files {
		f.Close()
	}
	for _, c := range rt.conns {
		c.Close()
	}
	rt.wg.Wait()
}

// openPlainTUN opens a TUN without offloads or virtio-net header, in Go's
// poller (each Read and Write is one system call, with epoll only when
// the queue is empty: flannel's poll loop).
func openPlainTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}
