package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// BenchmarkMeshMemoryPerSession measures what one mesh session costs a
// speaker in memory: a speaker and peers GoBGP speakers of twill's
// configuration (graceful restart, the node's subnet originated) on
// loopback addresses of this process, the Go heap in use read before and
// after every speaker peers with the first one. Both ends of each session
// are in this heap, so a session's one end is half the growth per
// session. Printed as B/session; the hold time and keepalives do not
// change it.
func BenchmarkMeshMemoryPerSession(b *testing.B) {
	const peers = 24
	port := 20000 + os.Getpid()%20000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 100, byte(i + 1)}) }
	for b.Loop() {
		var sps []*speaker
		for i := range peers + 1 {
			sp, err := startSpeaker(ctx, log, 64512, addr(i), port, 120)
			if err != nil {
				b.Fatal(err)
			}
			sps = append(sps, sp)
			if err := sp.originate(ctx, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24), addr(i), false); err != nil {
				b.Fatal(err)
			}
		}
		before := heapInUse()
		for i := 1; i <= peers; i++ {
			for _, pair := range [][2]int{{0, i}, {i, 0}} {
				n := neighbor{Addr: addr(pair[1]), ASN: 64512, Kind: "mesh"}
				req := peerRequest(n, 64512, port, 90, 1, 120)
				// On one loopback the source must be named (a node
				// has one address).
				req.Transport.LocalAddress = addr(pair[0]).String()
				if err := sps[pair[0]].srv.AddPeer(ctx, &api.AddPeerRequest{Peer: req}); err != nil {
					b.Fatal(err)
				}
			}
		}
		for {
			up := 0
			_ = sps[0].srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
				if p.State != nil && p.State.SessionState == api.PeerState_ESTABLISHED {
					up++
				}
			})
			if up == peers {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("%d of %d sessions established", up, peers)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // the updates exchanged
		after := heapInUse()
		perEnd := float64(after-before) / float64(2*peers)
		b.ReportMetric(perEnd, "B/session")
		b.Logf("%d sessions: heap in use %d -> %d KiB, %.1f KiB a session's end", peers, before>>10, after>>10, perEnd/1024)
		for _, sp := range sps {
			sp.srv.Stop()
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
