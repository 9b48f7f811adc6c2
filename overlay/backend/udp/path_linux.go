package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
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

// txLoop reads packets from one TUN queue, cuts super-packets into
// flannel datagrams (segmenter) and sends each batch with one sendmmsg,
// UDP GSO where the socket may; a packet for a subnet no peer holds is
// answered with ICMP net unreachable.
func (b *Backend) txLoop(ctx context.Context, q *tunQueue, rc syscall.RawConn) error {
	bufs := make([][]byte, tunBatch)
	sizes := make([]int, tunBatch)
	for i := range bufs {
		bufs[i] = make([]byte, vnetHdrLen+maxPacket)
	}
	seg := &segmenter{arena: make([]byte, 0, 512<<10)}
	snd := newSender(b.gso.Load())
	segs := make([]segment, 0, 128)
	icmp := make([]byte, vnetHdrLen+576)
	limit := tokenBucket{rate: icmpRate, burst: icmpBurst}
	flush := func() error {
		if len(snd.meta) == 0 {
			return nil
		}
		gsoErr, err := snd.flush(rc)
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
			if ctx.Err() != nil || closed(err) || q.shut.Load() {
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
			if q.vnet {
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
					b.answerUnreachable(q, icmp, pkt)
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

// answerUnreachable writes ICMP net unreachable for pkt into the TUN. Its
// source is the network address of the unreachable subnet (SubnetLen bits of
// the destination): nobody holds that subnet, the kernel routes it to
// twill0, so the answer passes reverse-path checks, and it is not one of the
// node's own addresses (which the kernel would drop as a martian).
func (b *Backend) answerUnreachable(q *tunQueue, buf, pkt []byte) {
	bits := b.node.Network.SubnetLen
	if bits <= 0 || bits > 32 {
		bits = 24
	}
	from := netip.PrefixFrom(netip.AddrFrom4([4]byte(pkt[16:20])), bits).Masked().Addr()
	out := netUnreachable(buf[vnetHdrLen:], pkt, from)
	if out == nil {
		return
	}
	var err error
	if q.vnet {
		clear(buf[:vnetHdrLen])
		err = q.write(buf[:vnetHdrLen+len(out)])
	} else {
		err = q.write(out)
	}
	if err != nil {
		b.drops.add(DropTUNWrite, 1)
	}
}

// rxLoop receives datagrams on one socket (GRO batches where the socket
// has UDP GRO), checks each (decap), merges runs of TCP segments of one
// flow into super-packets (coalescer) and writes them into the TUN queue q,
// one write per packet or super-packet.
func (b *Backend) rxLoop(ctx context.Context, q *tunQueue, uc *net.UDPConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	// Two stages: this goroutine receives and checks, a writer writes into
	// the TUN (where the kernel also runs the pod's receive path), so that
	// on several CPUs one batch is written while the next is received.
	free := make(chan *rxBatch, rxBatches)
	full := make(chan *rxBatch, rxBatches)
	for range rxBatches {
		free <- &rxBatch{
			rcv:   newReceiver(udpBatch, rxBufSize),
			co:    &coalescer{arena: make([]byte, 0, 64<<10), iovs: make([][]byte, 0, 4096)},
			plain: make([][]byte, 0, 1024),
		}
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for rb := range full {
			b.writeBatch(q, rb)
			free <- rb
		}
	}()
	defer func() {
		close(full)
		<-writerDone
	}()
	for {
		var rb *rxBatch
		select {
		case rb = <-free:
		case <-ctx.Done():
			return nil
		}
		n, err := rb.rcv.recv(rc)
		if err != nil {
			if ctx.Err() != nil || closed(err) {
				return nil
			}
			return fmt.Errorf("receive from udp %s: %w", uc.LocalAddr(), err)
		}
		b.checkBatch(q, rb, n)
		full <- rb
	}
}

// rxBatches is how many receive batches the two stages of rxLoop pass
// between them.
const rxBatches = 3

// rxBatch is one recvmmsg's worth of datagrams on their way to the TUN.
type rxBatch struct {
	rcv   *receiver
	co    *coalescer
	plain [][]byte
}

// checkBatch checks the n messages received into rb (decap), counts them
// and queues those that pass for the TUN (coalesced when q has virtio-net
// headers).
func (b *Backend) checkBatch(q *tunQueue, rb *rxBatch, n int) {
	t := b.table.Load()
	var local netip.Prefix
	if l := b.local.Load(); l != nil {
		local = *l
	}
	now := time.Now().UnixNano()
	co := rb.co
	co.reset()
	rb.plain = rb.plain[:0]
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
		if q.vnet {
			co.add(dg)
		} else {
			rb.plain = append(rb.plain, dg)
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
	if q.vnet {
		co.finish()
	}
}

// writeBatch writes rb's packets into the TUN queue q, one write per packet
// or super-packet. A closed queue drops them silently (the loops are
// ending).
func (b *Backend) writeBatch(q *tunQueue, rb *rxBatch) {
	if q.vnet {
		for _, g := range rb.co.groups {
			if err := q.writev(rb.co.iovs[g.first:g.last]); err != nil {
				if closed(err) || q.shut.Load() {
					return
				}
				b.drops.add(DropTUNWrite, uint64(g.segs))
			}
		}
		return
	}
	for _, pkt := range rb.plain {
		if err := q.write(pkt); err != nil {
			if closed(err) || q.shut.Load() {
				return
			}
			b.drops.add(DropTUNWrite, 1)
		}
	}
}
