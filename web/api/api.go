// Package api is the wire format of twilld's JSON API (/api/v1/...): the
// types the web package serves and that twillctl and other clients decode.
// Field names are part of the API (docs/api.md): add fields, never rename or
// remove them.
//
// It is a leaf: plain types and constants, no behaviour. It must import
// nothing of twill, so that a client links these types and not the server.
package api

import "encoding/json"

// NodeInfo is /api/v1/node: this node and its readiness.
type NodeInfo struct {
	Name     string `json:"name"`
	PublicIP string `json:"public_ip"`
	Iface    string `json:"iface"`
	Network  string `json:"network"`
	Subnet   string `json:"subnet"`
	// PublicIPv6, IPv6Network and IPv6Subnet: the IPv6 half, when the
	// network enables IPv6.
	PublicIPv6  string `json:"public_ipv6,omitempty"`
	IPv6Network string `json:"ipv6_network,omitempty"`
	IPv6Subnet  string `json:"ipv6_subnet,omitempty"`
	Backend     string `json:"backend"`
	// BackendMode is the backend's mode where it has one: macvlan's or
	// ipvlan's mode, udp's data path ("kernel path", or "userspace" and
	// why).
	BackendMode   string  `json:"backend_mode,omitempty"`
	MTU           int     `json:"mtu"`
	Version       string  `json:"version"`
	StartedAt     string  `json:"started_at"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Ready         bool    `json:"ready"`
	Checks        []Check `json:"checks"`
	// LeaseExpiresAt is empty for a reservation or before the lease is held.
	LeaseExpiresAt string   `json:"lease_expires_at,omitempty"`
	Reservation    bool     `json:"reservation"`
	Dashboard      string   `json:"dashboard,omitempty"`
	Peers          int      `json:"peers"`
	Problems       []string `json:"problems"`
	// PeerProblems are the peers' leases this node does not route to, and
	// why (they are among Problems too, as text, and fail the
	// peers-routable check).
	PeerProblems []PeerProblem `json:"peer_problems"`
}

// PeerProblem is a peer's lease this node skips: a lease of another
// backend type, unusable backend data, a wrong prefix length, a subnet
// outside the network or overlapping an older lease, a host-gw peer off the
// segment.
type PeerProblem struct {
	Subnet   string `json:"subnet"`
	Node     string `json:"node,omitempty"`
	PublicIP string `json:"public_ip"`
	Reason   string `json:"reason"`
}

// Check is one named readiness check.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Health is /api/v1/health.
type Health struct {
	Ready  bool    `json:"ready"`
	Checks []Check `json:"checks"`
}

// LeaseList is /api/v1/leases.
type LeaseList struct {
	Now    string  `json:"now"`
	Leases []Lease `json:"leases"`
}

// Lease is one subnet lease of the cluster.
type Lease struct {
	// Subnet is the IPv4 subnet, or for an IPv6-only lease the IPv6 one:
	// the lease's key on the dashboard.
	Subnet      string          `json:"subnet"`
	Node        string          `json:"node"`
	PublicIP    string          `json:"public_ip"`
	Backend     string          `json:"backend"`
	BackendData json.RawMessage `json:"backend_data,omitempty"`
	// IPv6Subnet, PublicIPv6 and BackendV6Data are the lease's IPv6 half
	// (dual stack, or IPv6-only); empty without one.
	IPv6Subnet    string          `json:"ipv6_subnet,omitempty"`
	PublicIPv6    string          `json:"public_ipv6,omitempty"`
	BackendV6Data json.RawMessage `json:"backend_v6_data,omitempty"`
	// ExpiresAt is empty for a reservation.
	ExpiresAt        string  `json:"expires_at,omitempty"`
	ExpiresInSeconds float64 `json:"expires_in_seconds,omitempty"`
	Reservation      bool    `json:"reservation"`
	Own              bool    `json:"own"`
	Dashboard        string  `json:"dashboard,omitempty"`
	// NotRouted is why this node does not route to the lease's subnet;
	// empty for the own lease and the leases it routes.
	NotRouted string `json:"not_routed,omitempty"`
}

// Routes is /api/v1/routes: desired against actual kernel state.
type Routes struct {
	InSync    bool       `json:"in_sync"`
	LastPass  string     `json:"last_pass,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	Routes    []RouteRow `json:"routes"`
	Neighbors []RouteRow `json:"neighbors"`
	FDB       []RouteRow `json:"fdb"`
}

// RouteRow pairs a desired entry with the kernel's entry for the same
// destination (route), address (neighbour) or MAC (FDB). Desired and
// Actual are in ip(8) syntax; Status is ok, missing (only desired), extra
// (only in the kernel) or differs.
type RouteRow struct {
	Key     string `json:"key"`
	Status  string `json:"status"`
	Desired string `json:"desired,omitempty"`
	Actual  string `json:"actual,omitempty"`
}

