package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TUN offload flags (TUNSETOFFLOAD), from linux/if_tun.h.
const (
	tunFCsum   = 0x01
	tunFTSO4   = 0x02
	tunFTSO6   = 0x04
	tunFTSOECN = 0x08
	tunFUSO4   = 0x20
	tunFUSO6   = 0x40
)

// tunQueue is one queue of the TUN device: a non-blocking file descriptor
// in Go's poller. With vnet set, every packet read or written starts with
// a virtio-net header.
type tunQueue struct {
	f    *os.File
	rc   syscall.RawConn
	vnet bool
	// rd is the TX loop's read; wr the writes, which the RX loop's writer
	// and the TX loop's ICMP answers share under wmu (once per batch).
	rd   readOp
	wmu  sync.Mutex
	wr   sysOp
	wiov []unix.Iovec // scratch for writev
	// shut is set by close, before the file is closed: the poller's
	// "use of closed file" error is not os.ErrClosed.
	shut atomic.Bool
}

// sysOp is a system call trap(fd, a1, a2) made through Go's poller without
// an allocation: the function the poller calls is made once and takes its
// arguments from the struct. It is repeated after EINTR, and after EAGAIN
// once the descriptor is ready. One goroutine at a time uses a sysOp.
type sysOp struct {
	trap, a1, a2 uintptr
	r            uintptr
	errno        syscall.Errno
	fn           func(fd uintptr) bool
}

func (o *sysOp) call(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(o.trap, fd, o.a1, o.a2, 0, 0, 0)
		switch e {
		case 0:
			o.r = r
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			o.r, o.errno = 0, e
			return true
		}
	}
}

// do makes the call on rc's descriptor, waiting for it to be writable
// (write) or readable; errno is the call's error, err the poller's
// (closed, deadline). a1 must point into memory that is not on a stack.
func (o *sysOp) do(rc syscall.RawConn, write bool, trap, a1, a2 uintptr) (r uintptr, errno syscall.Errno, err error) {
	if o.fn == nil {
		o.fn = o.call
	}
	o.trap, o.a1, o.a2, o.r, o.errno = trap, a1, a2, 0, 0
	if write {
		err = rc.Write(o.fn)
	} else {
		err = rc.Read(o.fn)
	}
	return o.r, o.errno, err
}

// readOp is readBatch's poller call, made once as sysOp's is.
type readOp struct {
	bufs  [][]byte
	sizes []int
	n     int
	err   error
	fn    func(fd uintptr) bool
}

// call reads packets until the queue is empty or the buffers are full.
func (o *readOp) call(fd uintptr) bool {
	for o.n < len(o.bufs) {
		m, err := unix.Read(int(fd), o.bufs[o.n])
		if err == unix.EAGAIN {
			return o.n > 0
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			o.err = err
			return true
		}
		o.sizes[o.n] = m
		o.n++
	}
	return true
}

// close closes the queue; its loops then end without an error.
func (q *tunQueue) close() error {
	q.shut.Store(true)
	return q.f.Close()
}

// tunPath is the TUN clone device (a test points it elsewhere to make
// the TUN impossible to recreate).
var tunPath = "/dev/net/tun"

// openTUNQueues creates (or attaches to) the TUN device name in the calling
// thread's namespace with n queues (IFF_MULTI_QUEUE when n > 1). With
// offload, the queues carry virtio-net headers and the kernel is told it
// may hand over TCP (and UDP, where it can) super-packets with partial
// checksums; it returns which of those it accepted. With persist, the
// device is made persistent (TUNSETPERSIST): it stays, with its address
// and routes, when the queues are closed, and a later call attaches to it.
func openTUNQueues(name string, n int, offload, persist bool) (qs []*tunQueue, uso bool, err error) {
	defer func() {
		if err != nil {
			for _, q := range qs {
				q.f.Close()
			}
			qs = nil
		}
	}()
	for i := range n {
		fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return qs, false, fmt.Errorf("open %s: %w", tunPath, err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return qs, false, fmt.Errorf("TUN name %q: %w", name, err)
		}
		flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if offload {
			flags |= unix.IFF_VNET_HDR
		}
		if n > 1 {
			flags |= unix.IFF_MULTI_QUEUE
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return qs, false, fmt.Errorf("create TUN %s (queue %d): %w", name, i, err)
		}
		if persist && i == 0 {
			if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
				unix.Close(fd)
				return qs, false, fmt.Errorf("make TUN %s persistent: %w", name, err)
			}
		}
		if offload {
			// Every queue takes the same offloads; the kernel keeps them per
			// device, so setting them on each is harmless.
			base := tunFCsum | tunFTSO4 | tunFTSO6 | tunFTSOECN
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base|tunFUSO4|tunFUSO6); err == nil {
				uso = true
			} else if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base); err != nil {
				unix.Close(fd)
				return qs, false, fmt.Errorf("set offloads of TUN %s: %w", name, err)
			}
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return qs, false, fmt.Errorf("make TUN %s non-blocking: %w", name, err)
		}
		f := os.NewFile(uintptr(fd), tunPath)
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return qs, false, fmt.Errorf("TUN %s: %w", name, err)
		}
		qs = append(qs, &tunQueue{f: f, rc: rc, vnet: offload, wiov: make([]unix.Iovec, 0, 256)})
	}
	return qs, uso, nil
}

