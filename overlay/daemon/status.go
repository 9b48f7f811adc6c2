package daemon

import (
	"net/netip"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
)

// Snapshot is a read-only copy of the daemon's state at one moment.
type Snapshot struct {
	Node      NodeInfo
	Lease     lease.Lease
	Leases    []lease.Lease
	Backend   backend.Status
	Checks    []Check
	Ready     bool
	StartedAt time.Time
}

// NodeInfo describes this node.
type NodeInfo struct {
	Name        string
	PublicIP    netip.Addr
	Iface       string
	Network     netip.Prefix
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

// Snapshot returns the daemon's state now. It is safe to call at any time,
// also before Run got far.
func (d *Daemon) Snapshot() Snapshot {
	d.mu.Lock()
	s := Snapshot{Ready: d.ready, StartedAt: d.started}
	s.Node = NodeInfo{Name: d.cfg.NodeName, PublicIP: d.node.PublicIP, Iface: d.node.Iface, MTU: d.mtu}
	netcfg, keeper, watcher, be := d.netcfg, d.keeper, d.watcher, d.be
	d.mu.Unlock()
	if netcfg != nil {
		s.Node.Network = netcfg.Network
		s.Node.BackendType = netcfg.Backend.Type
		s.Node.BackendMode = netcfg.Backend.Mode
	}
	if keeper != nil {
		s.Lease = keeper.Current()
	}
	if watcher != nil {
		s.Leases = watcher.Leases()
	}
	if be != nil {
		s.Backend = be.Status()
	}
	held := s.Lease.Subnet.IsValid() && (s.Lease.Reservation || time.Now().Before(s.Lease.Expiration))
	s.Checks = []Check{
		{Name: "lease-held", OK: held, Detail: s.Lease.Subnet.String()},
		{Name: "etcd-reachable", OK: d.reach.Reachable()},
		{Name: "routes-in-sync", OK: be != nil && s.Backend.InSync},
	}
	return s
}
