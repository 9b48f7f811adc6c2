package web

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twillnet/twill/overlay/netconf"
)

// wireGuardCollector exports the wireguard backend's per-peer counters
// and handshakes of each scrape's snapshot; nothing for other backends.
type wireGuardCollector struct {
	src                            Source
	handshake, rx, tx, handshaking *prometheus.Desc
}

func newWireGuardCollector(src Source) *wireGuardCollector {
	peer := []string{"peer"}
	return &wireGuardCollector{src: src,
		handshake:   prometheus.NewDesc("twill_wireguard_last_handshake_timestamp_seconds", "When the WireGuard session with the peer subnet was last set up; 0 before the first handshake.", peer, nil),
		rx:          prometheus.NewDesc("twill_wireguard_rx_bytes_total", "Bytes WireGuard received from the peer subnet's node (encrypted, with handshakes).", peer, nil),
		tx:          prometheus.NewDesc("twill_wireguard_tx_bytes_total", "Bytes WireGuard sent to the peer subnet's node (encrypted, with handshakes).", peer, nil),
		handshaking: prometheus.NewDesc("twill_wireguard_peer_handshaking", "1 if the peer handshook in the last 3 minutes or has been a peer for less, else 0 (which fails readiness).", peer, nil),
	}
}

func (c *wireGuardCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.handshake, c.rx, c.tx, c.handshaking} {
		ch <- d
	}
}

func (c *wireGuardCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.src.Snapshot()
	if snap.Node.BackendType != netconf.TypeWireGuard {
		return
	}
	for _, p := range snap.Backend.Peers {
		peer := p.Subnet.String()
		at, ok := 0.0, 1.0
		if !p.LastHandshake.IsZero() {
			at = float64(p.LastHandshake.UnixNano()) / 1e9
		}
		if p.HandshakeProblem != "" {
			ok = 0
		}
		ch <- prometheus.MustNewConstMetric(c.handshake, prometheus.GaugeValue, at, peer)
		ch <- prometheus.MustNewConstMetric(c.rx, prometheus.CounterValue, float64(p.RxBytes), peer)
		ch <- prometheus.MustNewConstMetric(c.tx, prometheus.CounterValue, float64(p.TxBytes), peer)
		ch <- prometheus.MustNewConstMetric(c.handshaking, prometheus.GaugeValue, ok, peer)
	}
}