// tunDevice is one TUN queue as the packet loops use it: whole batches per
// call, so that a loop makes no interface call per packet. *tunQueue is
// the kernel's; the tests' double is channel-backed (loops_test.go).
type tunDevice interface {
	// readBatch reads packets into bufs until the queue is empty or bufs
	// are full, waiting for the first; it returns how many it read
	// (sizes[i] is the length of bufs[i]'s packet). Once the queue is
	// closed it fails with net.ErrClosed; after the read deadline with
	// os.ErrDeadlineExceeded; when the device was deleted with EBADFD.
	readBatch(bufs [][]byte, sizes []int) (int, error)
	// writeBatch writes one packet per group, gathered from
	// iovs[g.first:g.last]. It returns how many segments (g.segs) the
	// device refused, and an error when it cannot write at all (closed:
	// net.ErrClosed; deleted: EBADFD), the rest of the batch then unwritten.
	writeBatch(iovs [][]byte, groups []group) (refused int, err error)
	// vnetHdr says whether every packet starts with a virtio-net header.
	vnetHdr() bool
	// SetReadDeadline makes a waiting readBatch return (the loops stop so).
	SetReadDeadline(t time.Time) error
}

var _ tunDevice = (*tunQueue)(nil)

func (q *tunQueue) vnetHdr() bool { return q.vnet }

// SetReadDeadline sets the deadline of the queue's reads.
func (q *tunQueue) SetReadDeadline(t time.Time) error { return q.f.SetReadDeadline(t) }

func (q *tunQueue) readBatch(bufs [][]byte, sizes []int) (int, error) {
	o := &q.rd
	if o.fn == nil {
		o.fn = o.call
	}
	o.bufs, o.sizes, o.n, o.err = bufs, sizes, 0, nil
	err := q.rc.Read(o.fn)
	n := o.n
	if err == nil {
		err = o.err
	}
	o.bufs, o.sizes, o.err = nil, nil, nil
	if n > 0 {
		return n, nil
	}
	if err != nil && q.shut.Load() {
		err = net.ErrClosed
	}
	return 0, err
}

func (q *tunQueue) writeBatch(iovs [][]byte, groups []group) (int, error) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	refused := 0
	for _, g := range groups {
		err := q.writev(iovs[g.first:g.last])
		switch {
		case err == nil:
		case closed(err) || q.shut.Load():
			return refused, net.ErrClosed
		case errors.Is(err, unix.EBADFD):
			return refused, err
		default:
			refused += g.segs
		}
	}
	return refused, nil
}

// writev writes one packet gathered from parts.
func (q *tunQueue) writev(parts [][]byte) error {
	q.wiov = q.wiov[:0]
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		v := unix.Iovec{Base: &p[0]}
		v.SetLen(len(p))
		q.wiov = append(q.wiov, v)
	}
	_, errno, err := q.wr.do(q.rc, true, unix.SYS_WRITEV, uintptr(unsafe.Pointer(&q.wiov[0])), uintptr(len(q.wiov)))
	if err == nil && errno != 0 {
		err = errno
	}
	return err
}

// udpSocket is the UDP socket as the packet loops use it: one sendmmsg or
// recvmmsg per call. *udpConn is the kernel's; the tests' double is
// channel-backed (loops_test.go).
type udpSocket interface {
	// sendmmsg sends msgs, waiting while the socket's buffer is full, and
	// returns how many went; errno is the error of the first message that
	// did not (0 if all went), err an error of the socket itself (closed).
	sendmmsg(msgs []unix.Mmsghdr) (sent int, errno syscall.Errno, err error)
	// recvmmsg waits for datagrams and receives as many messages as are
	// there, at most len(msgs), into the buffers the headers point at.
	recvmmsg(msgs []unix.Mmsghdr) (int, error)
	// SetReadDeadline makes a waiting recvmmsg return.
	SetReadDeadline(t time.Time) error
	LocalAddr() net.Addr
}

// udpConn is a UDP socket of the kernel's. The TX loop sends, the RX loop
// receives: each has its sysOp.
type udpConn struct {
	*net.UDPConn
	rc         syscall.RawConn
	send, recv sysOp
}

