package udp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/twillnet/twill/overlay/plan"
)

const (
	// tunBatch is how many packets (super-packets with offload) one pass
	// of a TX loop reads from its TUN queue before sending them with one
	// sendmmsg (fewer when the queue runs empty).
	tunBatch = 64
	// udpBatch is how many messages (each up to 64 KiB of datagrams with
	// GRO) one recvmmsg takes.
	udpBatch = 32
	// rxBufSize is one receive message's buffer: a GRO batch is at most one
	// IPv4 packet's worth of payload.
	rxBufSize = 65535
)

// maxPacket is the largest IPv4 packet.
const maxPacket = 65535

// icmpRate and icmpBurst limit ICMP net unreachable answers (per second).
const (
	icmpRate  = 10
	icmpBurst = 10
)

// txLoop reads packets from one TUN queue, cuts super-packets into
// flannel datagrams (segmenter) and sends each batch with one sendmmsg,
// UDP GSO where the socket may; a packet for a subnet no peer holds is
// answered with ICMP net unreachable.
func (b *Backend) txLoop(ctx context.Context, q tunDevice, sock udpSocket) error {
	vnet := q.vnetHdr()
	bufs := make([][]byte, tunBatch)
	sizes := make([]int, tunBatch)
	for i := range bufs {
		bufs[i] = make([]byte, vnetHdrLen+maxPacket)
	}
	seg := &segmenter{arena: make([]byte, 0, 512<<10)}
	snd := newSender(b.gso.Load())
	segs := make([]segment, 0, 128)
	icmp := &icmpAnswer{buf: make([]byte, vnetHdrLen+576), iovs: make([][]byte, 1), groups: []group{{first: 0, last: 1, segs: 1}}}
	limit := tokenBucket{rate: icmpRate, burst: icmpBurst}
	flush := func() error {
		if len(snd.meta) == 0 {
			return nil
		}
		gsoErr, err := snd.flush(sock)
		if gsoErr != nil && b.gso.Swap(false) {
			b.log.Warn("UDP GSO refused by the kernel; sending single datagrams", "err", gsoErr)
		}
		snd.reset()
		seg.reset()
		return err
	}
	for {
		n, err := q.readBatch(bufs, sizes)
		if err != nil {
			if ctx.Err() != nil || closed(err) {
				return nil
			}
			return fmt.Errorf("read from %s: %w", plan.UDPDevice, err)
		}
		if !b.gso.Load() {
			snd.gso = false
		}
		t := b.table.Load()
		for i := range n {
			pkt := bufs[i][:sizes[i]]
			var h vnetHdr
			if vnet {
				if len(pkt) < vnetHdrLen {
					b.drops.add(DropMalformed, 1)
					continue
				}
				h = decodeVnetHdr(pkt)
				pkt = pkt[vnetHdrLen:]
			}
			if len(pkt) > 0 && pkt[0]>>4 != 4 {
				b.drops.add(DropNotIPv4, 1)
				continue
			}
			if !validIPv4(pkt) {
				b.drops.add(DropMalformed, 1)
				continue
			}
			p := t.lookup(pkt[16:20])
			if p == nil {
				b.drops.add(DropNoRoute, 1)
				if limit.allow(time.Now()) {
					b.answerUnreachable(q, vnet, icmp, pkt)
				}
				continue
			}
			if snd.full() {
				if err := flush(); err != nil {
					if closed(err) {
						return nil
					}
					return fmt.Errorf("send to udp peers: %w", err)
				}
			}
			var gso int
			segs, gso, err = seg.split(segs[:0], h, pkt)
			if err != nil {
				b.drops.add(DropMalformed, 1)
				continue
			}
			snd.add(p, segs, gso)
		}
		if err := flush(); err != nil {
			if closed(err) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("send to udp peers: %w", err)
		}
	}
}

// icmpAnswer is a TX loop's room for ICMP answers.
type icmpAnswer struct {
	buf    []byte
	iovs   [][]byte
	groups []group
}

// answerUnreachable writes ICMP net unreachable for pkt into the TUN. Its
// source is the network address of the unreachable subnet (SubnetLen bits of
// the destination): nobody holds that subnet, the kernel routes it to
// twill0, so the answer passes reverse-path checks, and it is not one of the
// node's own addresses (which the kernel would drop as a martian).
func (b *Backend) answerUnreachable(q tunDevice, vnet bool, a *icmpAnswer, pkt []byte) {
	bits := b.node.Network.SubnetLen
	if bits <= 0 || bits > 32 {
		bits = 24
	}
	from := netip.PrefixFrom(netip.AddrFrom4([4]byte(pkt[16:20])), bits).Masked().Addr()
	out := netUnreachable(a.buf[vnetHdrLen:], pkt, from)
	if out == nil {
		return
	}
	a.iovs[0] = out
	if vnet {
		clear(a.buf[:vnetHdrLen])
		a.iovs[0] = a.buf[:vnetHdrLen+len(out)]
	}
	if refused, err := q.writeBatch(a.iovs, a.groups); refused > 0 || err != nil {
		b.drops.add(DropTUNWrite, 1)
	}
}

