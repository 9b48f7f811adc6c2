package plan

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	goldenfile "github.com/twillnet/twill/internal/golden"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

var (
	network    = netip.MustParsePrefix("10.244.0.0/16")
	bigNetwork = netip.MustParsePrefix("10.128.0.0/9")
	segment    = netip.MustParsePrefix("192.168.56.0/24")
	bigSegment = netip.MustParsePrefix("172.16.0.0/16")
	network6   = netip.MustParsePrefix("fd00:10:244::/48")
	segment6   = netip.MustParsePrefix("fd00:56::/64")
)

// withV6 gives a lease its IPv6 half as a dual-stack node publishes it: the
// IPv6 subnet, the PublicIPv6 (none if ""), and for vxlan the IPv6 VTEP's
// data (MAC numbered 0x100+n, on the IPv6 device; over an IPv4 underlay,
// publicIPv6 "", the IPv4 device's MAC n).
func withV6(l lease.Lease, subnet6, publicIPv6 string, n int) lease.Lease {
	l.IPv6Subnet = netip.MustParsePrefix(subnet6)
	if publicIPv6 != "" {
		l.Attrs.PublicIPv6 = netip.MustParseAddr(publicIPv6)
	}
	if l.Attrs.BackendType == netconf.TypeVXLAN {
		m := mac(0x100 + n)
		if publicIPv6 == "" {
			m = mac(n)
		}
		l.Attrs.BackendV6Data = VXLANData(1, m)
	}
	if l.Attrs.BackendType == netconf.TypeWireGuard {
		l.Attrs.BackendV6Data = WireGuardData(wgKey(n)) // one key for both, as flannel's
	}
	return l
}

// v6Only drops a lease's IPv4 half, as an IPv6-only node publishes it.
func v6Only(l lease.Lease) lease.Lease {
	l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendData = netip.Prefix{}, netip.Addr{}, nil
	return l
}

// dualNode is node(typ, 10.244.n.0/24, 192.168.56.(11+n)) with the IPv6
// subnet fd00:10:244:n::/64 at fd00:56::(11+n).
func dualNode(typ string, n int) lease.Lease {
	return withV6(node(typ, fmt.Sprintf("10.244.%d.0/24", n), fmt.Sprintf("192.168.56.%d", 11+n), n),
		fmt.Sprintf("fd00:10:244:%x::/64", n), fmt.Sprintf("fd00:56::%d", 11+n), n)
}

// input6 is input with the own lease dual-stack (or IPv6-only with
// v6only), the IPv6 network and the IPv6 underlay prefix.
func input6(typ string, b netconf.Backend, v6only bool, peers ...lease.Lease) Input {
	in := input(typ, b, peers...)
	in.Own = dualNode(typ, 0)
	if v6only {
		in.Own = v6Only(in.Own)
	}
	in.Network6, in.SubnetLen6, in.Underlay.Prefix6 = network6, 64, segment6
	return in
}

// overIPv4 is in without an IPv6 underlay: the own lease publishes no
// PublicIPv6 and its IPv6 VTEP is the IPv4 device.
func overIPv4(in Input) Input {
	in.Own = withV6(node(in.Backend.Type, "10.244.0.0/24", "192.168.56.11", 0), "fd00:10:244::/64", "", 0)
	in.Underlay.Prefix6 = netip.Prefix{}
	return in
}

func backend(typ string) netconf.Backend {
	b := netconf.Backend{Type: typ}
	switch typ {
	case netconf.TypeUDP:
		b.Port, b.Offload, b.KernelPath = netconf.DefaultUDPPort, true, true
	case netconf.TypeVXLAN:
		b.Port, b.VNI = netconf.DefaultVXLANPort, netconf.DefaultVNI
	case netconf.TypeBGP:
		b.Port, b.BGP = 179, &netconf.BGP{ASN: 64512, NodeMesh: true, IPIP: netconf.IPIPNever, HoldTime: 90, ConnectRetry: 5, RestartTime: 120}
	case netconf.TypeWireGuard:
		b.Mode, b.ListenPort, b.ListenPortV6 = "separate", netconf.DefaultWireGuardPort, netconf.DefaultWireGuardPortV6
	}
	return b
}

func withIPIP(b netconf.Backend, mode string) netconf.Backend {
	g := *b.BGP
	g.IPIP = mode
	b.BGP = &g
	return b
}

// learned builds a learned route; from defaults to the next hop.
func learned(dst, nextHop string, from ...string) Learned {
	l := Learned{Dst: netip.MustParsePrefix(dst), NextHop: netip.MustParseAddr(nextHop)}
	l.From = l.NextHop
	if len(from) > 0 {
		l.From = netip.MustParseAddr(from[0])
	}
	return l
}

func withLearned(in Input, ls ...Learned) Input { in.Learned = ls; return in }

