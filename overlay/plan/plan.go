// Package plan turns leases into the kernel state a node's data path needs:
// from this node's lease, its peers' leases and the backend's options it
// computes the routes, permanent neighbour entries and VXLAN FDB entries to
// install, the peer table a userspace backend needs, and the problems found
// with peers that cannot be routed (wrong backend, bad VTEP MAC, host-gw peer
// off the L2 segment, ...).
//
// It is a pure function of its input: it must not do I/O, must not import
// netlink, and must give the same, sorted output for the same input, so that
// plans can be compared, diffed and checked in as golden files. Applying a
// plan to the kernel is overlay/kernel's job.
//
// The state follows flannel's data path per backend:
//
//	udp      one route for the cluster network to the TUN twill0; the peer
//	         table (subnet -> public IP) lives in the userspace backend
//	vxlan    peerSubnet via peerSubnet.0 dev twill.<VNI> onlink,
//	         neighbour peerSubnet.0 -> VtepMAC, FDB VtepMAC -> public IP
//	host-gw  peerSubnet via peerPublicIP dev <underlay>, same L2 segment only
//	ipip     peerSubnet via peerPublicIP dev twill.ipip onlink
//	bgp      blackhole ownSubnet; each learned route (Input.Learned) via its
//	         next hop dev <underlay>, or dev twill.ipip onlink with IPIP
//	         Always, or CrossSubnet and a next hop off the segment
//	wireguard peerSubnet dev twill-wg; the peer (public key from the
//	         lease's BackendData, endpoint peerPublicIP:ListenPort, allowed
//	         IPs peerSubnet) lives in the WireGuard device, set by the backend
//	         (flannel routes the whole network to flannel-wg instead; a
//	         route per peer lets a peer that goes take its route along).
//	         With IPv6, by Backend.Mode: separate puts the IPv6 subnets on
//	         twill-wg-v6 to the peers' PublicIPv6 (flannel-wg-v6); auto,
//	         ipv4 and ipv6 keep both families on twill-wg, each peer at one
//	         endpoint (auto: chosen by what the underlay has, ipv4: its
//	         PublicIP, ipv6: its PublicIPv6)
//
// With DirectRouting (vxlan, ipip), a peer on this node's L2 segment is routed
// as host-gw does, without tunnel state.
//
// Several leases with one public IP (a node that holds two subnets, e.g. an
// old lease not yet expired next to a new one) all get routes, as flannel
// does: the leases are the truth and both subnets lead to that node. Their
// shared FDB entry appears once. A lease that publishes this node's own
// public IP for another subnet is reported and not routed: a route via
// ourselves would loop.
package plan

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Device names of the backends, as flannel names them with "flannel" replaced.
const (
	UDPDevice       = "twill0"
	IPIPDevice      = "twill.ipip"
	WireGuardDevice = "twill-wg"
	// WireGuardDevice6 is wireguard's IPv6 device in Mode separate
	// (flannel's flannel-wg-v6).
	WireGuardDevice6 = "twill-wg-v6"
)

// VXLANDevice is the name of the VXLAN device for a VNI: twill.<VNI>.
func VXLANDevice(vni int) string { return "twill." + strconv.Itoa(vni) }

// DeviceName is the backend's own device, or "" for a backend without one
// (host-gw, and the sublink backends).
func DeviceName(b netconf.Backend) string {
	switch b.Type {
	case netconf.TypeUDP:
		return UDPDevice
	case netconf.TypeVXLAN:
		return VXLANDevice(b.VNI)
	case netconf.TypeIPIP:
		return IPIPDevice
	case netconf.TypeWireGuard:
		return WireGuardDevice
	}
	return ""
}

// Input is everything a plan depends on.
type Input struct {
	// Network is the cluster network. The udp backend routes it to its TUN;
	// a peer subnet outside it is a problem. Required for udp.
	Network netip.Prefix
	// Backend is the backend type and options of the network config.
	Backend netconf.Backend
	// Own is this node's lease. It never produces a route.
	Own lease.Lease
	// Peers are the other leases, in any order. The own lease may be among
	// them; it is skipped.
	Peers []lease.Lease
	// SubnetLen is the network's SubnetLen: a peer lease of another prefix
	// length is refused. 0 accepts any length inside Network.
	SubnetLen int
	// Network6 and SubnetLen6 are the same for the IPv6 pod network
	// (IPv6Network, IPv6SubnetLen), used when the own lease has an IPv6
	// subnet.
	Network6   netip.Prefix
	SubnetLen6 int
	// Underlay is this node's underlay interface.
	Underlay Underlay
	// Device overrides the backend device's name (DeviceName by default).
	Device string
	// Learned are the routes a BGP speaker learned (bgp only): the bgp
	// plan routes these, not the leases.
	Learned []Learned
}

