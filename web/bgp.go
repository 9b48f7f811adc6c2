package web

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

// bgpSessions is /api/v1/bgp from a snapshot.
func bgpSessions(snap status.Snapshot) api.BGPSessions {
	out := api.BGPSessions{Sessions: []api.BGPSession{}}
	for _, s := range snap.Backend.BGP {
		out.Sessions = append(out.Sessions, api.BGPSession{
			Peer: s.Peer.String(), ASN: s.ASN, Type: s.Type, State: s.State, Since: timeString(s.Since),
			PrefixesReceived: s.PrefixesReceived, PrefixesAdvertised: s.PrefixesAdvertised,
			Transitions: s.Transitions, LastError: s.LastError,
		})
	}
	return out
}

// bgpCollector exports the BGP sessions of each scrape's snapshot.
type bgpCollector struct {
	src                 Source
	up, received, flaps *prometheus.Desc
}

func newBGPCollector(src Source) *bgpCollector {
	peer := []string{"peer"}
	return &bgpCollector{src: src,
		up:       prometheus.NewDesc("twill_bgp_session_up", "1 if the BGP session with the peer is established, else 0.", peer, nil),
		received: prometheus.NewDesc("twill_bgp_prefixes_received", "Prefixes the peer advertised to this node.", peer, nil),
		flaps:    prometheus.NewDesc("twill_bgp_session_transitions_total", "State changes of the BGP session with the peer.", peer, nil),
	}
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.received
	ch <- c.flaps
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Snapshot().Backend.BGP {
		peer := s.Peer.String()
		up := 0.0
		if s.State == "Established" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, peer)
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.GaugeValue, float64(s.PrefixesReceived), peer)
		ch <- prometheus.MustNewConstMetric(c.flaps, prometheus.CounterValue, float64(s.Transitions), peer)
	}
}
