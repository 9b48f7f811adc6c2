package vmtest

import (
	"context"
	"net/netip"
	"syscall"
	"time"

	"github.com/twillnet/twill/overlay/lease"
)

// Cluster is a running twill cluster as tests and scenarios drive it: a
// lab that Up brought up (Lab, whichever driver made its nodes) or
// machines where the Ansible roles installed twill (Remote). Nodes are
// named n1, n2, ... and pods as AddPod named them.
type Cluster interface {
	Name() string
	// Nodes and Node read the nodes' state now: subnet, daemon running.
	Nodes() []Node
	Node(name string) (Node, error)
	Pods() []Pod
	// AddPod attaches a new pod to node through its CNI plugin, as a
	// container runtime would; DelPod detaches and removes it.
	AddPod(ctx context.Context, node, pod string) (Pod, error)
	DelPod(ctx context.Context, pod string) error
	// Exec runs argv on a node, in a pod's namespace or on the cluster's
	// outside host (by the name Outside returns) and returns its combined
	// output.
	Exec(ctx context.Context, target string, argv ...string) ([]byte, error)
	// StartDaemon starts a node's twilld unless it runs and returns when it
	// is ready; StopDaemon sends it sig and returns when it has ended.
	StartDaemon(ctx context.Context, node string) error
	StopDaemon(ctx context.Context, node string, sig syscall.Signal) error
	// SetUnderlay takes a node's underlay link down or up.
	SetUnderlay(ctx context.Context, node string, up bool) error
	StopEtcd(ctx context.Context) error
	StartEtcd(ctx context.Context) error
	// EtcdEndpoint reaches the cluster's etcd from this machine; empty when
	// it cannot be reached from here (then the cluster is a LeaseLister).
	EtcdEndpoint() string
	EtcdPrefix() string
	// Outside is the host outside the cluster on its underlay, if it has
	// one: the target Exec knows it by, and its address.
	Outside() (target string, addr netip.Addr, ok bool)
	// Close releases this process's handles on the cluster; it keeps
	// running.
	Close() error
}

// Stores are the lease stores a lab runs.
var Stores = []string{"etcd", "kube"}

// KubeCluster is a cluster whose lease store may be the Kubernetes API.
type KubeCluster interface {
	// Store is "etcd" or "kube".
	Store() string
	// KubeLeases are the leases the Node objects publish.
	KubeLeases(ctx context.Context) ([]lease.Lease, error)
	// DeleteKubeNode deletes the Node object of a node.
	DeleteKubeNode(ctx context.Context, node string) error
}

// LeaseLister is a cluster that lists the leases itself, where etcd is not
// reachable from this machine (Remote reads them on a node).
type LeaseLister interface {
	Leases(ctx context.Context) ([]lease.Lease, error)
}

// NodeRebooter is a cluster whose nodes can be rebooted. RebootNode
// returns when the node is back with its daemon ready and its pods
// attached again; a Lab whose driver has no VMs of its own returns
// errors.ErrUnsupported.
type NodeRebooter interface {
	RebootNode(ctx context.Context, node string) error
}

// UnderlayShaper is a cluster that can make a node's underlay link lossy
// and slow (netem); zeros make it clean again. A Lab whose driver cannot
// returns errors.ErrUnsupported.
type UnderlayShaper interface {
	SetUnderlayLoss(ctx context.Context, node string, lossPercent float64, delay time.Duration) error
}

// UnderlayCapturer is a cluster whose underlay this machine can watch:
// CaptureUnderlay records every Ethernet frame that crosses the underlay
// bridge's ports while during runs, and returns them (at most the first
// 2048 bytes of each).
type UnderlayCapturer interface {
	CaptureUnderlay(ctx context.Context, during func() error) ([][]byte, error)
}

// Fabric is a cluster whose nodes sit in racks joined by a router the lab
// runs (Spec.Routed with a router).
type Fabric interface {
	// RouterNetNS is where the router runs, an Exec target; "" if the
	// cluster runs no router.
	RouterNetNS() string
	// RouterSessions returns the nodes (by name) whose session with the
	// router is established, and the router's own table (birdc show
	// protocols, vtysh show bgp summary).
	RouterSessions(ctx context.Context) (established []string, table string, err error)
	// RestartRouter restarts the router gracefully (BIRD: birdc graceful
	// restart, then bird -R), as an upgrade would, and returns once it
	// runs again.
	RestartRouter(ctx context.Context) error
}