// Underlay describes this node's underlay interface: where its public IP
// lives and which L2 segment it is on.
type Underlay struct {
	// Device is the interface's name (eth0). Routes to peers on the segment
	// (host-gw, DirectRouting) leave through it.
	Device string
	// PublicIP is this node's underlay address; the own lease's PublicIP when
	// zero.
	PublicIP netip.Addr
	// Prefix is the interface's connected prefix (192.168.56.0/24): a peer
	// whose public IP is in it is on the same L2 segment.
	Prefix netip.Prefix
	// PublicIPv6 and Prefix6 are the same for the interface's IPv6 address
	// (the own lease's PublicIPv6 when zero): IPv6 routes of host-gw and
	// DirectRouting go via peers' PublicIPv6 in Prefix6, and vxlan's IPv6
	// device has it as its VTEP address. Without one, vxlan carries IPv6
	// over the IPv4 underlay and host-gw cannot carry IPv6.
	PublicIPv6 netip.Addr
	Prefix6    netip.Prefix
	// MTU is the interface's MTU; 0 when not known (the plan's MTU is then 0
	// unless the backend sets one).
	MTU int
}

// Route is a route in the main table.
type Route struct {
	Dst netip.Prefix
	// Gateway is the next hop; zero for a route to a device (scope link).
	Gateway netip.Addr
	// Device is the outgoing interface's name.
	Device string
	// OnLink tells the kernel the gateway is reachable on Device even though
	// no address of Device covers it.
	OnLink bool
	// MTU is the route's MTU; 0 for the device's. Twill's plans leave it 0:
	// the backend device carries the MTU.
	MTU int
	// Blackhole makes it a blackhole route (no gateway, no device): bgp's
	// own subnet, so that a packet for an unused address in it is dropped
	// rather than sent to the default route.
	Blackhole bool
}

// BlackholeMetric is the metric of a blackhole route (the others have 0):
// the node's own route to its subnet (the connected route of cni0, which
// has the same destination) wins while it exists, and the blackhole
// catches what is left.
const BlackholeMetric = 1 << 30

func (r Route) String() string {
	if r.Blackhole {
		return "route blackhole " + r.Dst.String()
	}
	s := "route " + r.Dst.String()
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	s += " dev " + r.Device
	if r.OnLink {
		s += " onlink"
	}
	if r.MTU != 0 {
		s += " mtu " + strconv.Itoa(r.MTU)
	}
	return s
}

// Neighbor is a permanent neighbour (ARP) entry: IP is at MAC on Device.
type Neighbor struct {
	IP     netip.Addr
	MAC    net.HardwareAddr
	Device string
}

func (n Neighbor) String() string {
	return "neigh " + n.IP.String() + " lladdr " + n.MAC.String() + " dev " + n.Device
}

// FDBEntry is a permanent forwarding entry of a VXLAN device: frames for MAC
// are sent to the VTEP at Dst.
type FDBEntry struct {
	MAC    net.HardwareAddr
	Dst    netip.Addr
	Device string
}

func (f FDBEntry) String() string {
	return "fdb " + f.MAC.String() + " dst " + f.Dst.String() + " dev " + f.Device
}

// Peer is a peer the plan routes to.
type Peer struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	// Node is the peer's name if it published one.
	Node string
	// Direct is true when the peer is routed over the underlay (host-gw, or
	// DirectRouting on the same segment) rather than through the tunnel.
	Direct bool
	// VtepMAC is the peer's VXLAN device MAC (vxlan only).
	VtepMAC net.HardwareAddr
	// PublicKey is the peer's WireGuard public key, base64 (wireguard only).
	PublicKey string
}

func (p Peer) String() string {
	s := "peer " + p.Subnet.String() + " public " + p.PublicIP.String()
	if p.Direct {
		s += " direct"
	} else {
		s += " tunnel"
	}
	if p.Node != "" && p.Node != p.PublicIP.String() {
		s += " node " + p.Node
	}
	if p.PublicKey != "" {
		s += " key " + p.PublicKey
	}
	return s
}

// Problem is a peer lease the plan could not route, and why.
type Problem struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	// Node is the name of the node whose lease it is ("" if unknown): two
	// leases may claim one subnet.
	Node   string
	Reason string
}

func (p Problem) String() string {
	return "problem " + p.Subnet.String() + " public " + p.PublicIP.String() + ": " + p.Reason
}

// Plan is the desired data-path state of one node.
type Plan struct {
	// Backend is the backend type the plan is for.
	Backend string
	// Device is the backend's device ("" for host-gw). Everything permanent
	// in its neighbour and FDB tables belongs to twill.
	Device string
	// Device6 is the backend's IPv6 device when it has a second one: vxlan's
	// twill-v6.<VNI>, whose VTEP is the node's IPv6 underlay address
	// (flannel's flannel-v6.<VNI>). "" otherwise. Twill owns its permanent
	// neighbours and FDB as it owns Device's.
	Device6 string
	// MTU is the MTU of the overlay (backend device and pods); 0 if the
	// underlay MTU was not given and the backend sets none.
	MTU int
	// Routes, Neighbors and FDB are the kernel state to install, sorted.
	Routes    []Route
	Neighbors []Neighbor
	FDB       []FDBEntry
	// Peers is the peer table (subnet -> public IP): what the udp backend
	// forwards by, and what the dashboard shows for every backend. Sorted by
	// subnet.
	Peers []Peer
	// Problems are the peers left out, sorted by subnet.
	Problems []Problem
}

