// Package link holds the small netlink helpers that a backend and the CNI
// plugin both need: the macvlan or ipvlan sub-interface to create for a
// backend type and mode, and the default gateway among a link's routes.
//
// It is a leaf: it builds netlink values and reads what it is handed. It
// must not change the kernel (its callers do) nor import the backends, the
// kernel package or nftables, so that the CNI plugin links none of them.
// The package is Linux-only.
package link
