// Package sublink is the macvlan and ipvlan backends, the sublink backends:
// pods sit directly on the underlay (the node's uplink network), each with a
// sub-link of the node's master interface (a macvlan or ipvlan child, made by
// the CNI plugin), and take addresses from the node's slice of a range of the
// underlay subnet (the network config's Network), leased through etcd as
// every backend's subnet is. Nothing is tunnelled and, in the L2 modes,
// nothing is routed between nodes: the underlay's switch delivers pod
// traffic by MAC address.
//
// One package serves both types because they differ only in the kind of
// sub-link and its modes; the checks, the host interface and the lifecycle
// are the same.
//
// The backend checks that the master exists and that Network lies inside its
// subnet, reports the master's MTU for pods, and keeps twill.host: a
// sub-link of the master, in the configured mode, that carries the first
// address of the node's slice and the route to the slice. The kernel does not
// pass traffic between a macvlan (or ipvlan) parent and its children, so
// without it the node could not reach its own pods (health checks, the
// dashboard). In ipvlan's routed modes (l3, l3s) the underlay does not learn
// pod addresses by ARP, so the backend also routes each peer's slice via the
// peer's public IP, as host-gw does.
//
// It must not attach pods (the CNI plugin does) nor touch interfaces other
// than twill.host and routes other than twill's. The package is Linux-only.
package sublink
