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

// Resync asks the backend to compare its kernel state with its plan and
// repair it now, if it keeps kernel state.
func (d *Daemon) Resync() {
	d.mu.Lock()
	be := d.be
	d.mu.Unlock()
	if r, ok := be.(interface{ Resync() }); ok {
		r.Resync()
		d.log.Info("resync requested")
	}
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
	leaseDetail := "no lease yet"
	switch {
	case s.Lease.Reservation:
		leaseDetail = s.Lease.Subnet.String() + " (reserved)"
	case s.Lease.Subnet.IsValid():
		leaseDetail = s.Lease.Subnet.String() + " until " + s.Lease.Expiration.UTC().Format(time.RFC3339)
	}
	device := Check{Name: "device-up", OK: be != nil && (s.Backend.Device == "" || s.Backend.DeviceUp)}
	switch {
	case be == nil:
		device.Detail = "backend not set up yet"
	case s.Backend.Device == "":
		device.Detail = "the " + s.Node.BackendType + " backend has no device"
	case s.Backend.DeviceUp:
		device.Detail = s.Backend.Device + " is up"
	default:
		device.Detail = s.Backend.Device + " is missing or down"
	}
	routes := Check{Name: "routes-in-sync", OK: be != nil && s.Backend.InSync}
	if routes.OK {
		routes.Detail = "the kernel holds the planned routes"
	} else if be != nil {
		routes.Detail = "the kernel differs from the plan (see Routes)"
	}
	etcdCheck := Check{Name: "etcd-reachable", OK: d.reach.Reachable()}
	etcdCheck.Detail = "etcd answered the last request"
	if !etcdCheck.OK {
		etcdCheck.Detail = "the last etcd request failed"
	}
	s.Checks = []Check{
		{Name: "lease-held", OK: held, Detail: leaseDetail},
		device,
		routes,
		etcdCheck,
	}
	return s
}
