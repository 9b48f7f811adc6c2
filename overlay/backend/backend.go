// Package backend defines what a data path is to the daemon: the Backend
// interface, the facts about the node a backend is given, and the per-peer
// counters every backend reports (their types are overlay/status's, aliased
// here). One package per backend implements it (alloc, udp, vxlan, hostgw,
// ipip, sublink, ...).
//
// It must not pick a backend for a config (the daemon does) nor reach into
// the lease store: a backend sees leases only as the events it is handed.
package backend

import (
	"context"
	"encoding/json"
	"net/netip"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/status"
)

// Node is what a backend knows of the node it runs on.
type Node struct {
	// Name of the node (hostname unless set).
	Name string
	// PublicIP is the address peers reach this node at.
	PublicIP netip.Addr
	// Iface is the underlay interface carrying PublicIP; empty if none was
	// found (then only backends that need no interface can run).
	Iface string
	// IfaceIndex and IfaceMTU describe Iface.
	IfaceIndex int
	IfaceMTU   int
	// IfacePrefix is the underlay subnet on Iface that holds PublicIP, which
	// decides whether a peer shares the node's L2 segment.
	IfacePrefix netip.Prefix
	// PublicIPv6 is the node's IPv6 underlay address on Iface (peers reach
	// its IPv6 VTEP or host-gw routes there), and IfacePrefix6 the IPv6
	// subnet on Iface that holds it; zero when the node has none.
	PublicIPv6   netip.Addr
	IfacePrefix6 netip.Prefix
	// Network is the cluster network config.
	Network *netconf.Config
	// IPMasq asks the backend to masquerade pod traffic that leaves the
	// cluster network (twilld --ip-masq).
	IPMasq bool
	// NetNS is the path of the network namespace the backend works in
	// (/run/netns/NAME, /proc/PID/ns/net); empty for the namespace of the
	// thread that creates the backend, which is twilld's.
	NetNS string
	// StateDir is where the backend keeps what must outlive twilld and
	// survive reboots (wireguard's private key); twilld --state-dir.
	StateDir string
}

// Prepared is what a backend publishes before its lease is acquired.
type Prepared struct {
	// BackendData goes into the lease for peers to read (flannel's format).
	BackendData json.RawMessage
	// BackendV6Data goes into the lease beside it for the IPv6 half
	// (flannel's BackendV6Data: vxlan's IPv6 VTEP); nil for none.
	BackendV6Data json.RawMessage
	// MTU is the MTU pods on this node must use.
	MTU int
	// Sublink is set by the sublink backends (macvlan, ipvlan): pods
	// attach to the underlay as sub-interfaces of its master, and the
	// daemon passes this on to the CNI plugin through the subnet file.
	Sublink *Sublink
}

// Sublink is where pods of a sublink backend (macvlan, ipvlan) attach.
type Sublink struct {
	// Master is the host interface pods' sub-interfaces hang off.
	Master string
	// Mode is the macvlan or ipvlan mode.
	Mode string
	// Subnet is the master's subnet that holds the cluster network.
	Subnet netip.Prefix
	// Gateway is the underlay's default gateway (the master's default
	// route); invalid if the master has none.
	Gateway netip.Addr
}

// Backend is one data path.
type Backend interface {
	// Type is the backend type, as in the network config.
	Type() string
	// Prepare creates what must exist before the lease is published (the
	// device whose MAC goes into BackendData, say) and returns it.
	Prepare(ctx context.Context) (Prepared, error)
	// SetLease tells the backend the node's own lease, first and whenever
	// it changed.
	SetLease(ctx context.Context, own lease.Lease) error
	// Handle applies peers' lease events, in the order they happened. It is
	// never given the node's own lease.
	Handle(ctx context.Context, events []lease.Event) error
	// Run does the backend's continuous work (packet loops, drift repair)
	// until ctx ends, and returns nil then. What breaks it repairs (a
	// deleted device comes back, with its address and routes); it returns
	// an error only when the data path is dead and cannot be repaired,
	// saying what died, so that the daemon exits non-zero and is restarted
	// rather than stay up and ready with no data path.
	Run(ctx context.Context) error
	// Status reports per-peer counters and anything wrong, for the dashboard.
	Status() Status
	// Cleanup removes everything the backend put into the kernel
	// (twilld --cleanup). A daemon that merely stops leaves it in place so
	// that pods keep talking while it restarts.
	Cleanup(ctx context.Context) error
}

// The report types live in overlay/status, so that readers of a node's
// state link no backend; these names keep the backends' code as it was.
type (
	// Status is a backend's report.
	Status = status.Backend
	// PeerStatus is the state and the counters of the tunnel to one peer.
	PeerStatus = status.Peer
	// KernelState is a backend's desired and actual kernel state.
	KernelState = status.Kernel
	// KernelTables are the routes, neighbours and FDB entries of one side.
	KernelTables = status.KernelTables
)