func directRouting(b netconf.Backend) netconf.Backend { b.DirectRouting = true; return b }

func mac(n int) net.HardwareAddr {
	return net.HardwareAddr{0x0a, 0x58, 0, byte(n >> 16), byte(n >> 8), byte(n)}
}

// node builds a lease as a node of backend type typ publishes it; n numbers
// its VTEP MAC.
func node(typ, subnet, publicIP string, n int) lease.Lease {
	l := lease.Lease{
		Subnet:   netip.MustParsePrefix(subnet),
		Attrs:    lease.Attrs{PublicIP: netip.MustParseAddr(publicIP), BackendType: typ},
		Revision: int64(100 + n),
	}
	if typ == netconf.TypeVXLAN {
		l.Attrs.BackendData = VXLANData(1, mac(n))
	}
	if typ == netconf.TypeWireGuard {
		l.Attrs.BackendData = WireGuardData(wgKey(n))
	}
	return l
}

// wgKey is a WireGuard public key numbered n: 32 bytes of n+1.
func wgKey(n int) string {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(n + 1)
	}
	return base64.StdEncoding.EncodeToString(k)
}

func withData(l lease.Lease, data string) lease.Lease {
	l.Attrs.BackendData = json.RawMessage(data)
	return l
}
func withType(l lease.Lease, typ string) lease.Lease { l.Attrs.BackendType = typ; return l }
func withRev(l lease.Lease, rev int64) lease.Lease   { l.Revision = rev; return l }

// withCreated sets the lease's create revision (and its last change to it).
func withCreated(l lease.Lease, rev int64) lease.Lease {
	l.Created, l.Revision = rev, rev
	return l
}

// anyLength is in with no SubnetLen: leases of every length inside the
// network are taken, and only their age decides between overlapping ones.
func anyLength(in Input) Input { in.SubnetLen = 0; return in }

func withMode(b netconf.Backend, mode string) netconf.Backend {
	b.Mode = mode
	return b
}

func input(typ string, b netconf.Backend, peers ...lease.Lease) Input {
	return Input{
		Network:   network,
		SubnetLen: 24,
		Backend:   b,
		Own:       node(typ, "10.244.0.0/24", "192.168.56.11", 0),
		Peers:     peers,
		Underlay:  Underlay{Device: "eth0", Prefix: segment, MTU: 1500},
	}
}

// peers3 are three peers on the segment.
func peers3(typ string) []lease.Lease {
	return []lease.Lease{
		node(typ, "10.244.3.0/24", "192.168.56.14", 3),
		node(typ, "10.244.1.0/24", "192.168.56.12", 1),
		node(typ, "10.244.2.0/24", "192.168.56.13", 2),
	}
}

// input1000 is a node of a 10.128.0.0/9 network with 1000 peers on one
// 172.16.0.0/16 segment: peer i (from 1) holds 10.128.0.0 + i*256 /24, public
// IP 172.16.0.0 + i + 1, VTEP MAC 0a:58:00 + i.
func input1000(typ string) Input {
	in := Input{
		Network:  bigNetwork,
		Backend:  backend(typ),
		Own:      node(typ, "10.128.0.0/24", "172.16.0.1", 0),
		Underlay: Underlay{Device: "eth0", Prefix: bigSegment, MTU: 1500},
	}
	for i := 1; i <= 1000; i++ {
		s := netip.AddrFrom4([4]byte{10, 128 + byte(i>>8), byte(i), 0})
		ip := netip.AddrFrom4([4]byte{172, 16, byte((i + 1) >> 8), byte(i + 1)})
		in.Peers = append(in.Peers, node(typ, netip.PrefixFrom(s, 24).String(), ip.String(), i))
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(in.Peers), func(i, j int) { in.Peers[i], in.Peers[j] = in.Peers[j], in.Peers[i] })
	return in
}

const input1000Text = "1000 peers generated by input1000 (plan_test.go), in shuffled order"

type step struct {
	label string
	in    Input
	// summary replaces the listing of the input's peers in the golden file.
	summary string
}

type golden struct {
	name, about string
	steps       []step
}

