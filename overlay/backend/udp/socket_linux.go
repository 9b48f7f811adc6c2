package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/namespace"
)

// socketBuffer is the UDP socket's send and receive buffer size.
const socketBuffer = 8 << 20

// listen opens the UDP sockets in the node's namespace, one per queue,
// and returns the address they are bound to. Called with mu held.
func (b *Backend) listen(ctx context.Context) (netip.Addr, error) {
	bind := netip.IPv4Unspecified()
	if b.node.PublicIP.Is4() {
		bind = b.node.PublicIP
	}
	var socks []*udpConn
	err := namespace.Do(b.Namespace(), func() error {
		for range b.nqueues {
			uc, err := listenUDP(ctx, bind, b.port, b.nqueues > 1)
			if errors.Is(err, unix.EADDRNOTAVAIL) && len(socks) == 0 {
				// The public IP is not on this host (a NAT's address): listen
				// on all addresses, as flannel does.
				b.log.Warn("public IP is not a local address; listening on all addresses", "public_ip", bind)
				bind = netip.IPv4Unspecified()
				uc, err = listenUDP(ctx, bind, b.port, b.nqueues > 1)
			}
			if err != nil {
				return fmt.Errorf("listen on udp %s:%d: %w", bind, b.port, err)
			}
			s, err := newUDPConn(uc)
			if err != nil {
				uc.Close()
				return err
			}
			socks = append(socks, s)
		}
		return nil
	})
	if err != nil {
		for _, s := range socks {
			s.Close()
		}
		return netip.Addr{}, err
	}
	b.socks = socks
	return bind, nil
}

// listenUDP opens the UDP socket on bind:port, with SO_REUSEPORT when
// several sockets share the port (one per TUN queue).
func listenUDP(ctx context.Context, bind netip.Addr, port int, reuse bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{}
	if reuse {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	pc, err := lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(bind, uint16(port)).String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// setGRO turns on UDP GRO on the socket: the kernel then hands over runs
// of datagrams of one flow in one message (older kernels refuse it;
// single datagrams then).
func setGRO(uc *net.UDPConn) error { return setGROValue(uc, 1) }

func setGROValue(uc *net.UDPConn, v int) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, v)
	})
	return errors.Join(err, serr)
}

// defaultQueues is how many TUN queues (and sockets, and loop pairs) a
// backend uses: one per two CPUs, at most four; the environment variable
// TWILL_UDP_QUEUES overrides it (for measurements). Datagrams from one peer
// all carry the same ports, so SO_REUSEPORT hands them to one socket: more
// queues spread the sending side (the TUN hashes flows to queues) and
// several peers, not one peer's receiving side.
func defaultQueues() int {
	if v, err := strconv.Atoi(os.Getenv("TWILL_UDP_QUEUES")); err == nil && v > 0 && v <= 16 {
		return v
	}
	return max(1, min(runtime.NumCPU()/2, 4))
}

// setSocketBuffers makes the socket's buffers big enough for bursts of a
// TCP window, beyond net.core.[rw]mem_max if the process may (root).
func setSocketBuffers(uc *net.UDPConn, log *slog.Logger) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer); err != nil {
					log.Warn("set UDP socket buffer", "err", err)
				}
			}
		}
	})
}
