package bgp

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

func bgpLease(subnet, ip string, data string) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "bgp"}}
	if data != "" {
		l.Attrs.BackendData = json.RawMessage(data)
	}
	return l
}

// meshNeighbors: a full mesh without reflectors; with them, clients peer
// only with the reflectors, reflectors with everyone; other backends'
// leases and the own lease are no peers.
func TestMeshNeighbors(t *testing.T) {
	own := bgpLease("10.244.0.0/24", "192.168.56.11", "")
	peers := func(ls ...lease.Lease) routing.Planned {
		p := routing.Planned{Own: own, Peers: map[netip.Prefix]lease.Lease{}}
		for _, l := range ls {
			p.Peers[l.Subnet] = l
		}
		return p
	}
	n2 := bgpLease("10.244.2.0/24", "192.168.56.12", `{"ASN":65002}`)
	n3 := bgpLease("10.244.3.0/24", "192.168.56.13", "")
	rr4 := bgpLease("10.244.4.0/24", "192.168.56.14", `{"ASN":64512,"RouteReflector":"224.0.0.1"}`)
	vx := bgpLease("10.244.5.0/24", "192.168.56.15", "")
	vx.Attrs.BackendType = "vxlan"
	kinds := func(m map[netip.Addr]neighbor) map[string]string {
		out := map[string]string{}
		for a, n := range m {
			out[a.String()] = n.Kind
		}
		return out
	}
	self := netip.MustParseAddr("192.168.56.11")
	if got := meshNeighbors(peers(n2, n3, vx), self, 64512, ""); !reflect.DeepEqual(kinds(got), map[string]string{"192.168.56.12": "mesh", "192.168.56.13": "mesh"}) || got[netip.MustParseAddr("192.168.56.12")].ASN != 65002 || got[netip.MustParseAddr("192.168.56.13")].ASN != 64512 {
		t.Errorf("full mesh = %v", got)
	}
	// Of two nodes the lower address dials, the higher waits.
	if got := meshNeighbors(peers(n2), netip.MustParseAddr("192.168.56.13"), 64512, ""); !got[netip.MustParseAddr("192.168.56.12")].Passive {
		t.Errorf("192.168.56.13 dials 192.168.56.12: %+v", got)
	}
	if got := meshNeighbors(peers(n3), self, 64512, ""); got[netip.MustParseAddr("192.168.56.13")].Passive {
		t.Errorf("192.168.56.11 waits for 192.168.56.13: %+v", got)
	}
	if got := kinds(meshNeighbors(peers(n2, n3, rr4), self, 64512, "")); !reflect.DeepEqual(got, map[string]string{"192.168.56.14": "reflector"}) {
		t.Errorf("client with a reflector = %v", got)
	}
	if got := meshNeighbors(peers(n2, n3, rr4), self, 64512, "224.0.0.2"); !reflect.DeepEqual(kinds(got), map[string]string{"192.168.56.12": "client", "192.168.56.13": "client", "192.168.56.14": "mesh"}) || got[netip.MustParseAddr("192.168.56.12")].ClusterID != "224.0.0.2" {
		t.Errorf("reflector = %v", got)
	}
}

// checkPeers: an IPv6 peer and a --bgp-peer that Backend.Peers has are
// refused, named; distinct IPv4 peers pass.
func TestCheckPeers(t *testing.T) {
	p := func(a string, asn uint32) netconf.BGPPeer {
		return netconf.BGPPeer{Address: netip.MustParseAddr(a), ASN: asn}
	}
	if err := checkPeers([]netconf.BGPPeer{p("192.168.56.1", 64512)}, []netconf.BGPPeer{p("192.168.56.2", 65000)}); err != nil {
		t.Errorf("distinct peers: %v", err)
	}
	err := checkPeers([]netconf.BGPPeer{p("192.168.56.1", 64512), p("fd00::1", 65001)}, []netconf.BGPPeer{p("192.168.56.1", 65000)})
	for _, want := range []string{"Backend.Peers[1].Address = fd00::1: the speaker carries IPv4 only", "--bgp-peer=192.168.56.1:65000: duplicate peer: Backend.Peers[0]"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkPeers = %v, want %q", err, want)
		}
	}
}
