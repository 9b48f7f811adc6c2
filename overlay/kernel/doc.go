// Package kernel applies a plan (overlay/plan) to a network namespace with
// netlink, reads back what the kernel holds, and keeps the two equal: Apply
// reconciles once, the Reconciler repairs drift as it happens (netlink
// events) and periodically. What to add, replace and delete is decided by
// Diff, a pure function of the plan and the tables read (golden files in
// testdata); Apply only reads, calls Diff and writes.
//
// It must remove only what twill owns:
//
//   - routes in the main table whose routing protocol is Protocol (126,
//     "twill"; free in iproute2's rt_protos). A route of another protocol
//     is never deleted. A desired route does replace a foreign route that
//     sits at exactly the same key (destination, table main, metric 0):
//     the kernel holds one route per key, and the leases say where that
//     subnet lives.
//   - every permanent neighbour entry on a twill device (the plan's Device
//     and the devices its neighbours name), and every permanent FDB entry
//     on such a device when it is a VXLAN device (including all-zero
//     default-destination entries). Entries the kernel learned (not
//     permanent) are left alone.
//
// It must not create or delete links, set addresses or touch nftables: the
// backends own their devices, overlay/kernel/nft the firewall. It works
// through a netlink handle bound to one namespace and never switches the
// calling thread's namespace itself (netlink's subscriptions do so briefly,
// on a locked thread).
//
// Diff, Compare and the types they use do no I/O and build on every
// platform; the Handle and the Reconciler are Linux-only.
package kernel