// Errors of Build; the input cannot give a plan at all.
var (
	ErrBackend  = errors.New("plan: unsupported backend")
	ErrOwnLease = errors.New("plan: own lease has no valid subnet")
	ErrUnderlay = errors.New("plan: underlay not described")
)

// vxlanData is the BackendData a vxlan node publishes (flannel's form).
type vxlanData struct {
	VNI     *int   `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// ParseVXLANData reads a vxlan lease's BackendData: its VNI (0 if absent) and
// VTEP MAC. The MAC must be a unicast, non-zero Ethernet address.
func ParseVXLANData(data json.RawMessage) (vni int, mac net.HardwareAddr, err error) {
	var d vxlanData
	if len(bytes.TrimSpace(data)) == 0 {
		return 0, nil, errors.New("no BackendData")
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return 0, nil, fmt.Errorf("BackendData %s: %w", data, err)
	}
	if d.VtepMAC == "" {
		return 0, nil, errors.New("BackendData has no VtepMAC")
	}
	mac, err = net.ParseMAC(d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return 0, nil, fmt.Errorf("VtepMAC %q is not an Ethernet address", d.VtepMAC)
	}
	if mac[0]&1 != 0 || bytes.Equal(mac, make(net.HardwareAddr, 6)) {
		return 0, nil, fmt.Errorf("VtepMAC %s is not a unicast address", mac)
	}
	if d.VNI != nil {
		vni = *d.VNI
	}
	return vni, mac, nil
}

// VXLANData is the BackendData this node publishes for vxlan.
func VXLANData(vni int, mac net.HardwareAddr) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"VNI": vni, "VtepMAC": mac.String()})
	return b
}

// wireGuardData is the BackendData a wireguard node publishes (flannel's
// form).
type wireGuardData struct {
	PublicKey string `json:"PublicKey"`
}

// ParseWireGuardData reads a wireguard lease's BackendData: the peer's
// public key, base64 of 32 bytes as WireGuard writes it.
func ParseWireGuardData(data json.RawMessage) (string, error) {
	var d wireGuardData
	if len(bytes.TrimSpace(data)) == 0 {
		return "", errors.New("no BackendData")
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return "", fmt.Errorf("BackendData %s: %w", data, err)
	}
	if d.PublicKey == "" {
		return "", errors.New("BackendData has no PublicKey")
	}
	k, err := base64.StdEncoding.DecodeString(d.PublicKey)
	if err != nil || len(k) != 32 {
		return "", fmt.Errorf("PublicKey %q is not a WireGuard key (base64 of 32 bytes)", d.PublicKey)
	}
	if bytes.Equal(k, make([]byte, 32)) {
		return "", fmt.Errorf("PublicKey %q is the zero key", d.PublicKey)
	}
	return d.PublicKey, nil
}

// WireGuardData is the BackendData this node publishes for wireguard.
func WireGuardData(publicKey string) json.RawMessage {
	b, _ := json.Marshal(wireGuardData{PublicKey: publicKey})
	return b
}

// Build computes the plan for in. It fails only when the input as a whole
// is unusable; a peer that cannot be routed becomes a Problem.
//
// A lease holds an IPv4 subnet, an IPv6 subnet, or both; each family of
// the own lease is planned on its own (family), with the peers' subnets of
// that family, and the two halves make one plan. A peer without a subnet
// of a family is simply not routed in it.
func Build(in Input) (Plan, error) {
	b := in.Backend
	p := Plan{Backend: b.Type, Device: in.Device}
	if p.Device == "" {
		p.Device = DeviceName(b)
	}
	own, own6 := in.Own.Subnet, in.Own.IPv6Subnet
	has4, has6 := own.IsValid(), own6.IsValid()
	switch {
	case !has4 && !has6:
		return Plan{}, fmt.Errorf("%w: the lease has neither an IPv4 nor an IPv6 subnet", ErrOwnLease)
	case has4 && (!own.Addr().Is4() || own.Masked() != own):
		return Plan{}, fmt.Errorf("%w: %v", ErrOwnLease, own)
	case has6 && (!own6.Addr().Is6() || own6.Addr().Is4In6() || own6.Masked() != own6):
		return Plan{}, fmt.Errorf("%w: IPv6 subnet %v", ErrOwnLease, own6)
	}
	if has6 && !CarriesIPv6(b) {
		return Plan{}, fmt.Errorf("%w: the %s backend carries IPv4 only, the lease has the IPv6 subnet %s", ErrIPv6, b.Type, own6)
	}
	ownIP6 := in.Underlay.PublicIPv6
	if !ownIP6.IsValid() {
		ownIP6 = in.Own.Attrs.PublicIPv6
	}
	if has6 && b.Type == netconf.TypeVXLAN && ownIP6.IsValid() {
		p.Device6 = VXLANDevice6(b.VNI)
	}
	ipv6Tunnel := p.Device6 != ""
	if b.Type == netconf.TypeWireGuard {
		if has6 && WireGuardSeparate(b) {
			p.Device6 = WireGuardDevice6
		}
		ipv6Tunnel = WireGuardOverIPv6(b, has6, ownIP6)
	}
	if in.Underlay.MTU > 0 || b.MTU > 0 {
		p.MTU = OverlayMTU(b, in.Underlay.MTU, ipv6Tunnel)
	}
	// hostGW: every peer is routed via its public IP on the shared segment.
	hostGW := b.Type == netconf.TypeHostGW || RoutesPeerSlices(b)
	switch {
	case hostGW:
	case b.Type == netconf.TypeUDP, b.Type == netconf.TypeVXLAN, b.Type == netconf.TypeIPIP, b.Type == netconf.TypeWireGuard:
	case b.Type == netconf.TypeBGP:
		return buildBGP(in, p)
	case b.Type == netconf.TypeMacvlan, b.Type == netconf.TypeIPvlan, b.Type == netconf.TypeAlloc:
		// Pods sit on the underlay (or nothing is carried): no per-peer state.
		return p, nil
	default:
		return Plan{}, fmt.Errorf("%w: %q", ErrBackend, b.Type)
	}
	if b.Type == netconf.TypeUDP && (!in.Network.IsValid() || !in.Network.Contains(own.Addr())) {
		return Plan{}, fmt.Errorf("plan: udp needs the cluster network containing %s, got %v", own, in.Network)
	}
	if has4 {
		f := ipv4Family(in, p.Device)
		if b.Type == netconf.TypeWireGuard {
			var err error
			if f, err = wireGuardFamily(in, p, f, ownIP6); err != nil {
				return Plan{}, err
			}
		}
		if err := p.addFamily(in, f); err != nil {
			return Plan{}, err
		}
	}
	if has6 {
		f := ipv6Family(in, p, ownIP6)
		if hostGW && !f.ownIP.Is6() {
			return Plan{}, fmt.Errorf("%w: %s routes IPv6 via the peers' IPv6 underlay addresses and needs this node's (PublicIPv6)", ErrUnderlay, b.Type)
		}
		if b.Type == netconf.TypeWireGuard {
			var err error
			if f, err = wireGuardFamily(in, p, f, ownIP6); err != nil {
				return Plan{}, err
			}
		}
		if err := p.addFamily(in, f); err != nil {
			return Plan{}, err
		}
	}
	if b.Type == netconf.TypeUDP {
		p.Routes = append(p.Routes, Route{Dst: in.Network.Masked(), Device: p.Device})
	}
	p.sort()
	return p, nil
}

// ErrIPv6 is Build's error for an IPv6 subnet on a backend that cannot carry it.
var ErrIPv6 = errors.New("plan: no IPv6 on this backend")

// CarriesIPv6 reports whether a backend can carry an IPv6 pod network:
// vxlan (a second VXLAN device over the IPv6 underlay, as flannel's
// flannel-v6.<VNI>, or IPv6 neighbours on the IPv4 device when the node
// has no IPv6 underlay address), host-gw (routes via the peers'
// PublicIPv6), wireguard (by its Mode, as flannel's), and alloc, which
// carries nothing. udp is IPv4-only as flannel's is; ipip, bgp and the
// sublink backends are IPv4-only in twill for now.
func CarriesIPv6(b netconf.Backend) bool {
	switch b.Type {
	case netconf.TypeVXLAN, netconf.TypeHostGW, netconf.TypeWireGuard, netconf.TypeAlloc:
		return true
	}
	return false
}

// VXLANDevice6 is the name of the IPv6 VXLAN device for a VNI:
// twill-v6.<VNI>, flannel's flannel-v6.<VNI>.
func VXLANDevice6(vni int) string { return "twill-v6." + strconv.Itoa(vni) }

// family is one address family's view of the input: which of a lease's
// subnets and addresses the family plans with, and where its routes go.
type family struct {
	name      string // "IPv4" or "IPv6", for problems
	network   netip.Prefix
	subnetLen int
	own       netip.Prefix
	// ownIP is this node's address on the underlay the family's packets
	// ride (for IPv6 over an IPv4 underlay, the IPv4 one); ownIP2 its
	// other one where peers may be reached at either (wireguard's auto).
	ownIP, ownIP2 netip.Addr
	// segment is the node's connected prefix of that address's family: a
	// peer whose address is in it is on the L2 segment. direct says routes
	// over the segment (host-gw, DirectRouting) are possible at all.
	segment netip.Prefix
	direct  bool
	// device carries the family's tunnel state (vxlan: twill.<VNI>, or
	// twill-v6.<VNI> over an IPv6 underlay).
	device string
	subnet func(lease.Lease) netip.Prefix
	// publicIP is the peer's address the family's routes and tunnel lead to.
	publicIP func(lease.Lease) netip.Addr
	// addrName names publicIP's field in problems.
	addrName string
	isAddr   func(netip.Addr) bool
	// data is the peer's backend data for the family; dataField names
	// the lease field it came from, for wireguard's problems.
	data      func(lease.Lease) json.RawMessage
	dataField func(lease.Lease) string
}

func is4(a netip.Addr) bool { return a.Is4() }
func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

func ipv4Family(in Input, device string) family {
	ownIP := in.Underlay.PublicIP
	if !ownIP.IsValid() {
		ownIP = in.Own.Attrs.PublicIP
	}
	return family{
		name: "IPv4", network: in.Network, subnetLen: in.SubnetLen, own: in.Own.Subnet,
		ownIP: ownIP, segment: in.Underlay.Prefix.Masked(), direct: true, device: device,
		subnet:   func(l lease.Lease) netip.Prefix { return l.Subnet },
		publicIP: func(l lease.Lease) netip.Addr { return l.Attrs.PublicIP },
		addrName: "public IP", isAddr: is4,
		data: func(l lease.Lease) json.RawMessage { return l.Attrs.BackendData },
	}
}

// ipv6Family: over an IPv6 underlay (this node has ownIP6) the peers'
// PublicIPv6 and BackendV6Data, on Device6 for vxlan; without one (vxlan
// only) the IPv6 routes and neighbours go on the IPv4 device, to the peers'
// IPv4 VTEPs, with the MAC their BackendV6Data publishes.
func ipv6Family(in Input, p Plan, ownIP6 netip.Addr) family {
	f := family{
		name: "IPv6", network: in.Network6, subnetLen: in.SubnetLen6, own: in.Own.IPv6Subnet,
		ownIP: ownIP6, segment: in.Underlay.Prefix6.Masked(), direct: true, device: p.Device,
		subnet:   func(l lease.Lease) netip.Prefix { return l.IPv6Subnet },
		publicIP: func(l lease.Lease) netip.Addr { return l.Attrs.PublicIPv6 },
		addrName: "PublicIPv6", isAddr: is6,
		data: func(l lease.Lease) json.RawMessage { return l.Attrs.BackendV6Data },
	}
	if p.Device6 != "" {
		f.device = p.Device6
	}
	if !ownIP6.IsValid() && in.Backend.Type == netconf.TypeVXLAN {
		v4 := ipv4Family(in, p.Device)
		f.ownIP, f.segment, f.direct = v4.ownIP, netip.Prefix{}, false
		f.publicIP, f.addrName, f.isAddr = v4.publicIP, "public IP (IPv6 over the IPv4 underlay)", is4
	}
	return f
}

// addFamily adds the routes, neighbours, FDB entries, peers and problems
// of one family's peers to p.
func (p *Plan) addFamily(in Input, f family) error {
	b := in.Backend
	hostGW := b.Type == netconf.TypeHostGW || RoutesPeerSlices(b)
	segment := f.segment
	direct := hostGW || (f.direct && b.DirectRouting && (b.Type == netconf.TypeVXLAN || b.Type == netconf.TypeIPIP))
	if hostGW && !segment.IsValid() {
		return fmt.Errorf("%w: %s needs the underlay interface's %s prefix", ErrUnderlay, b.Type, f.name)
	}
	if direct && segment.IsValid() && in.Underlay.Device == "" {
		return fmt.Errorf("%w: routes over the underlay need its device name", ErrUnderlay)
	}

	peers := candidates(in, f, p)
	if b.Type == netconf.TypeVXLAN {
		peers = vtepConflicts(peers, f, p)
	}

	for _, c := range peers {
		l := c.lease
		sub, ip := f.subnet(l), f.publicIP(l)
		problem := func(format string, args ...any) {
			p.Problems = append(p.Problems, Problem{Subnet: sub, PublicIP: ip, Node: l.Attrs.NodeName(), Reason: fmt.Sprintf(format, args...)})
		}
		if (f.ownIP.IsValid() && ip == f.ownIP) || (f.ownIP2.IsValid() && ip == f.ownIP2) {
			problem("publishes this node's own %s (a stale lease of this node?); not routed", f.addrName)
			continue
		}
		peer := Peer{Subnet: sub, PublicIP: ip, Node: l.Attrs.NodeName()}
		onSegment := segment.IsValid() && segment.Contains(ip)
		if direct && onSegment {
			peer.Direct = true
			p.Routes = append(p.Routes, Route{Dst: sub, Gateway: ip, Device: in.Underlay.Device})
			p.Peers = append(p.Peers, peer)
			continue
		}
		if hostGW {
			problem("not on this node's L2 segment %s; %s cannot reach it, no route", segment, b.Type)
			continue
		}
		switch b.Type {
		case netconf.TypeUDP:
			// The single cluster route carries it; twilld forwards by the peer table.
		case netconf.TypeIPIP:
			p.Routes = append(p.Routes, Route{Dst: sub, Gateway: ip, Device: f.device, OnLink: true})
		case netconf.TypeWireGuard:
			peer.PublicKey = c.key
			p.Routes = append(p.Routes, Route{Dst: sub, Device: f.device})
		case netconf.TypeVXLAN:
			gw := sub.Masked().Addr()
			peer.VtepMAC = c.mac
			p.Routes = append(p.Routes, Route{Dst: sub, Gateway: gw, Device: f.device, OnLink: true})
			p.Neighbors = append(p.Neighbors, Neighbor{IP: gw, MAC: c.mac, Device: f.device})
			p.FDB = append(p.FDB, FDBEntry{MAC: c.mac, Dst: ip, Device: f.device})
		}
		p.Peers = append(p.Peers, peer)
	}
	return nil
}

// RoutesPeerSlices reports whether a backend whose pods sit on the underlay
// still routes peers' slices via their public IPs: ipvlan in l3 and l3s
// modes, where the wire never learns pod addresses by ARP.
func RoutesPeerSlices(b netconf.Backend) bool {
	return b.Type == netconf.TypeIPvlan && (b.Mode == "l3" || b.Mode == "l3s")
}

// candidate is a peer lease that passed the checks common to all backends.
type candidate struct {
	lease lease.Lease
	mac   net.HardwareAddr // vxlan
	key   string           // wireguard
}

// candidates filters the peer leases of family f: the own lease, leases
// without a subnet of the family (silently), leases of another prefix
// length than the network's SubnetLen, leases outside the network, leases
// overlapping an older one, foreign backends and malformed leases are
// dropped (all but the first two with a Problem).
//
// Between overlapping leases the oldest wins (lowest create revision, then
// lowest revision): a lease written later, such as a supernet key that
// covers established peers (10.244.96.0-19 over 10.244.97.0-24), cannot
// take their traffic.
func candidates(in Input, f family, p *Plan) []candidate {
	b := in.Backend
	own := f.own
	leases := slices.Clone(in.Peers)
	slices.SortStableFunc(leases, func(x, y lease.Lease) int {
		// Oldest first; between leases of one age (Kubernetes: Nodes
		// created in one second), by node name, never by the revision of
		// the last change, which a status update moves.
		return cmp.Or(cmp.Compare(age(x), age(y)), cmp.Compare(x.Attrs.NodeName(), y.Attrs.NodeName()), cmp.Compare(x.Revision, y.Revision),
			comparePrefix(f.subnet(x), f.subnet(y)), f.publicIP(x).Compare(f.publicIP(y)))
	})
	var claims claimSet
	var out []candidate
	for _, l := range leases {
		s := f.subnet(l)
		problem := func(format string, args ...any) {
			p.Problems = append(p.Problems, Problem{Subnet: s, PublicIP: f.publicIP(l), Node: l.Attrs.NodeName(), Reason: fmt.Sprintf(format, args...)})
		}
		if l.Subnets() == in.Own.Subnets() || (!s.IsValid() && f.name == "IPv6") {
			continue // our own lease, or a peer without IPv6
		}
		if !s.IsValid() && !l.IPv6Subnet.IsValid() {
			problem("subnet is not an IPv4 network address")
			continue
		}
		if !s.IsValid() {
			continue // an IPv6-only peer: the IPv6 half routes it
		}
		if s.Addr().BitLen() != own.Addr().BitLen() || s.Addr().Is4In6() || s.Masked() != s {
			problem("subnet is not an %s network address", f.name)
			continue
		}
		if f.network.IsValid() && !(f.network.Contains(s.Addr()) && s.Bits() >= f.network.Bits()) {
			problem("outside the cluster network %s", f.network)
			continue
		}
		if f.subnetLen > 0 && s.Bits() != f.subnetLen {
			problem("prefix length /%d, the network's %s is %d; refused", s.Bits(), subnetLenField(f), f.subnetLen)
			continue
		}
		if s.Overlaps(own) {
			problem("node %s: overlaps this node's subnet %s; not routed", l.Attrs.NodeName(), own)
			continue
		}
		if o, ok := claims.overlapping(s); ok {
			if f.subnet(o) == s {
				problem("node %s claims %s, as node %s does in an older lease; %[3]s is routed, %[1]s is not", l.Attrs.NodeName(), s, o.Attrs.NodeName())
			} else {
				problem("node %s: overlaps %s of node %s, an older lease; refused", l.Attrs.NodeName(), f.subnet(o), o.Attrs.NodeName())
			}
			continue
		}
		claims.add(s, l)
		if t := l.Attrs.Backend(); t != b.Type {
			problem("backend type %q, this node runs %q; skipped", t, b.Type)
			continue
		}
		if ip := f.publicIP(l); !ip.IsValid() {
			problem("publishes no %s", f.addrName)
			continue
		} else if !f.isAddr(ip) || ip.IsUnspecified() || ip.IsMulticast() {
			problem("%s %v is not a unicast %s address", f.addrName, ip, addrFamilyName(f))
			continue
		}
		if f.name == "IPv6" && b.Type == netconf.TypeVXLAN && !is6(f.ownIP) && l.Attrs.PublicIPv6.IsValid() {
			problem("publishes PublicIPv6 %s: its IPv6 VTEP is on the IPv6 underlay, and this node has no IPv6 underlay address", l.Attrs.PublicIPv6)
			continue
		}
		c := candidate{lease: l}
		if b.Type == netconf.TypeVXLAN {
			vni, mac, err := ParseVXLANData(f.data(l))
			if err != nil {
				if f.name == "IPv6" {
					err = fmt.Errorf("BackendV6Data: %w", err)
				}
				problem("%v", err)
				continue
			}
			if vni != 0 && vni != b.VNI {
				problem("VNI %d, this node uses VNI %d", vni, b.VNI)
				continue
			}
			c.mac = mac
		}
		if b.Type == netconf.TypeWireGuard {
			key, err := ParseWireGuardData(f.data(l))
			if err != nil {
				if f.dataField != nil && f.dataField(l) != "BackendData" {
					err = fmt.Errorf("%s: %w", f.dataField(l), err)
				}
				problem("%v; skipped", err)
				continue
			}
			c.key = key
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y candidate) int { return comparePrefix(f.subnet(x.lease), f.subnet(y.lease)) })
	return out
}

func subnetLenField(f family) string {
	if f.name == "IPv6" {
		return "IPv6SubnetLen"
	}
	return "SubnetLen"
}

func addrFamilyName(f family) string {
	if f.isAddr(netip.IPv4Unspecified()) {
		return "IPv4"
	}
	return "IPv6"
}

// age orders leases by when they were created: the create revision, or
// the revision of the last change when the store gave none.
func age(l lease.Lease) int64 {
	if l.Created != 0 {
		return l.Created
	}
	return l.Revision
}

// claimSet holds the subnets of accepted leases (of one family) and
// answers, in at most 33 (IPv6: 129) lookups, whether a subnet overlaps one
// of them.
type claimSet struct {
	// exact maps an accepted subnet to its lease; covered holds every
	// prefix that contains an accepted subnet (the subnet itself too).
	exact   map[netip.Prefix]lease.Lease
	covered map[netip.Prefix]lease.Lease
}

func (c *claimSet) add(s netip.Prefix, l lease.Lease) {
	if c.exact == nil {
		c.exact, c.covered = map[netip.Prefix]lease.Lease{}, map[netip.Prefix]lease.Lease{}
	}
	c.exact[s] = l
	for bits := s.Bits(); bits >= 0; bits-- {
		p := netip.PrefixFrom(s.Addr(), bits).Masked()
		if _, ok := c.covered[p]; !ok {
			c.covered[p] = l
		}
	}
}

// overlapping returns an accepted lease whose subnet contains s or lies
// inside it.
func (c *claimSet) overlapping(s netip.Prefix) (lease.Lease, bool) {
	if l, ok := c.covered[s]; ok { // s contains (or is) an accepted subnet
		return l, true
	}
	for bits := s.Bits() - 1; bits >= 0; bits-- {
		if l, ok := c.exact[netip.PrefixFrom(s.Addr(), bits).Masked()]; ok {
			return l, true
		}
	}
	return lease.Lease{}, false
}

// vtepConflicts drops all but one of the vxlan peers that publish one VTEP
// MAC with different public IPs: the FDB can send a MAC to one VTEP only.
// The lease with the highest revision (the newest) wins; on a tie, the
// lowest subnet. Leases sharing MAC and public IP (one node, two subnets)
// are not a conflict.
func vtepConflicts(peers []candidate, f family, p *Plan) []candidate {
	owner := map[string]lease.Lease{}
	for _, c := range peers {
		k := c.mac.String()
		o, ok := owner[k]
		if !ok || c.lease.Revision > o.Revision {
			owner[k] = c.lease
		}
	}
	out := peers[:0:0]
	for _, c := range peers {
		o := owner[c.mac.String()]
		if f.publicIP(o) != f.publicIP(c.lease) {
			p.Problems = append(p.Problems, Problem{Subnet: f.subnet(c.lease), PublicIP: f.publicIP(c.lease),
				Reason: fmt.Sprintf("VtepMAC %s is also published by %s at %s (newer lease); skipped", c.mac, f.subnet(o), f.publicIP(o))})
			continue
		}
		out = append(out, c)
	}
	return out
}

func (p *Plan) sort() {
	slices.SortFunc(p.Routes, func(a, b Route) int {
		return cmp.Or(comparePrefix(a.Dst, b.Dst), cmp.Compare(a.Device, b.Device))
	})
	slices.SortFunc(p.Neighbors, func(a, b Neighbor) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), a.IP.Compare(b.IP))
	})
	slices.SortFunc(p.FDB, compareFDB)
	p.FDB = slices.CompactFunc(p.FDB, func(a, b FDBEntry) bool { return compareFDB(a, b) == 0 })
	slices.SortFunc(p.Peers, func(a, b Peer) int { return comparePrefix(a.Subnet, b.Subnet) })
	slices.SortFunc(p.Problems, func(a, b Problem) int {
		return cmp.Or(comparePrefix(a.Subnet, b.Subnet), a.PublicIP.Compare(b.PublicIP), cmp.Compare(a.Reason, b.Reason))
	})
}

func compareFDB(a, b FDBEntry) int {
	return cmp.Or(cmp.Compare(a.Device, b.Device), bytes.Compare(a.MAC, b.MAC), a.Dst.Compare(b.Dst))
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// WireGuardSeparate reports whether wireguard runs Mode separate (the
// default): IPv4 on twill-wg, IPv6 on twill-wg-v6.
func WireGuardSeparate(b netconf.Backend) bool { return b.Mode == "separate" || b.Mode == "" }

// WireGuardOverIPv6 reports whether a wireguard node may send to peers
// over its IPv6 underlay, which makes the overlay MTU IPv6UnderlayExtra
// smaller for both families (the pods have one MTU): always in Mode
// ipv6; in separate and auto when the pod network has IPv6 (ipv6Network)
// and the node an IPv6 underlay address (ownIP6); never in Mode ipv4.
func WireGuardOverIPv6(b netconf.Backend, ipv6Network bool, ownIP6 netip.Addr) bool {
	switch {
	case b.Mode == "ipv6":
		return true
	case b.Mode == "ipv4":
		return false
	}
	return ipv6Network && ownIP6.IsValid()
}

// wireGuardFamily sets where a wireguard family's peers are reached, by
// Backend.Mode, as flannel's backend does:
//
//	separate  IPv4 subnets at PublicIP on twill-wg, IPv6 subnets at
//	          PublicIPv6 on twill-wg-v6, each with its own data
//	          (BackendData, BackendV6Data); this node needs PublicIPv6
//	ipv4      both families on twill-wg, every peer at its PublicIP
//	ipv6      both families on twill-wg, every peer at its PublicIPv6
//	auto      both families on twill-wg, each peer at the endpoint
//	          autoEndpoint picks
//
// On one device a peer node is one WireGuard peer with both subnets as
// allowed IPs, so both halves take one key: BackendV6Data's when the
// lease has an IPv6 subnet and publishes it (flannel's choice), else
// BackendData's.
func wireGuardFamily(in Input, p Plan, f family, ownIP6 netip.Addr) (family, error) {
	b := in.Backend
	ownIP4 := in.Underlay.PublicIP
	if !ownIP4.IsValid() {
		ownIP4 = in.Own.Attrs.PublicIP
	}
	if WireGuardSeparate(b) {
		if f.name == "IPv6" {
			if !ownIP6.IsValid() {
				return f, fmt.Errorf("%w: wireguard Mode separate carries IPv6 on %s over the IPv6 underlay and needs this node's PublicIPv6", ErrUnderlay, WireGuardDevice6)
			}
			f.device = p.Device6
			f.dataField = func(lease.Lease) string { return "BackendV6Data" }
		}
		return f, nil
	}
	f.device, f.segment, f.direct = p.Device, netip.Prefix{}, false
	f.data = func(l lease.Lease) json.RawMessage {
		if l.IPv6Subnet.IsValid() && len(l.Attrs.BackendV6Data) > 0 {
			return l.Attrs.BackendV6Data
		}
		return l.Attrs.BackendData
	}
	f.dataField = func(l lease.Lease) string {
		if l.IPv6Subnet.IsValid() && len(l.Attrs.BackendV6Data) > 0 {
			return "BackendV6Data"
		}
		return "BackendData"
	}
	switch b.Mode {
	case "ipv4":
		f.ownIP, f.addrName, f.isAddr = ownIP4, "public IP", is4
		f.publicIP = func(l lease.Lease) netip.Addr { return l.Attrs.PublicIP }
	case "ipv6":
		if !ownIP6.IsValid() {
			return f, fmt.Errorf("%w: wireguard Mode ipv6 reaches its peers over the IPv6 underlay and needs this node's PublicIPv6", ErrUnderlay)
		}
		f.ownIP, f.addrName, f.isAddr = ownIP6, "PublicIPv6", is6
		f.publicIP = func(l lease.Lease) netip.Addr { return l.Attrs.PublicIPv6 }
	default: // auto
		f.ownIP, f.ownIP2, f.addrName = ownIP4, ownIP6, "endpoint (PublicIP or PublicIPv6)"
		f.isAddr = func(a netip.Addr) bool { return is4(a) || is6(a) }
		f.publicIP = func(l lease.Lease) netip.Addr { return autoEndpoint(l, ownIP4, ownIP6) }
	}
	return f, nil
}

// autoEndpoint is the address wireguard's Mode auto reaches a peer at,
// flannel's choice: the only one the peer publishes (or the only family
// this node's underlay has); of two, its PublicIP if that is not a
// private address, its PublicIPv6 if neither that nor this node's is a
// private (unique local) one, else its PublicIP.
func autoEndpoint(l lease.Lease, own4, own6 netip.Addr) netip.Addr {
	v4, v6 := l.Attrs.PublicIP, l.Attrs.PublicIPv6
	switch {
	case !v6.IsValid() || !own6.IsValid():
		return v4
	case !v4.IsValid() || !own4.IsValid():
		return v6
	case !v4.IsPrivate():
		return v4
	case !v6.IsPrivate() && !own6.IsPrivate():
		return v6
	}
	return v4
}
