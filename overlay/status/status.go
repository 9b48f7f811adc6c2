// Package status is the read-only report of a running twilld: the daemon's
// Snapshot (the node, its lease, its peers' leases, the readiness checks)
// and the Backend report inside it (per-peer counters, drops, the desired
// and actual kernel state). The daemon fills these types and the backends
// fill Backend; web and anything else that shows a node's state reads them.
//
// It is a leaf: types only, no methods, no I/O. It must
// not import the daemon, the backends, the kernel or the lease stores, so
// that a reader of snapshots (the web package, a test double) links none of
// them.
package status

import (
	"net/netip"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/plan"
)

// Snapshot is a read-only copy of the daemon's state at one moment.
type Snapshot struct {
	Node      Node
	Lease     lease.Lease
	Leases    []lease.Lease
	Backend   Backend
	Checks    []Check
	Ready     bool
	StartedAt time.Time
}

// Node describes this node.
type Node struct {
	Name     string
	PublicIP netip.Addr
	Iface    string
	Network  netip.Prefix
	// PublicIPv6 and IPv6Network: the IPv6 half, when the network
	// enables IPv6.
	PublicIPv6  netip.Addr
	IPv6Network netip.Prefix
	BackendType string
	// BackendMode is the macvlan or ipvlan mode (bridge, l2, l3, ...);
	// empty for backends without modes.
	BackendMode string
	MTU         int
}

// Check is one named readiness check.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Backend is a backend's report.
type Backend struct {
	// Mode is the backend's mode where it has one (macvlan bridge, ipvlan
	// l3, ...), for the dashboard; empty otherwise.
	Mode  string
	Peers []Peer
	// Problems are conditions an operator must see, such as a host-gw peer
	// that is not on this node's L2 segment.
	Problems []string
	// PeerProblems are the peers twill does not route to, each with its
	// subnet, public IP and the reason (a host-gw peer off the segment, a
	// lease of another backend type, unusable backend data, a wrong prefix
	// length, an overlap with an older lease). They are among the Problems
	// too, as text, and they make the node not ready.
	PeerProblems []plan.Problem
	// InSync says the kernel holds what the backend wants.
	InSync bool
	// Drops counts dropped packets that belong to no peer, by reason
	// (no-route, unknown-peer, ...); a peer's own drops are in its Peer.
	Drops map[string]uint64
	// Device is the backend's device ("" for none, as host-gw and alloc);
	// DeviceUp says it exists and is up.
	Device   string
	DeviceUp bool
	// Kernel is what the backend wants in the kernel and what the kernel
	// holds; nil for a backend without kernel state (alloc).
	Kernel *Kernel
	// BGP are the bgp backend's sessions, sorted by peer; nil for the
	// other backends.
	BGP []BGPSession
}

// BGPSession is one BGP session of the bgp backend.
type BGPSession struct {
	Peer netip.Addr
	ASN  uint32
	// Type is "mesh" (another node), "reflector" (a route reflector of
	// the cluster) or "external" (a router of the network).
	Type string
	// State is the BGP FSM state: Idle, Connect, Active, OpenSent,
	// OpenConfirm, Established.
	State string
	// Since is when the session entered State (zero if not seen change).
	Since time.Time
	// PrefixesReceived and PrefixesAdvertised count IPv4 unicast prefixes.
	PrefixesReceived, PrefixesAdvertised uint64
	// Transitions counts the state changes seen.
	Transitions uint64
	// LastError is the last error the speaker logged for the peer (a
	// NOTIFICATION, a refused OPEN); "" if none since the session came up.
	LastError string
}

// Stuck reports whether the session is down with an error: what fails
// readiness.
func (s BGPSession) Stuck() bool { return s.State != "Established" && s.LastError != "" }

// Kernel is a read-only copy of a backend's desired and actual kernel
// state: the receiver may keep it, nothing else writes to it.
type Kernel struct {
	Desired, Actual KernelTables
	// LastPass is when the reconciler last compared them; zero before the
	// first pass. LastError is that pass's error ("" if none).
	LastPass  time.Time
	LastError string
}

// KernelTables are the routes, neighbours and FDB entries of one side.
type KernelTables struct {
	Routes    []plan.Route
	Neighbors []plan.Neighbor
	FDB       []plan.FDBEntry
}

// Peer is the state and the counters of the tunnel to one peer.
type Peer struct {
	Subnet    netip.Prefix
	PublicIP  netip.Addr
	TxPackets uint64
	TxBytes   uint64
	RxPackets uint64
	RxBytes   uint64
	// UserspaceTxBytes and UserspaceRxBytes are the part of TxBytes and
	// RxBytes that udp's userspace loops carried (the rest its kernel
	// path did); zero for the other backends.
	UserspaceTxBytes, UserspaceRxBytes uint64
	// Drops counts dropped packets by reason (no-route, unknown-peer,
	// spoofed-source, malformed, tun-write-error, ...).
	Drops    map[string]uint64
	LastSeen time.Time
	// LastHandshake is when the WireGuard session with the peer was last
	// set up (wireguard only; zero before the first handshake).
	LastHandshake time.Time
	// HandshakeProblem says why the WireGuard peer is not handshaking (its
	// last handshake is older than 3 minutes, or it has had none in the 3
	// minutes since it became a peer); "" when it is, and for the other
	// backends. Such a peer fails the daemon's readiness.
	HandshakeProblem string
}
