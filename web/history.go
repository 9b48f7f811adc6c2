package web

import (
	"net/netip"
	"sync"
	"time"

	"github.com/twillnet/twill/overlay/status"
)

// sample is one reading of a peer's counters.
type sample struct {
	at               time.Time
	tx, rx, txp, rxp uint64
	txRate, rxRate   float64 // bytes/s since the previous sample
	txpRate, rxpRate float64
	hasRate          bool
}

// peerHistory is a ring of a peer's samples.
type peerHistory struct {
	samples []sample // oldest first, at most history.size
	// lastTx and lastRx are when the counters last grew.
	lastTx, lastRx time.Time
}

// history keeps the last samples of every current peer's counters, to
// compute rates and draw graphs. Peers that left are forgotten.
type history struct {
	size int

	mu    sync.Mutex
	at    time.Time
	peers map[netip.Prefix]*peerHistory
}

func newHistory(size int) *history {
	return &history{size: size, peers: map[netip.Prefix]*peerHistory{}}
}

// add records one reading of all peers.
func (h *history) add(at time.Time, peers []status.Peer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.at = at
	seen := make(map[netip.Prefix]bool, len(peers))
	for _, p := range peers {
		seen[p.Subnet] = true
		ph := h.peers[p.Subnet]
		if ph == nil {
			ph = &peerHistory{}
			h.peers[p.Subnet] = ph
		}
		s := sample{at: at, tx: p.TxBytes, rx: p.RxBytes, txp: p.TxPackets, rxp: p.RxPackets}
		if n := len(ph.samples); n > 0 {
			prev := ph.samples[n-1]
			if dt := at.Sub(prev.at).Seconds(); dt > 0 {
				s.hasRate = true
				s.txRate, s.rxRate = rate(prev.tx, s.tx, dt), rate(prev.rx, s.rx, dt)
				s.txpRate, s.rxpRate = rate(prev.txp, s.txp, dt), rate(prev.rxp, s.rxp, dt)
			}
			if s.txp > prev.txp {
				ph.lastTx = at
			}
			if s.rxp > prev.rxp {
				ph.lastRx = at
			}
		}
		if len(ph.samples) == h.size {
			copy(ph.samples, ph.samples[1:])
			ph.samples = ph.samples[:h.size-1]
		}
		ph.samples = append(ph.samples, s)
	}
	for k := range h.peers {
		if !seen[k] {
			delete(h.peers, k)
		}
	}
}

// rate is the growth of a counter per second; a counter that went back
// (the backend restarted) counts as no traffic.
func rate(prev, now uint64, dt float64) float64 {
	if now < prev {
		return 0
	}
	return float64(now-prev) / dt
}

// peerRates is what the history knows of one peer.
type peerRates struct {
	last           sample
	lastTx, lastRx time.Time
	series         []sample
}

// get returns a peer's latest rates and, with series, its samples.
func (h *history) get(p netip.Prefix, series bool) (peerRates, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.peers[p]
	if ph == nil || len(ph.samples) == 0 {
		return peerRates{}, false
	}
	r := peerRates{last: ph.samples[len(ph.samples)-1], lastTx: ph.lastTx, lastRx: ph.lastRx}
	if series {
		r.series = append([]sample(nil), ph.samples...)
	}
	return r, true
}

func (h *history) sampledAt() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at
}
