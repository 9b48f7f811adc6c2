// Package bgp is the bgp backend: subnets are leased from the store as
// for every backend, and an embedded BGP speaker (GoBGP, in twilld)
// originates this node's subnet and learns the others' from its peers: every
// other bgp node found in the leases (the node-to-node mesh, NodeMesh) and
// the network's routers (Backend.Peers). The routes it learns reach the
// kernel through routing.Router (Router.SetLearned; overlay/plan turns them
// into routes of twill's protocol), with a blackhole route for the own
// subnet. With IPIP Always (every learned route) or CrossSubnet (those
// whose next hop is off this node's subnet) the routes go through the
// ipip device twill.ipip, onlink via the next hop (routing.EnsureIPIP,
// the ipip backend's device). Every session has graceful restart: when twilld stops, its
// routes stay in the kernel and its peers keep the routes it advertised;
// when it starts again it keeps the kernel's routes until every peer has
// sent its End-of-RIB (or RestartTime has passed), and, having found
// twill's routes in the kernel, opens its sessions as a restarting speaker
// that kept its forwarding state: the peers keep its routes until its own
// End-of-RIB, which it sends after theirs, so a router does not even
// re-install them.
//
// It must not route from the leases (they give only the mesh's peers and
// the dashboard's node names), nor listen or dial outside the node's
// underlay address. GoBGP makes its outgoing connections from goroutines
// of its own, which no namespace can be pinned to: the backend therefore
// runs only in twilld's own network namespace (backend.Node.NetNS empty;
// the labs start twilld inside each node's namespace). The package is
// Linux-only.
package bgp