// TunnelList is /api/v1/tunnels.
type TunnelList struct {
	SampledAt       string            `json:"sampled_at,omitempty"`
	IntervalSeconds float64           `json:"interval_seconds"`
	Tunnels         []Tunnel          `json:"tunnels"`
	Drops           map[string]uint64 `json:"drops"`
}

// Tunnel is the tunnel to one peer. Rates are bytes or packets per second
// over the last sample interval.
type Tunnel struct {
	Peer        string `json:"peer"`
	Node        string `json:"node"`
	PublicIP    string `json:"public_ip"`
	State       string `json:"state"`
	StateDetail string `json:"state_detail,omitempty"`

	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	// UserspaceTxBytes and UserspaceRxBytes are the part of the bytes
	// udp's userspace loops carried (the rest its kernel path did).
	UserspaceTxBytes uint64 `json:"userspace_tx_bytes,omitempty"`
	UserspaceRxBytes uint64 `json:"userspace_rx_bytes,omitempty"`

	TxBytesPerSecond   float64 `json:"tx_bytes_per_second"`
	RxBytesPerSecond   float64 `json:"rx_bytes_per_second"`
	TxPacketsPerSecond float64 `json:"tx_packets_per_second"`
	RxPacketsPerSecond float64 `json:"rx_packets_per_second"`

	Drops    map[string]uint64 `json:"drops"`
	LastSeen string            `json:"last_seen,omitempty"`
	// LastHandshake is when the WireGuard session was last set up (the
	// wireguard backend; "" before the first); HandshakeProblem says why
	// the peer is not handshaking (then State is not-handshaking).
	LastHandshake    string `json:"last_handshake,omitempty"`
	HandshakeProblem string `json:"handshake_problem,omitempty"`
	// History is the rate over the last minutes, oldest first (only with
	// ?history=1).
	History []RatePoint `json:"history,omitempty"`
}

// Tunnel states.
const (
	StateUp          = "up"
	StateIdle        = "idle"
	StateUnreachable = "unreachable"
	// StateNotHandshaking is a WireGuard peer without a handshake for 3
	// minutes (or none in the 3 minutes since it became a peer).
	StateNotHandshaking = "not-handshaking"
)

// RatePoint is one sample interval's rates.
type RatePoint struct {
	At               string  `json:"t"`
	TxBytesPerSecond float64 `json:"tx_bytes_per_second"`
	RxBytesPerSecond float64 `json:"rx_bytes_per_second"`
}

// Cluster is /api/v1/cluster: every lease's node as this node sees it,
// with what the node's own API answered.
type Cluster struct {
	Nodes []ClusterNode `json:"nodes"`
}

// ClusterNode is one node of the cluster.
type ClusterNode struct {
	Subnet string `json:"subnet"`
	// IPv6Subnet is the node's IPv6 subnet beside Subnet (dual stack).
	IPv6Subnet string `json:"ipv6_subnet,omitempty"`
	Name       string `json:"name"`
	PublicIP   string `json:"public_ip"`
	Dashboard  string `json:"dashboard,omitempty"`
	Self       bool   `json:"self"`
	// Reachability is "self", "answers", "no-answer", or "unknown" (the
	// lease publishes no dashboard).
	Reachability string `json:"reachability"`
	// NotRouted is why this node does not route to the node's subnet
	// (see NodeInfo.PeerProblems); empty when it does.
	NotRouted string    `json:"not_routed,omitempty"`
	Error     string    `json:"error,omitempty"`
	CheckedAt string    `json:"checked_at,omitempty"`
	Node      *NodeInfo `json:"node,omitempty"`
	Tunnels   []Tunnel  `json:"tunnels,omitempty"`
}

// BGPSessions is /api/v1/bgp: the bgp backend's BGP sessions (empty for
// the other backends).
type BGPSessions struct {
	Sessions []BGPSession `json:"sessions"`
}

// BGPSession is one BGP session, as `calicoctl node status` lists them.
type BGPSession struct {
	Peer string `json:"peer"`
	ASN  uint32 `json:"asn"`
	// Type is mesh, reflector or external.
	Type  string `json:"type"`
	State string `json:"state"`
	// Since is when the session entered State (RFC 3339; empty if not
	// known).
	Since              string `json:"since,omitempty"`
	PrefixesReceived   uint64 `json:"prefixes_received"`
	PrefixesAdvertised uint64 `json:"prefixes_advertised"`
	Transitions        uint64 `json:"transitions"`
	LastError          string `json:"last_error,omitempty"`
}
