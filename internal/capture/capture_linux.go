// Package capture records the Ethernet frames that cross the links of a
// network namespace while a test does something, as tcpdump would: an
// AF_PACKET socket opened in the namespace. Tests use it to see what is on
// an underlay (encrypted or not, which ports).
//
// It only reads; it must not send, and it must not be used outside
// namespaces a test made.
package capture

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/namespace"
)

// Snap is the most of a frame that is kept.
const Snap = 2048

// maxFrames bounds the frames kept.
const maxFrames = 100000

// Frames records the frames on link ifname of the namespace named ns
// (every link of it when ifname is ""; a frame a bridge forwards is then
// seen on both ports) while during runs, and a moment after, for frames in
// flight. It returns them with during's error.
func Frames(ns, ifname string, during func() error) ([][]byte, error) {
	proto := int(htons(unix.ETH_P_ALL))
	var fd int
	if err := namespace.DoName(ns, func() (err error) {
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		if ifname == "" {
			return nil
		}
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifc.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("open a packet socket on %q in %s: %w", ifname, ns, err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
		return nil, fmt.Errorf("packet socket timeout: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	var mu sync.Mutex
	var frames [][]byte
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, Snap)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			mu.Lock()
			if len(frames) < maxFrames {
				frames = append(frames, bytes.Clone(buf[:n]))
			}
			mu.Unlock()
		}
	}()
	err := during()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	return frames, err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