var _ udpSocket = (*udpConn)(nil)

func newUDPConn(uc *net.UDPConn) (*udpConn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	return &udpConn{UDPConn: uc, rc: rc}, nil
}

func (c *udpConn) sendmmsg(msgs []unix.Mmsghdr) (int, syscall.Errno, error) {
	n, errno, err := c.send.do(c.rc, true, unix.SYS_SENDMMSG, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)))
	return int(n), errno, err
}

func (c *udpConn) recvmmsg(msgs []unix.Mmsghdr) (int, error) {
	n, errno, err := c.recv.do(c.rc, false, unix.SYS_RECVMMSG, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)))
	if err == nil && errno != 0 {
		err = errno
	}
	return int(n), err
}

// closed reports whether err says the file or socket was closed.
func closed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// sockaddrLen is sizeof(struct sockaddr_in).
const sockaddrLen = 16

// cmsgSegLen is the room for one UDP_SEGMENT or UDP_GRO control message.
var cmsgSegLen = unix.CmsgSpace(4)

// sender builds a batch of sendmmsg messages. A message is one datagram,
// or with GSO a run of datagrams of one size (the last may be shorter) to
// one peer that the kernel cuts apart (UDP_SEGMENT); its iovecs point at
// segment headers and payloads in place.
type sender struct {
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	cmsg  []byte
	meta  []sendMeta
	segs  []segment // the batch's segments, for a resend without GSO
	niov  int
	gso   bool // may use UDP_SEGMENT
	maxSg int  // segments per GSO message
}

// sendMeta is what a message carries, for the counters and a resend.
type sendMeta struct {
	peer        *peer
	first, last int // segs[first:last]
	iov0        int // its first iovec
	bytes       int
	gso         int
}

const (
	sendMsgs = 1024
	sendIovs = 8192
	// maxGSOBytes is the most a GSO message may carry: one IPv4 packet's
	// worth of UDP payload.
	maxGSOBytes = 65535 - 20 - 8
	// maxGSOSegments is UDP_MAX_SEGMENTS of older kernels (newer ones
	// allow 128).
	maxGSOSegments = 64
)

func newSender(gso bool) *sender {
	return &sender{
		msgs:  make([]unix.Mmsghdr, sendMsgs),
		iovs:  make([]unix.Iovec, sendIovs),
		cmsg:  make([]byte, sendMsgs*cmsgSegLen),
		meta:  make([]sendMeta, 0, sendMsgs),
		gso:   gso,
		maxSg: maxGSOSegments,
	}
}

func (s *sender) reset() {
	s.meta = s.meta[:0]
	clear(s.segs)
	s.segs = s.segs[:0]
	s.niov = 0
}

// full reports whether the batch has no room for another super-packet.
func (s *sender) full() bool {
	return len(s.meta)+2*maxGSOSegments > sendMsgs || s.niov+4*maxGSOSegments > sendIovs
}

// add queues the datagrams segs (all gso bytes long but the last; gso 0:
// one datagram) for p.
func (s *sender) add(p *peer, segs []segment, gso int) {
	first := len(s.segs)
	s.segs = append(s.segs, segs...)
	if !s.gso || gso == 0 || len(segs) == 1 {
		for i := first; i < len(s.segs); i++ {
			s.message(p, i, i+1, 0)
		}
		return
	}
	per := min(s.maxSg, maxGSOBytes/gso)
	for i := first; i < len(s.segs); i += per {
		s.message(p, i, min(i+per, len(s.segs)), gso)
	}
}

// message adds the message for segs[first:last].
func (s *sender) message(p *peer, first, last, gso int) {
	i := len(s.meta)
	m := &s.msgs[i]
	m.Len = 0
	h := &m.Hdr
	*h = unix.Msghdr{}
	h.Name = &p.sockaddr[0]
	h.Namelen = sockaddrLen
	iov0 := s.niov
	bytes := 0
	for _, sg := range s.segs[first:last] {
		for _, b := range [2][]byte{sg.hdr, sg.payload} {
			if len(b) > 0 {
				s.iovs[s.niov] = unix.Iovec{Base: &b[0]}
				s.iovs[s.niov].SetLen(len(b))
				s.niov++
				bytes += len(b)
			}
		}
	}
	h.Iov = &s.iovs[iov0]
	h.SetIovlen(s.niov - iov0)
	if gso > 0 && last-first > 1 {
		c := s.cmsg[i*cmsgSegLen : (i+1)*cmsgSegLen]
		clear(c)
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
		ch.Level = unix.IPPROTO_UDP
		ch.Type = unix.UDP_SEGMENT
		ch.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(gso))
		h.Control = &c[0]
		h.SetControllen(cmsgSegLen)
	} else {
		gso = 0
	}
	s.meta = append(s.meta, sendMeta{peer: p, first: first, last: last, iov0: iov0, bytes: bytes, gso: gso})
}

