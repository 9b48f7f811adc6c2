// Package routing is the one router every routed backend is built on
// (udp, vxlan, host-gw, ipip, bgp, macvlan/ipvlan; WireGuard next): a
// Router keeps the set of peers from lease events, builds the plan
// (overlay/plan) on every change, has a kernel.Reconciler hold the kernel
// to it, keeps twill's nftables table (masquerade, forward accept, per-peer
// counters; repaired before every pass, as no netlink event watches it),
// logs the peers the plan refuses and reports status with per-peer
// counters and those peers as PeerProblems.
//
// A backend embeds *Router, which gives it SetLease, Handle, Run, Status,
// Resync, Cleanup and Close, and adds Type and Prepare. It gives the Router
// through Config:
//   - its device's name and EnsureDevice, a function that creates or
//     repairs the device; the Router calls it before every reconcile pass,
//     so a device someone deleted comes back before the routes through it;
//   - OnPlan, a function handed every new plan with the own lease and the
//     peers' leases, for a data path of its own (udp's peer table and eBPF
//     kernel path; a BGP speaker's announcements; WireGuard's peers);
//   - OwnCounters when it counts per-peer traffic itself (udp).
//
// A backend that learns routes by a routing protocol (bgp) hands them in
// with SetLearned; the plan routes those instead of the leases.
//
// It must not pick a backend nor know what a backend's device is made of,
// and it must not touch anything outside the network namespace it was
// given. The package is Linux-only.
package routing