// rxLoop receives datagrams on one socket (GRO batches where the socket
// has UDP GRO), checks each (decap), merges runs of TCP segments of one
// flow into super-packets (coalescer) and writes them into the TUN queue q,
// one write per packet or super-packet.
func (b *Backend) rxLoop(ctx context.Context, q tunDevice, sock udpSocket) error {
	vnet := q.vnetHdr()
	// Two stages: this goroutine receives and checks, a writer writes into
	// the TUN (where the kernel also runs the pod's receive path), so that
	// on several CPUs one batch is written while the next is received.
	free := make(chan *rxBatch, rxBatches)
	full := make(chan *rxBatch, rxBatches)
	for range rxBatches {
		free <- &rxBatch{
			rcv: newReceiver(udpBatch, rxBufSize),
			co:  &coalescer{arena: make([]byte, 0, 64<<10), iovs: make([][]byte, 0, 4096), groups: make([]group, 0, 1024)},
		}
	}
	// The writer ends the loop when the TUN cannot take packets at all
	// (deleted: the caller recreates it).
	writerDone, writerFailed := make(chan struct{}), make(chan struct{})
	var werr error
	go func() {
		defer close(writerDone)
		for rb := range full {
			if werr == nil {
				if werr = b.writeBatch(q, rb); werr != nil {
					close(writerFailed)
				}
			}
			free <- rb
		}
	}()
	stop := func() error {
		close(full)
		<-writerDone
		if werr != nil && !closed(werr) && ctx.Err() == nil {
			return fmt.Errorf("write to %s: %w", plan.UDPDevice, werr)
		}
		return nil
	}
	for {
		var rb *rxBatch
		select {
		case rb = <-free:
		case <-ctx.Done():
			return stop()
		case <-writerFailed:
			return stop()
		}
		select {
		case <-writerFailed: // it wins over a free batch
			return stop()
		default:
		}
		n, err := rb.rcv.recv(sock)
		if err != nil {
			if ctx.Err() != nil || closed(err) {
				return stop()
			}
			return errors.Join(fmt.Errorf("receive from udp %s: %w", sock.LocalAddr(), err), stop())
		}
		b.checkBatch(vnet, rb, n)
		full <- rb
	}
}

// rxBatches is how many receive batches the two stages of rxLoop pass
// between them.
const rxBatches = 3

// rxBatch is one recvmmsg's worth of datagrams on their way to the TUN.
type rxBatch struct {
	rcv *receiver
	co  *coalescer
}

// checkBatch checks the n messages received into rb (decap), counts them
// and queues those that pass for the TUN (coalesced when it takes
// virtio-net headers, vnet).
func (b *Backend) checkBatch(vnet bool, rb *rxBatch, n int) {
	t := b.table.Load()
	var local netip.Prefix
	if l := b.local.Load(); l != nil {
		local = *l
	}
	now := time.Now().UnixNano()
	co := rb.co
	co.reset()
	deliver := func(from netip.Addr, dg []byte) {
		r := decap(t, local, from, dg)
		if r.drop != "" {
			if r.peer != nil {
				r.peer.c.drops.add(r.drop, 1)
			} else {
				b.drops.add(r.drop, 1)
			}
			return
		}
		c := r.peer.c
		c.rxPackets.Add(1)
		c.rxBytes.Add(uint64(len(dg)))
		c.lastSeen.Store(now)
		if vnet {
			co.add(dg)
		} else {
			co.addPlain(dg)
		}
	}
	for i := range n {
		data, f4, gso, trunc := rb.rcv.message(i)
		from := netip.AddrFrom4(f4)
		switch {
		case trunc:
			deliver(from, nil) // cannot be whole: malformed if from a peer
		case gso <= 0 || gso >= len(data):
			deliver(from, data)
		default:
			for off := 0; off < len(data); off += gso {
				deliver(from, data[off:min(off+gso, len(data))])
			}
		}
	}
	if vnet {
		co.finish()
	}
}

// writeBatch writes rb's packets into the TUN queue q, one write per packet
// or super-packet, and counts those it refused. Its error says the queue
// takes nothing any more (closed: the loops are ending; deleted).
func (b *Backend) writeBatch(q tunDevice, rb *rxBatch) error {
	refused, err := q.writeBatch(rb.co.iovs, rb.co.groups)
	if refused > 0 {
		b.drops.add(DropTUNWrite, uint64(refused))
	}
	return err
}

// tokenBucket is a rate limiter for one goroutine.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (t *tokenBucket) allow(now time.Time) bool {
	if t.last.IsZero() {
		t.tokens = t.burst
	} else {
		t.tokens = min(t.burst, t.tokens+now.Sub(t.last).Seconds()*t.rate)
	}
	t.last = now
	if t.tokens < 1 {
		return false
	}
	t.tokens--
	return true
}
