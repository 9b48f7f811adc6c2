// Package vmtest brings up whole twill clusters on one machine, for tests,
// scenarios and labs: an etcd, one real twilld process per node, pods
// attached through the real CNI plugin, and the handles to disturb them
// (stop a daemon, cut a node's underlay, stop etcd).
//
// The netns driver makes each node a network namespace on a shared underlay
// bridge. The bridge lives in a "hub" namespace of its own, so a lab changes
// nothing in the host's own namespace unless Spec.HostAccess asks for one
// veth there (for a browser on the host to reach the dashboards). Every
// namespace, link, process and file of a lab carries the lab's name, and a
// lab's state is kept in StateDir/<name>/state.json, so that another process
// (twillctl lab status, pod add) can attach with Open and Down can remove
// everything, also what a crashed run left behind.
//
// The qemu driver (qemu_linux.go) keeps the hub, its bridge, etcd and the
// outside namespace, and makes each node a VM with its own kernel instead:
// its eth0 is a tap device on the hub's bridge, and the host drives it
// through an agent on a virtio-serial port (package vmtest/agent), so
// faults only a VM has (RebootNode, SetUnderlayLoss) are possible; the
// netns driver reports them as unsupported. Cluster's methods dispatch to
// the lab's driver.
//
// With Spec.SystemImage the qemu driver boots whole Debian systems
// (systemd, sshd) from the image of scripts/rollout-image.sh instead, and
// leaves them bare for Ansible to install twill (system_linux.go). Machines
// where the Ansible roles installed twill are driven as a Remote cluster,
// over SSH only (remote_linux.go): a system image lab's VMs
// (Cluster.Remote) and a running Vagrant cluster (OpenVagrant, the vagrant
// driver). A Remote reports what it cannot do (a reboot, netem) as
// unsupported.
//
// vmtest drives the binaries as a user would: it imports nothing from
// overlay/daemon, and it must not touch namespaces, links or processes that
// are not its lab's.
package vmtest
