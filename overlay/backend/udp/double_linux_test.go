package udp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test doubles of the packet loops' two ends, as wireguard-go's
// tun/tuntest and conn/bindtest: a TUN queue and a UDP socket whose
// kernel side is channels. They take the loops' batches as the kernel
// does (the socket double reads and fills the very mmsghdrs, iovecs and
// control messages the loops build), so the loops run unchanged, without
// root.

// readWaker is a read deadline: wake is closed once it passed.
type readWaker struct {
	mu    sync.Mutex
	wake  chan struct{}
	timer *time.Timer
}

func (w *readWaker) woken() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wake == nil {
		w.wake = make(chan struct{})
	}
	return w.wake
}

// SetReadDeadline wakes a waiting read at t (zero: never; a fresh wait
// after a past deadline is woken at once, as with a real descriptor).
func (w *readWaker) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if w.wake == nil {
		w.wake = make(chan struct{})
	}
	select {
	case <-w.wake:
		w.wake = make(chan struct{}) // it had passed; a new deadline starts afresh
	default:
	}
	if t.IsZero() {
		return nil
	}
	wake := w.wake
	w.timer = time.AfterFunc(time.Until(t), func() { close(wake) })
	return nil
}

// chanTUN is a TUN queue: Inbound carries the packets the kernel routes
// into twill0 (what the TX loop reads), Outbound gets what the RX loop
// writes, one whole packet (its iovecs joined) per write. With vnet both
// carry a virtio-net header in front.
type chanTUN struct {
	readWaker
	vnet     bool
	Inbound  chan []byte
	Outbound chan []byte
	deleted  chan struct{}
}

func newChanTUN(vnet bool) *chanTUN {
	return &chanTUN{vnet: vnet, Inbound: make(chan []byte, 256), Outbound: make(chan []byte, 256), deleted: make(chan struct{})}
}

// delete is `ip link del twill0`: reads and writes fail with EBADFD.
func (t *chanTUN) delete() { close(t.deleted) }

func (t *chanTUN) vnetHdr() bool { return t.vnet }

func (t *chanTUN) readBatch(bufs [][]byte, sizes []int) (int, error) {
	select {
	case p := <-t.Inbound:
		sizes[0] = copy(bufs[0], p)
	case <-t.deleted:
		return 0, unix.EBADFD
	case <-t.woken():
		return 0, os.ErrDeadlineExceeded
	}
	return drain(t.Inbound, len(bufs), func(i int, p []byte) { sizes[i] = copy(bufs[i], p) }), nil
}

// drain hands put what else waits on c, up to n items counting the first
// one, taken already; it returns how many there were.
func drain[T any](c <-chan T, n int, put func(int, T)) int {
	i := 1
	for ; i < n; i++ {
		select {
		case v := <-c:
			put(i, v)
		default:
			return i
		}
	}
	return i
}

func (t *chanTUN) writeBatch(iovs [][]byte, groups []group) (int, error) {
	for _, g := range groups {
		select {
		case <-t.deleted:
			return 0, unix.EBADFD
		default:
		}
		t.Outbound <- bytes.Join(iovs[g.first:g.last], nil)
	}
	return 0, nil
}

// datagram is one UDP datagram on the double's wire: its peer address (the
// source of one received, the destination of one sent) and payload. A
// received one with gro set is a GRO run: data cut every gro bytes.
type datagram struct {
	addr netip.AddrPort
	data []byte
	gro  int
}

// chanSocket is a UDP socket bound to addr: Inbound carries what arrives
// from the wire, Outbound gets every datagram sent (a UDP GSO message cut
// into its datagrams, as the kernel does). With refuseGSO set, a GSO
// message fails with that error, as on a kernel without UDP GSO.
type chanSocket struct {
	readWaker
	addr      netip.AddrPort
	Inbound   chan datagram
	Outbound  chan datagram
	refuseGSO syscall.Errno
	// gsoMessages counts the GSO messages sent.
	gsoMessages atomic.Int32
}

func newChanSocket(addr netip.AddrPort) *chanSocket {
	return &chanSocket{addr: addr, Inbound: make(chan datagram, 256), Outbound: make(chan datagram, 1024)}
}

func (s *chanSocket) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.addr) }

func (s *chanSocket) sendmmsg(msgs []unix.Mmsghdr) (int, syscall.Errno, error) {
	for i := range msgs {
		h := &msgs[i].Hdr
		name := unsafe.Slice(h.Name, h.Namelen)
		to := netip.AddrPortFrom(netip.AddrFrom4([4]byte(name[4:8])), binary.BigEndian.Uint16(name[2:4]))
		var data []byte
		for _, v := range unsafe.Slice(h.Iov, h.Iovlen) {
			data = append(data, unsafe.Slice(v.Base, v.Len)...)
		}
		seg := 0
		if h.Controllen > 0 {
			c := unsafe.Slice(h.Control, h.Controllen)
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			if ch.Level == unix.IPPROTO_UDP && ch.Type == unix.UDP_SEGMENT {
				seg = int(binary.NativeEndian.Uint16(c[unix.CmsgLen(0):]))
			}
		}
		if seg > 0 && s.refuseGSO != 0 {
			return i, s.refuseGSO, nil
		}
		if seg == 0 {
			seg = len(data)
		} else {
			s.gsoMessages.Add(1)
		}
		for off := 0; off < len(data); off += seg {
			s.Outbound <- datagram{addr: to, data: data[off:min(off+seg, len(data))]}
		}
		msgs[i].Len = uint32(len(data))
	}
	return len(msgs), 0, nil
}

func (s *chanSocket) recvmmsg(msgs []unix.Mmsghdr) (int, error) {
	select {
	case d := <-s.Inbound:
		s.fill(&msgs[0], d)
	case <-s.woken():
		return 0, os.ErrDeadlineExceeded
	}
	return drain(s.Inbound, len(msgs), func(i int, d datagram) { s.fill(&msgs[i], d) }), nil
}

// fill receives d into m as recvmmsg does: the payload into its buffer
// (MSG_TRUNC when it does not fit), the source address, the GRO size.
func (s *chanSocket) fill(m *unix.Mmsghdr, d datagram) {
	h := &m.Hdr
	iov := unsafe.Slice(h.Iov, h.Iovlen)[0]
	buf := unsafe.Slice(iov.Base, iov.Len)
	m.Len = uint32(copy(buf, d.data))
	h.Flags = 0
	if len(d.data) > len(buf) {
		h.Flags = unix.MSG_TRUNC
	}
	name := unsafe.Slice(h.Name, h.Namelen)
	clear(name)
	binary.NativeEndian.PutUint16(name[0:2], unix.AF_INET)
	binary.BigEndian.PutUint16(name[2:4], d.addr.Port())
	a := d.addr.Addr().As4()
	copy(name[4:8], a[:])
	if d.gro == 0 {
		h.SetControllen(0)
		return
	}
	c := unsafe.Slice(h.Control, h.Controllen)
	clear(c)
	ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	ch.Level, ch.Type = unix.IPPROTO_UDP, unix.UDP_GRO
	ch.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(c[unix.CmsgLen(0):], uint32(d.gro))
	h.SetControllen(unix.CmsgSpace(4))
}

var (
	_ tunDevice = (*chanTUN)(nil)
	_ udpSocket = (*chanSocket)(nil)
)
