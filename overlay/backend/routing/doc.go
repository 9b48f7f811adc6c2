// Package routing is the part shared by the backends whose data path the
// kernel carries (vxlan, host-gw, ipip): a Router keeps the set of peers
// from lease events, builds the plan (overlay/plan) on every change, has a
// kernel.Reconciler hold the kernel to it, keeps twill's nftables table
// (masquerade, forward accept, per-peer counters) and reports status with
// per-peer counters.
//
// A backend gives the Router its device's name and a function that creates
// or repairs the device; the Router calls it before every reconcile pass, so
// a device someone deleted comes back before the routes through it.
//
// It must not pick a backend nor know what a backend's device is made of,
// and it must not touch anything outside the network namespace it was
// given. The package is Linux-only.
package routing
