package vmtest

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// A driver makes a lab's nodes and drives them. The lab itself is the hub
// (hub_linux.go: the hub namespace with the underlay bridge, the host's
// link, etcd, the outside namespace) and the state; it keeps the books of
// nodes and pods and leaves to the driver what differs between a network
// namespace and a VM. newDriver chooses the driver from the spec, once,
// when a Lab is made (Up, Open, Down).
//
// A driver reads and changes the lab's state through its Lab (l.st while
// the lab is built; snapshot and update after). The methods that take a
// nodeState are called inside update, with the lab's lock held: they must
// not call snapshot or update themselves.
type driver interface {
	// prepare readies what the nodes are made from (an image, a CNI
	// directory), before the hub and any node exist; st.Bin is known.
	prepare(ctx context.Context) error
	// makeNode makes node i, whose state the lab has filled in and saved,
	// with its link HubLink on the hub's bridge and its underlay address
	// in a /bits. A VM is started, not waited for (boot waits).
	makeNode(ctx context.Context, i int, bits int) error
	// boot returns when every node answers.
	boot(ctx context.Context) error
	// bare says that the lab runs no twill of its own: no etcd, no
	// daemons, no pods (a system image's, where Ansible installs twill).
	bare() bool
	startDaemon(ctx context.Context, node string) error
	stopDaemon(ctx context.Context, node string, sig syscall.Signal) error
	// exec runs argv on a target Exec was given: a node's or pod's name,
	// or a namespace of the lab.
	exec(ctx context.Context, target string, argv []string) ([]byte, error)
	// attachPod makes pod p's namespace on node n and attaches it with the
	// CNI plugin; detachPod undoes it.
	attachPod(ctx context.Context, n nodeState, p Pod) (podAddrs, error)
	detachPod(ctx context.Context, n nodeState, p Pod) error
	// view fills in what only the driver knows of node n now: its subnet
	// and whether its twilld runs.
	view(n nodeState, node *Node)
	// down ends what the driver keeps besides processes (shared SSH
	// connections) and returns its processes, for Down to stop.
	down(ctx context.Context) []proc
	// close releases this process's handles (agent connections).
	close() error
}

// rebooter is a driver that can reboot a node (Lab.RebootNode).
type rebooter interface {
	rebootNode(ctx context.Context, node string) error
}

// shaper is a driver that can make a node's underlay lossy
// (Lab.SetUnderlayLoss).
type shaper interface {
	setUnderlayLoss(ctx context.Context, node string, lossPercent float64, delay time.Duration) error
}

// newDriver chooses lab l's driver by its spec.
func newDriver(l *Lab, spec Spec) (driver, error) {
	switch {
	case spec.Driver == "netns":
		return &netnsDriver{l: l}, nil
	case spec.Driver == "qemu" && spec.SystemImage != "":
		return &systemDriver{l: l}, nil
	case spec.Driver == "qemu":
		return &qemuDriver{l: l}, nil
	}
	return nil, fmt.Errorf("lab %s: driver %q: want one of %v", l.name, spec.Driver, Drivers)
}