func goldenCases() []golden {
	var cases []golden
	for _, typ := range []string{netconf.TypeUDP, netconf.TypeVXLAN, netconf.TypeHostGW, netconf.TypeIPIP, netconf.TypeWireGuard} {
		p3 := peers3(typ)
		cases = append(cases,
			golden{typ + "-0-peers", "a node alone", []step{{in: input(typ, backend(typ))}}},
			golden{typ + "-1-peer", "one peer; the own lease is listed among the peers and skipped",
				[]step{{in: input(typ, backend(typ), p3[1], node(typ, "10.244.0.0/24", "192.168.56.11", 0))}}},
			golden{typ + "-3-peers", "three peers on the segment, listed out of order", []step{{in: input(typ, backend(typ), p3...)}}},
			golden{typ + "-1000-peers", "1000 peers on one segment", []step{{in: input1000(typ), summary: input1000Text}}},
			golden{typ + "-peer-changes-ip", "peer 10.244.2.0/24 moves from 192.168.56.13 to 192.168.56.23", []step{
				{label: "before", in: input(typ, backend(typ), p3...)},
				{label: "after", in: input(typ, backend(typ), p3[0], p3[1], withRev(node(typ, "10.244.2.0/24", "192.168.56.23", 2), 200))},
			}},
			golden{typ + "-peer-leaves", "peer 10.244.3.0/24 leaves", []step{
				{label: "before", in: input(typ, backend(typ), p3...)},
				{label: "after", in: input(typ, backend(typ), p3[1], p3[2])},
			}},
			golden{typ + "-dual-lease", "one node (192.168.56.12, one VTEP MAC) holds two subnets: both are routed", []step{{in: input(typ, backend(typ),
				node(typ, "10.244.1.0/24", "192.168.56.12", 1), withRev(node(typ, "10.244.7.0/24", "192.168.56.12", 1), 300),
				node(typ, "10.244.2.0/24", "192.168.56.13", 2))}}},
			golden{typ + "-foreign-peers", "peers this node cannot use: another backend, off the network, overlapping, duplicate, own public IP", []step{{in: input(typ, backend(typ),
				p3[0],
				withType(node(typ, "10.244.4.0/24", "192.168.56.15", 4), "other"),
				node(typ, "10.245.0.0/24", "192.168.56.16", 5),
				node(typ, "10.244.0.0/23", "192.168.56.17", 6),
				withRev(node(typ, "10.244.3.0/24", "192.168.56.18", 7), 50),
				node(typ, "10.244.8.0/24", "192.168.56.11", 8),
				node(typ, "10.244.9.0/24", "192.168.56.19", 9))}}},
		)
	}
	vx, udp, bg, wg := netconf.TypeVXLAN, netconf.TypeUDP, netconf.TypeBGP, netconf.TypeWireGuard
	// flannelUDP is the lease flannel's udp backend writes: no BackendType,
	// no BackendData ({"PublicIP":"192.168.56.12","PublicIPv6":null}).
	flannelUDP := withType(node(udp, "10.244.1.0/24", "192.168.56.12", 1), "")
	cases = append(cases,
		golden{"udp-flannel-lease", "flannel's udp lease has no BackendType: it is a udp lease", []step{{in: input(udp, backend(udp),
			flannelUDP, node(udp, "10.244.2.0/24", "192.168.56.13", 2))}}},
		golden{"vxlan-flannel-udp-lease", "a vxlan node sees flannel's udp lease as a udp lease, not its own type", []step{{in: input(vx, backend(vx),
			flannelUDP, node(vx, "10.244.2.0/24", "192.168.56.13", 2))}}},
		golden{"vxlan-supernet-lease", "a /19 key where SubnetLen is 24, older or newer than the peers inside it, is refused; the peers stay routed", []step{{in: input(vx, backend(vx),
			withCreated(node(vx, "10.244.96.0/19", "192.168.56.66", 6), 50),
			withCreated(node(vx, "10.244.97.0/24", "192.168.56.12", 1), 100),
			withCreated(node(vx, "10.244.100.0/24", "192.168.56.13", 2), 101),
			withCreated(node(vx, "10.244.0.0/20", "192.168.56.67", 7), 400))}}},
		golden{"vxlan-overlap-oldest-wins", "without SubnetLen, the oldest of overlapping leases wins: a newer supernet loses to the peers inside it, an older one wins over a newer lease inside it", []step{{in: anyLength(input(vx, backend(vx),
			withCreated(node(vx, "10.244.96.0/19", "192.168.56.66", 6), 300),
			withCreated(node(vx, "10.244.97.0/24", "192.168.56.12", 1), 100),
			withCreated(node(vx, "10.244.98.0/24", "192.168.56.13", 2), 101),
			withCreated(node(vx, "10.244.16.0/20", "192.168.56.14", 3), 102),
			withCreated(node(vx, "10.244.17.0/24", "192.168.56.67", 7), 400)))}}},
		golden{"vxlan-direct-routing", "DirectRouting: peers on 192.168.56.0/24 are routed via eth0, the one behind a router is tunnelled", []step{{in: input(vx, directRouting(backend(vx)),
			node(vx, "10.244.1.0/24", "192.168.56.12", 1), node(vx, "10.244.2.0/24", "192.168.56.13", 2), node(vx, "10.244.3.0/24", "10.0.9.14", 3))}}},
		golden{"ipip-direct-routing", "DirectRouting: peers on 192.168.56.0/24 are routed via eth0, the one behind a router is tunnelled", []step{{in: input(netconf.TypeIPIP, directRouting(backend(netconf.TypeIPIP)),
			node(netconf.TypeIPIP, "10.244.1.0/24", "192.168.56.12", 1), node(netconf.TypeIPIP, "10.244.3.0/24", "10.0.9.14", 3))}}},
		golden{"ipvlan-l3", "ipvlan l3 routes peers' slices via their public IPs, as host-gw; a peer behind a router is a problem", []step{{in: input(netconf.TypeIPvlan, withMode(backend(netconf.TypeIPvlan), "l3"),
			node(netconf.TypeIPvlan, "10.244.1.0/24", "192.168.56.12", 1), node(netconf.TypeIPvlan, "10.244.2.0/24", "10.0.9.13", 2))}}},
		golden{"ipvlan-l2", "ipvlan l2 (and macvlan) pods answer ARP on the segment: no routes", []step{{in: input(netconf.TypeIPvlan, withMode(backend(netconf.TypeIPvlan), "l2"),
			node(netconf.TypeIPvlan, "10.244.1.0/24", "192.168.56.12", 1))}}},
		golden{"host-gw-off-segment", "host-gw peers behind a router cannot be reached: a problem each, no route", []step{{in: input(netconf.TypeHostGW, backend(netconf.TypeHostGW),
			node(netconf.TypeHostGW, "10.244.1.0/24", "192.168.56.12", 1), node(netconf.TypeHostGW, "10.244.2.0/24", "10.0.9.13", 2), node(netconf.TypeHostGW, "10.244.3.0/24", "192.168.57.14", 3))}}},
		golden{"vxlan-bad-backend-data", "vxlan peers with missing or unusable BackendData are problems, not crashes", []step{{in: input(vx, backend(vx),
			node(vx, "10.244.1.0/24", "192.168.56.12", 1),
			withData(node(vx, "10.244.2.0/24", "192.168.56.13", 2), ``),
			withData(node(vx, "10.244.3.0/24", "192.168.56.14", 3), `{"VNI":1}`),
			withData(node(vx, "10.244.4.0/24", "192.168.56.15", 4), `{"VNI":1,"VtepMAC":"not-a-mac"}`),
			withData(node(vx, "10.244.5.0/24", "192.168.56.16", 5), `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`),
			withData(node(vx, "10.244.6.0/24", "192.168.56.17", 6), `{"VNI":2,"VtepMAC":"0a:58:00:00:00:06"}`),
			withData(node(vx, "10.244.7.0/24", "192.168.56.18", 7), `[1,2]`),
			withData(node(vx, "10.244.8.0/24", "192.168.56.19", 8), `{"VtepMAC":"0a:58:00:00:00:08"}`))}}},
		golden{"wireguard-bad-backend-data", "wireguard peers whose BackendData has no usable PublicKey are skipped, naming the value", []step{{in: input(wg, backend(wg),
			node(wg, "10.244.1.0/24", "192.168.56.12", 1),
			withData(node(wg, "10.244.2.0/24", "192.168.56.13", 2), ``),
			withData(node(wg, "10.244.3.0/24", "192.168.56.14", 3), `{"VtepMAC":"0a:58:00:00:00:03"}`),
			withData(node(wg, "10.244.4.0/24", "192.168.56.15", 4), `{"PublicKey":"not a key"}`),
			withData(node(wg, "10.244.5.0/24", "192.168.56.16", 5), `{"PublicKey":"c2hvcnQ="}`),
			withData(node(wg, "10.244.6.0/24", "192.168.56.17", 6), `{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`),
			withData(node(wg, "10.244.7.0/24", "192.168.56.18", 7), `[1,2]`))}}},
		golden{"wireguard-key-changes", "peer 10.244.2.0/24 regenerates its key: the plan carries the new key only", []step{
			{label: "before", in: input(wg, backend(wg), node(wg, "10.244.1.0/24", "192.168.56.12", 1), node(wg, "10.244.2.0/24", "192.168.56.13", 2))},
			{label: "after", in: input(wg, backend(wg), node(wg, "10.244.1.0/24", "192.168.56.12", 1), withRev(node(wg, "10.244.2.0/24", "192.168.56.13", 22), 300))},
		}},
		golden{"wireguard-flannel-lease", "flannel's wireguard lease (BackendType wireguard, BackendData {\"PublicKey\":...}) off the segment is tunnelled like any", []step{{in: input(wg, backend(wg),
			withData(node(wg, "10.244.1.0/24", "10.0.9.12", 1), `{"PublicKey":"aGVsbG8gd2lyZWd1YXJkIGZsYW5uZWwgcGVlciBrZXk="}`))}}},
		golden{"vxlan-vtep-conflict", "two nodes publish one VTEP MAC: the newer lease (10.244.2.0/24, revision 500) wins", []step{{in: input(vx, backend(vx),
			node(vx, "10.244.1.0/24", "192.168.56.12", 1), withRev(node(vx, "10.244.2.0/24", "192.168.56.13", 1), 500))}}},
		golden{"bgp-0-peers", "a bgp node alone: only the blackhole for its own subnet", []step{{in: input(bg, backend(bg))}}},
		golden{"bgp-mesh", "three mesh peers: the learned routes are routed via their next hops, listed out of order; the leases give the node names", []step{{in: withLearned(input(bg, backend(bg), peers3(bg)...),
			learned("10.244.3.0/24", "192.168.56.14"), learned("10.244.1.0/24", "192.168.56.12"), learned("10.244.2.0/24", "192.168.56.13"))}}},
		golden{"bgp-peer-leaves", "peer 10.244.3.0/24 is withdrawn: its route goes, whatever the leases say", []step{
			{label: "before", in: withLearned(input(bg, backend(bg), peers3(bg)...), learned("10.244.1.0/24", "192.168.56.12"), learned("10.244.3.0/24", "192.168.56.14"))},
			{label: "after", in: withLearned(input(bg, backend(bg), peers3(bg)...), learned("10.244.1.0/24", "192.168.56.12"))},
		}},
		golden{"bgp-gateway", "gateway BGP: a router (192.168.56.1) advertises the pod subnets of nodes in other L3 subnets and a default route; the default is not twill's", []step{{in: withLearned(input(bg, backend(bg)),
			learned("10.244.1.0/24", "192.168.56.1"), learned("10.244.2.0/24", "192.168.56.1"), learned("0.0.0.0/0", "192.168.56.1"), learned("192.168.57.0/24", "192.168.56.1"))}}},
		golden{"bgp-bad-learned", "learned routes that cannot be installed: inside the own subnet, a second path to one subnet, a next hop off the segment (IPIP Never), this node as next hop; an aggregate over the own subnet is routed (the blackhole is more specific)", []step{{in: withLearned(input(bg, backend(bg)),
			learned("10.244.0.128/25", "192.168.56.12"), learned("10.244.4.0/24", "192.168.56.15"), learned("10.244.4.0/24", "192.168.56.16", "192.168.56.17"),
			learned("10.244.5.0/24", "10.0.9.14", "192.168.56.1"), learned("10.244.6.0/24", "192.168.56.11", "192.168.56.12"), learned("10.244.0.0/16", "192.168.56.1"))}}},
		golden{"bgp-ipip-crosssubnet", "IPIP CrossSubnet: a next hop on the segment is direct, one behind a router goes through twill.ipip; MTU 1480", []step{{in: withLearned(input(bg, withIPIP(backend(bg), netconf.IPIPCrossSubnet)),
			learned("10.244.1.0/24", "192.168.56.12"), learned("10.244.2.0/24", "10.0.9.13", "192.168.56.1"))}}},
		golden{"bgp-ipip-always", "IPIP Always: every learned route goes through twill.ipip", []step{{in: withLearned(input(bg, withIPIP(backend(bg), netconf.IPIPAlways)),
			learned("10.244.1.0/24", "192.168.56.12"), learned("10.244.2.0/24", "10.0.9.13", "192.168.56.1"))}}},
		golden{"vxlan-dual-stack", "dual stack, flannel's way: IPv4 on twill.1, IPv6 on twill-v6.1 to the peers' PublicIPv6 with their BackendV6Data MACs; MTU 1430 (IPv6 outer header); a v4-only peer, an IPv6-only peer, a peer with bad BackendV6Data, one outside the IPv6 network and one of another IPv6SubnetLen", []step{{in: input6(vx, backend(vx), false,
			dualNode(vx, 3), dualNode(vx, 1), dualNode(vx, 2),
			node(vx, "10.244.4.0/24", "192.168.56.15", 4),
			v6Only(dualNode(vx, 5)),
			func() lease.Lease {
				l := dualNode(vx, 6)
				l.Attrs.BackendV6Data = json.RawMessage(`{"VNI":1}`)
				return l
			}(),
			withV6(node(vx, "10.244.7.0/24", "192.168.56.18", 7), "fd00:99::/64", "fd00:56::18", 7),
			withV6(node(vx, "10.244.8.0/24", "192.168.56.19", 8), "fd00:10:244:8::/80", "fd00:56::19", 8))}}},
		golden{"vxlan-dual-stack-peer-leaves", "a dual-stack peer leaves: both halves go", []step{
			{label: "before", in: input6(vx, backend(vx), false, dualNode(vx, 1), dualNode(vx, 2))},
			{label: "after", in: input6(vx, backend(vx), false, dualNode(vx, 1))},
		}},
		golden{"vxlan-ipv6-only", "an IPv6-only cluster: no IPv4 state at all; a peer without PublicIPv6 is a problem", []step{{in: input6(vx, backend(vx), true,
			v6Only(dualNode(vx, 1)), v6Only(dualNode(vx, 2)),
			v6Only(withV6(node(vx, "10.244.3.0/24", "192.168.56.14", 3), "fd00:10:244:3::/64", "", 3)))}}},
		golden{"vxlan-ipv6-over-ipv4", "no IPv6 underlay: IPv6 pod routes and neighbours go on twill.1, to the peers' IPv4 VTEPs (one FDB entry per peer serves both families); MTU 1450; a peer that publishes PublicIPv6 (its VTEP is on the IPv6 underlay) is a problem", []step{{in: overIPv4(input6(vx, backend(vx), false,
			withV6(node(vx, "10.244.1.0/24", "192.168.56.12", 1), "fd00:10:244:1::/64", "", 1),
			withV6(node(vx, "10.244.2.0/24", "192.168.56.13", 2), "fd00:10:244:2::/64", "", 2),
			dualNode(vx, 3)))}}},
		golden{"vxlan-dual-stack-direct-routing", "DirectRouting in both families: peers on 192.168.56.0/24 and fd00:56::/64 are routed via eth0, the one behind routers is tunnelled in both", []step{{in: input6(vx, directRouting(backend(vx)), false,
			dualNode(vx, 1),
			withV6(node(vx, "10.244.3.0/24", "10.0.9.14", 3), "fd00:10:244:3::/64", "fd00:9::14", 3))}}},
		golden{"host-gw-dual-stack", "host-gw in both families: IPv6 routes via the peers' PublicIPv6 on eth0; a peer off the IPv6 segment is a problem in IPv6 only", []step{{in: input6(netconf.TypeHostGW, backend(netconf.TypeHostGW), false,
			dualNode(netconf.TypeHostGW, 2), dualNode(netconf.TypeHostGW, 1),
			withV6(node(netconf.TypeHostGW, "10.244.3.0/24", "192.168.56.14", 3), "fd00:10:244:3::/64", "fd00:9::14", 3))}}},
		golden{"host-gw-ipv6-only", "host-gw in an IPv6-only cluster", []step{{in: input6(netconf.TypeHostGW, backend(netconf.TypeHostGW), true,
			v6Only(dualNode(netconf.TypeHostGW, 1)), v6Only(dualNode(netconf.TypeHostGW, 2)))}}},
		golden{"wireguard-dual-stack-separate", "Mode separate, flannel's way: IPv4 subnets on twill-wg at the peers' PublicIP, IPv6 subnets on twill-wg-v6 at their PublicIPv6, keys from BackendData and BackendV6Data; MTU 1420 (IPv6 outer header); a v4-only peer, an IPv6-only peer, a peer without PublicIPv6 and one whose BackendV6Data has no key", []step{{in: input6(wg, backend(wg), false,
			dualNode(wg, 2), dualNode(wg, 1),
			node(wg, "10.244.3.0/24", "192.168.56.14", 3),
			v6Only(dualNode(wg, 4)),
			withV6(node(wg, "10.244.5.0/24", "192.168.56.16", 5), "fd00:10:244:5::/64", "", 5),
			func() lease.Lease {
				l := dualNode(wg, 6)
				l.Attrs.BackendV6Data = json.RawMessage(`{"VtepMAC":"0a:58:00:00:00:06"}`)
				return l
			}())}}},
		golden{"wireguard-dual-stack-auto", "Mode auto: both families on twill-wg, each peer at one endpoint by what the underlay has (private IPv4 and ULA IPv6: the PublicIP; a public IPv4 peer at it; an IPv6-only peer and one with only PublicIPv6 at that); MTU 1420", []step{{in: input6(wg, withMode(backend(wg), "auto"), false,
			dualNode(wg, 1),
			withV6(node(wg, "10.244.2.0/24", "198.51.100.13", 2), "fd00:10:244:2::/64", "fd00:56::13", 2),
			v6Only(dualNode(wg, 3)),
			func() lease.Lease {
				l := dualNode(wg, 4)
				l.Attrs.PublicIP = netip.Addr{}
				return l
			}(),
			node(wg, "10.244.5.0/24", "192.168.56.16", 5))}}},
		golden{"wireguard-dual-stack-auto-2001", "Mode auto between nodes with private IPv4 and global IPv6 (2001:db8::/64): the peers are reached at their PublicIPv6", []step{{in: func() Input {
			in := input6(wg, withMode(backend(wg), "auto"), false, withV6(node(wg, "10.244.1.0/24", "192.168.56.12", 1), "fd00:10:244:1::/64", "2001:db8::12", 1))
			in.Own.Attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::11")
			in.Underlay.Prefix6 = netip.MustParsePrefix("2001:db8::/64")
			return in
		}()}}},
		golden{"wireguard-dual-stack-ipv4", "Mode ipv4: both families on twill-wg, every peer at its PublicIP; MTU 1440 (IPv4 outer header)", []step{{in: input6(wg, withMode(backend(wg), "ipv4"), false,
			dualNode(wg, 1), dualNode(wg, 2), v6Only(dualNode(wg, 3)))}}},
		golden{"wireguard-dual-stack-ipv6", "Mode ipv6: both families on twill-wg, every peer at its PublicIPv6 (a peer without one is a problem in both families); MTU 1420", []step{{in: input6(wg, withMode(backend(wg), "ipv6"), false,
			dualNode(wg, 1), dualNode(wg, 2), withV6(node(wg, "10.244.3.0/24", "192.168.56.14", 3), "fd00:10:244:3::/64", "", 3))}}},
		golden{"wireguard-ipv6-only", "Mode separate in an IPv6-only cluster: the IPv6 subnets on twill-wg-v6", []step{{in: input6(wg, backend(wg), true,
			v6Only(dualNode(wg, 1)), v6Only(dualNode(wg, 2)))}}},
		golden{"vxlan-mtu-override", "Backend.MTU overrides the underlay arithmetic; the device is named by Input.Device", []step{{in: func() Input {
			b := backend(vx)
			b.MTU = 1400
			in := input(vx, b, node(vx, "10.244.1.0/24", "192.168.56.12", 1))
			in.Device = "vx-test"
			return in
		}()}}},
	)
	return cases
}