// flush sends the batch on the socket c. When the kernel refuses a GSO
// message with EIO (no checksum offload on the way out) or EINVAL/
// ENOPROTOOPT (an old kernel), GSO is turned off for good (gsoFailed says
// so, with the error) and the rest is sent as single datagrams. Other
// errors drop the message they hit and are counted.
func (s *sender) flush(c udpSocket) (gsoFailed error, err error) {
	for off := 0; off < len(s.meta); {
		sent, serr, werr := c.sendmmsg(s.msgs[off:len(s.meta)])
		if werr != nil {
			return gsoFailed, werr
		}
		for _, m := range s.meta[off : off+sent] {
			m.peer.c.txPackets.Add(uint64(m.last - m.first))
			m.peer.c.txBytes.Add(uint64(m.bytes))
		}
		off += sent
		if serr == 0 || off >= len(s.meta) {
			if sent == 0 && off < len(s.meta) {
				// Nothing sent and no error: never spin; drop it.
				m := s.meta[off]
				m.peer.c.drops.add(DropUDPSend, uint64(m.last-m.first))
				off++
			}
			continue
		}
		m := s.meta[off]
		if m.gso > 0 && (serr == unix.EIO || serr == unix.EINVAL || serr == unix.ENOPROTOOPT) {
			gsoFailed = fmt.Errorf("send with UDP GSO: %w", serr)
			rest := append([]sendMeta(nil), s.meta[off:]...)
			s.gso = false
			s.meta = s.meta[:off]
			s.niov = m.iov0
			for _, r := range rest {
				for i := r.first; i < r.last; i++ {
					if len(s.meta) == sendMsgs {
						r.peer.c.drops.add(DropUDPSend, 1)
						continue
					}
					s.message(r.peer, i, i+1, 0)
				}
			}
			continue
		}
		m.peer.c.drops.add(DropUDPSend, uint64(m.last-m.first))
		off++
	}
	return gsoFailed, nil
}

// receiver receives batches of datagrams with recvmmsg; with UDP GRO a
// message holds a run of datagrams of one size (the gso size from the
// control message; the last may be shorter).
type receiver struct {
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	bufs  [][]byte
	names [][sockaddrLen]byte
	cmsg  []byte
}

func newReceiver(n, bufSize int) *receiver {
	r := &receiver{
		msgs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		bufs:  make([][]byte, n),
		names: make([][sockaddrLen]byte, n),
		cmsg:  make([]byte, n*cmsgSegLen),
	}
	for i := range n {
		r.bufs[i] = make([]byte, bufSize)
		r.iovs[i] = unix.Iovec{Base: &r.bufs[i][0]}
		r.iovs[i].SetLen(bufSize)
	}
	return r
}

// recv waits for datagrams and receives as many messages as are there (at
// most len(msgs)) from c.
func (r *receiver) recv(c udpSocket) (int, error) {
	for i := range r.msgs {
		h := &r.msgs[i].Hdr
		h.Name = &r.names[i][0]
		h.Namelen = sockaddrLen
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control = &r.cmsg[i*cmsgSegLen]
		h.SetControllen(cmsgSegLen)
		h.Flags = 0
		r.msgs[i].Len = 0
	}
	return c.recvmmsg(r.msgs)
}

// message returns the i-th received message: its data, the sender's
// address, the GRO segment size (0: one datagram) and whether it was
// truncated.
func (r *receiver) message(i int) (data []byte, from [4]byte, gso int, trunc bool) {
	m := &r.msgs[i]
	data = r.bufs[i][:m.Len]
	copy(from[:], r.names[i][4:8])
	trunc = m.Hdr.Flags&unix.MSG_TRUNC != 0
	cl := int(m.Hdr.Controllen)
	c := r.cmsg[i*cmsgSegLen : i*cmsgSegLen+min(cl, cmsgSegLen)]
	for len(c) >= unix.CmsgLen(0) {
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
		l := int(ch.Len)
		if l < unix.CmsgLen(0) || l > len(c) {
			break
		}
		if ch.Level == unix.IPPROTO_UDP && ch.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			if l >= unix.CmsgLen(4) {
				gso = int(binary.NativeEndian.Uint32(c[unix.CmsgLen(0):]))
			} else {
				gso = int(binary.NativeEndian.Uint16(c[unix.CmsgLen(0):]))
			}
		}
		c = c[min(len(c), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return data, from, gso, trunc
}
