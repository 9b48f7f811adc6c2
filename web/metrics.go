package web

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// collector reads the counters from a fresh snapshot at every scrape, so a
// peer that left has no series any more.
type collector struct {
	src     Source
	version string

	txBytes, rxBytes, txPackets, rxPackets *prometheus.Desc
	dropped, leaseExpiry, peers, buildInfo *prometheus.Desc
}

func newCollector(src Source, version string) *collector {
	peer := []string{"peer"}
	return &collector{
		src: src, version: version,
		txBytes:     prometheus.NewDesc("twill_tunnel_tx_bytes_total", "Bytes sent through the tunnel to a peer subnet.", peer, nil),
		rxBytes:     prometheus.NewDesc("twill_tunnel_rx_bytes_total", "Bytes received through the tunnel from a peer subnet.", peer, nil),
		txPackets:   prometheus.NewDesc("twill_tunnel_tx_packets_total", "Packets sent through the tunnel to a peer subnet.", peer, nil),
		rxPackets:   prometheus.NewDesc("twill_tunnel_rx_packets_total", "Packets received through the tunnel from a peer subnet.", peer, nil),
		dropped:     prometheus.NewDesc("twill_tunnel_dropped_packets_total", "Packets dropped, by peer subnet (empty for drops that belong to no peer) and reason.", []string{"peer", "reason"}, nil),
		leaseExpiry: prometheus.NewDesc("twill_lease_expiry_timestamp_seconds", "When this node's subnet lease expires unless renewed (absent for a reservation).", []string{"subnet"}, nil),
		peers:       prometheus.NewDesc("twill_peers", "Number of peers the backend routes to.", nil, nil),
		buildInfo:   prometheus.NewDesc("twill_build_info", "twilld's version, Go version and backend; always 1.", []string{"version", "goversion", "backend"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.txBytes, c.rxBytes, c.txPackets, c.rxPackets, c.dropped, c.leaseExpiry, c.peers, c.buildInfo} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.src.Snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, p := range snap.Backend.Peers {
		peer := p.Subnet.String()
		counter(c.txBytes, p.TxBytes, peer)
		counter(c.rxBytes, p.RxBytes, peer)
		counter(c.txPackets, p.TxPackets, peer)
		counter(c.rxPackets, p.RxPackets, peer)
		for reason, n := range p.Drops {
			counter(c.dropped, n, peer, reason)
		}
	}
	for reason, n := range snap.Backend.Drops {
		counter(c.dropped, n, "", reason)
	}
	if l := snap.Lease; l.Subnet.IsValid() && !l.Reservation && !l.Expiration.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.leaseExpiry, prometheus.GaugeValue, float64(l.Expiration.UnixNano())/1e9, l.Subnet.String())
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(snap.Backend.Peers)))
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.version, runtime.Version(), snap.Node.BackendType)
}