func renderInput(sb *strings.Builder, s step) {
	in := s.in
	bj, _ := json.Marshal(in.Backend)
	fmt.Fprintf(sb, "backend %s\nnetwork %s subnet-len %d\n", bj, in.Network, in.SubnetLen)
	if in.Network6.IsValid() {
		fmt.Fprintf(sb, "network6 %s subnet-len6 %d\n", in.Network6, in.SubnetLen6)
	}
	fmt.Fprintf(sb, "underlay dev %s prefix %s mtu %d", in.Underlay.Device, in.Underlay.Prefix, in.Underlay.MTU)
	if in.Underlay.Prefix6.IsValid() {
		fmt.Fprintf(sb, " prefix6 %s", in.Underlay.Prefix6)
	}
	sb.WriteString("\n")
	lines := func(kind string, l lease.Lease) {
		fmt.Fprintf(sb, "%s %s public %s type %q rev %d", kind, l.Subnet, l.Attrs.PublicIP, l.Attrs.BackendType, l.Revision)
		if l.Created != 0 {
			fmt.Fprintf(sb, " created %d", l.Created)
		}
		if len(l.Attrs.BackendData) > 0 {
			fmt.Fprintf(sb, " data %s", l.Attrs.BackendData)
		}
		if l.IPv6Subnet.IsValid() {
			fmt.Fprintf(sb, " subnet6 %s public6 %s", l.IPv6Subnet, l.Attrs.PublicIPv6)
		}
		if len(l.Attrs.BackendV6Data) > 0 {
			fmt.Fprintf(sb, " data6 %s", l.Attrs.BackendV6Data)
		}
		sb.WriteString("\n")
	}
	lines("own", in.Own)
	if s.summary != "" {
		sb.WriteString("peers: " + s.summary + "\n")
		return
	}
	for _, l := range in.Peers {
		lines("lease", l)
	}
	for _, l := range in.Learned {
		sb.WriteString(l.String() + "\n")
	}
}

