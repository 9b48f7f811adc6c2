// Package vmtest brings up whole twill clusters on one machine, for tests,
// scenarios and labs: an etcd, one real twilld per node, pods attached
// through the real CNI plugin, and the handles to disturb them (stop a
// daemon, cut a node's underlay, stop etcd, reboot a VM).
//
// Cluster (cluster.go) is what tests and scenarios drive. Two kinds of
// cluster implement it:
//
//   - Lab (lab_linux.go), what Up brings up. A lab is a hub
//     (hub_linux.go: a namespace <lab>-hub with the underlay bridge, where
//     etcd listens; the outside namespace; with Spec.HostAccess one veth in
//     the host's namespace; the state in StateDir/<name>/state.json) and
//     nodes made by one driver (driver_linux.go), chosen from the spec once,
//     when the Lab is made: netns (netns_linux.go: each node a network
//     namespace of this host, the fast tier), qemu (qemu_linux.go: each
//     node a VM with its own kernel, a tap on the hub's bridge, driven
//     through an agent on a virtio-serial port, package vmtest/agent; only
//     it can RebootNode and SetUnderlayLoss) or, with Spec.SystemImage,
//     the system image driver (system_linux.go: whole Debian systems with
//     systemd and sshd, left bare for Ansible to install twill).
//     With Spec.Routed (fabric_linux.go) the nodes (namespaces or the
//     initramfs VMs) sit in racks of their own /28 instead of on one
//     segment, and the hub routes between them, running BIRD 2 or FRR
//     (Fabric) when asked.
//   - Remote (remote.go), machines where the Ansible roles installed twill,
//     reached over SSH only: a system image lab's VMs (Lab.Remote) and a
//     running Vagrant cluster (OpenVagrant, vagrant.go). A Remote starts
//     and installs nothing; what it cannot do (a reboot, netem) it has no
//     method for.
//
// Every namespace, link, process and file of a lab carries the lab's name,
// so that another process (twillctl lab status, pod add) attaches with
// Open, and Down removes everything, also what a crashed run left behind.
// Labs are Linux's (namespaces, bridges, taps); Remote and OpenVagrant
// build everywhere.
//
// vmtest drives the binaries as a user would: it imports nothing from
// overlay/daemon, and it must not touch namespaces, links or processes that
// are not its lab's.
package vmtest