func TestGolden(t *testing.T) {
	files := goldenfile.New(t)
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			var sb strings.Builder
			fmt.Fprintf(&sb, "# %s\n", c.about)
			for _, s := range c.steps {
				p, err := Build(s.in)
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				if s.label != "" {
					fmt.Fprintf(&sb, "\n## %s\n", s.label)
				}
				sb.WriteString("\n-- input --\n")
				renderInput(&sb, s)
				sb.WriteString("-- plan --\n")
				sb.WriteString(p.String())
			}
			files.Check(t, c.name, sb.String())
		})
	}
}

// TestDeterministic: the order of the peer leases does not change the plan.
func TestDeterministic(t *testing.T) {
	for _, c := range goldenCases() {
		for _, s := range c.steps {
			want, err := Build(s.in)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(7, 8))
			for range 3 {
				in := s.in
				in.Peers = slices.Clone(in.Peers)
				r.Shuffle(len(in.Peers), func(i, j int) { in.Peers[i], in.Peers[j] = in.Peers[j], in.Peers[i] })
				got, err := Build(in)
				if err != nil {
					t.Fatal(err)
				}
				if got.String() != want.String() {
					t.Fatalf("%s: plan depends on the order of the leases:\n%s", c.name, goldenfile.LineDiff(want.String(), got.String()))
				}
			}
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	vx := netconf.TypeVXLAN
	noUnderlay := input(netconf.TypeHostGW, backend(netconf.TypeHostGW))
	noUnderlay.Underlay = Underlay{}
	noDevice := input(netconf.TypeVXLAN, directRouting(backend(netconf.TypeVXLAN)))
	noDevice.Underlay.Device = ""
	noNetwork := input(netconf.TypeUDP, backend(netconf.TypeUDP))
	noNetwork.Network = netip.Prefix{}
	noOwn := input(netconf.TypeVXLAN, backend(netconf.TypeVXLAN))
	noOwn.Own.Subnet = netip.MustParsePrefix("10.244.0.1/24")
	for name, tc := range map[string]struct {
		in   Input
		want error
	}{
		"host-gw without underlay prefix":                  {noUnderlay, ErrUnderlay},
		"direct routing without device":                    {noDevice, ErrUnderlay},
		"udp without network":                              {noNetwork, nil},
		"own subnet with host bits":                        {noOwn, ErrOwnLease},
		"unknown backend":                                  {input("geneve", backend("geneve")), ErrBackend},
		"bgp without underlay":                             {func() Input { in := input("bgp", backend("bgp")); in.Underlay = Underlay{}; return in }(), ErrUnderlay},
		"udp with IPv6":                                    {input6(netconf.TypeUDP, backend(netconf.TypeUDP), false), ErrIPv6},
		"ipip with IPv6":                                   {input6(netconf.TypeIPIP, backend(netconf.TypeIPIP), false), ErrIPv6},
		"wireguard separate IPv6 without an IPv6 underlay": {overIPv4(input6(netconf.TypeWireGuard, backend(netconf.TypeWireGuard), false)), ErrUnderlay},
		"wireguard ipv6 without an IPv6 underlay":          {overIPv4(input6(netconf.TypeWireGuard, withMode(backend(netconf.TypeWireGuard), "ipv6"), false)), ErrUnderlay},
		"bgp with IPv6":                                    {input6(netconf.TypeBGP, backend(netconf.TypeBGP), false), ErrIPv6},
		"macvlan with IPv6":                                {input6(netconf.TypeMacvlan, backend(netconf.TypeMacvlan), false), ErrIPv6},
		"host-gw IPv6 without an IPv6 underlay":            {overIPv4(input6(netconf.TypeHostGW, backend(netconf.TypeHostGW), false)), ErrUnderlay},
		"no subnet at all":                                 {func() Input { in := input(vx, backend(vx)); in.Own.Subnet = netip.Prefix{}; return in }(), ErrOwnLease},
		"IPv6 subnet with host bits": {func() Input {
			in := input6(vx, backend(vx), false)
			in.Own.IPv6Subnet = netip.MustParsePrefix("fd00:10:244::1/64")
			return in
		}(), ErrOwnLease},
	} {
		_, err := Build(tc.in)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: Build gave %v, want %v", name, err, tc.want)
		}
	}
	// The sublink backends (macvlan, ipvlan) have no per-peer kernel state.
	p, err := Build(input(netconf.TypeMacvlan, backend(netconf.TypeMacvlan), node(netconf.TypeMacvlan, "10.244.1.0/24", "192.168.56.12", 1)))
	if err != nil || len(p.Routes)+len(p.Neighbors)+len(p.FDB) != 0 {
		t.Errorf("macvlan plan = %v, %v; want empty", p, err)
	}
}

func TestMTU(t *testing.T) {
	for _, tc := range []struct {
		typ      string
		override int
		underlay int
		want     int
	}{
		{netconf.TypeUDP, 0, 1500, 1472},
		{netconf.TypeVXLAN, 0, 1500, 1450},
		{netconf.TypeIPIP, 0, 1500, 1480},
		{netconf.TypeWireGuard, 0, 1500, 1440},
		{netconf.TypeHostGW, 0, 1500, 1500},
		{netconf.TypeVXLAN, 0, 9000, 8950},
		{netconf.TypeVXLAN, 1400, 1500, 1400},
		{netconf.TypeVXLAN, 0, 0, 0},
	} {
		b := backend(tc.typ)
		b.MTU = tc.override
		if got := MTU(b, tc.underlay); got != tc.want {
			t.Errorf("MTU(%s, MTU=%d, underlay %d) = %d, want %d", tc.typ, tc.override, tc.underlay, got, tc.want)
		}
	}
}

func TestVXLANDataRoundTrip(t *testing.T) {
	vni, m, err := ParseVXLANData(VXLANData(7, mac(0x123456)))
	if err != nil || vni != 7 || m.String() != "0a:58:00:12:34:56" {
		t.Fatalf("ParseVXLANData(VXLANData(7, ...)) = %d, %s, %v", vni, m, err)
	}
	// flannel's own form parses.
	vni, m, err = ParseVXLANData(json.RawMessage(`{"VNI":1,"VtepMAC":"b6:7a:1c:2d:3e:4f"}`))
	if err != nil || vni != 1 || m.String() != "b6:7a:1c:2d:3e:4f" {
		t.Fatalf("flannel BackendData: %d, %s, %v", vni, m, err)
	}
}
