// Package udp is twill's udp backend: flannel's classic udp mode, wire
// compatible with it. Pod packets for other nodes are routed (one route for
// the whole cluster network, protocol 126) into the TUN device twill0; the
// backend reads them and sends each, unchanged, as the whole payload of a
// UDP datagram to port Port (8285) of the peer whose subnet holds the
// destination. No header is added, so a twill node and a flannel udp node
// talk to each other. Datagrams received are checked (decap) and the packets
// inside are written into twill0.
//
// The backend is built on overlay/backend/routing's Router, as the kernel
// backends are: the Router keeps the peers from the lease events, plans
// them (overlay/plan), holds the cluster route, twill0's address and the
// nftables table in place (repairing them within a resync), and reports
// the peers the plan refuses. This package keeps the TUN, the sockets, the
// packet loops, the kernel path and the counters. The peer table (subnet
// -> public IP) is rebuilt from each plan (the Router's OnPlan hook) and
// swapped in atomically, and the packet loops read it without locks.
//
// A deleted twill0 (ip link del) kills the TUN queues: the loops see
// EBADFD, and the Router's device hook, before its next pass, opens new
// queues (creating twill0 again), gives the device its MTU, address and
// route, attaches the kernel path to it again, and the loops restart on
// the new queues, all within a few hundred milliseconds. Run returns an
// error (and twilld exits, to be restarted) only when that repair has not
// succeeded within 10 s. Per-peer counters (packets and inner
// IP bytes each way, drops by reason, last packet received) are this
// package's atomics; nftables (overlay/kernel/nft) only masquerades and
// accepts forwarding here.
//
// A received datagram is dropped, and counted, when its outer source is no
// peer's public IP (unknown-peer), when it is not exactly one IPv4 packet
// (malformed), when the inner source is outside the sending peer's subnets
// (spoofed-source), or when the inner destination is outside this node's
// subnet (not-local). A packet from twill0 for a subnet no peer holds is
// answered with ICMP destination net unreachable (rate-limited) and counted
// as no-route.
//
// flannel accepts a datagram from anyone; twill accepts it only from a
// peer's published PublicIP. A flannel node whose datagrams leave from
// another address (its socket listens on all addresses, so the kernel picks
// the source) is dropped as unknown-peer; twill's own socket is bound to the
// public IP when that is a local address, so its datagrams carry it.
// flannel's proxy also decrements the inner TTL on each side; twill leaves
// it alone (the kernel decrements it when it forwards, and the not-local
// check means a datagram is never forwarded on to another peer, so no loop
// needs the TTL to end it). Neither difference shows on the wire format.
//
// The kernel path (KernelPath, the default where the kernel has what the
// programs need, Linux 5.10 and later: attached with tcx from 6.6, as
// classic tc filters before): package kernelpath attaches two eBPF programs, on twill0's
// egress and on the underlay device's ingress, that do what the loops
// below do without leaving the kernel: encapsulate a packet (a TCP
// super-packet stays whole, marked as a UDP tunnel, and is cut into
// flannel datagrams by the device or the kernel's segmentation), and take a
// peer's datagram off the wire, check it as decap does, and deliver the
// inner packet straight into the local pod's namespace (or through twill0
// for addresses that are not known pods). Anything the programs do not
// handle (a peer that did not advertise the kernel path, an unknown peer,
// anything malformed) is left to the userspace loops, which check, count
// and answer it as before, so the wire format and the drop counters do not
// change. A node running the kernel path says so in its lease
// (BackendData {"KernelPath":true}); only to such peers does the egress
// program send, because over veth or virtio a kernel-sent datagram may
// carry an inner checksum the kernel left partial, which only a kernel
// receiver completes.
//
// Restarts. The data path outlives twilld: twill0 is a persistent TUN
// (its address and the cluster route stay when the queues close), and the
// kernel path stays attached with its maps (and tcx links) pinned under
// kernelpath.PinDir. The next Backend in the namespace opens its queues on
// the same twill0 and takes the kernel path over (kernelpath.Attach with
// the same PinDir: the pinned peers, pods, counters and subnet, its
// programs swapped in without a gap), and keeps the taken-over peers
// until the first Handle (or adoptGrace). Close lets go of all of it and
// leaves it in the kernel, as a stopping twilld does; Cleanup removes it
// (twill0, pins, filters). RemoveLeftovers removes it for a node whose
// config changed to another backend. The userspace loops' counters start
// from zero with each Backend; the kernel path's carry on.
//
// The userspace data path (Offload, the default where the kernel path
// does not run) moves each byte with four copies between kernel and
// userspace and no copy inside twilld:
//
//   - twill0 is opened here, on golang.org/x/sys/unix, with IFF_VNET_HDR,
//     and told (TUNSETOFFLOAD) that it may hand over TCP and UDP
//     super-packets of up to 64 KiB with partial checksums (TSO, USO where
//     the kernel has it). A TX loop reads super-packets until the queue is
//     empty (up to 64), and the segmenter cuts each into flannel datagrams:
//     every datagram is one whole inner IPv4 packet with valid checksums, a
//     fresh copy of the headers fixed up as the kernel's own segmentation
//     would (lengths, IP ID, TCP sequence and flags) in front of a slice of
//     the super-packet's payload. The payload is read once for the
//     checksums (eight bytes per step) and never copied.
//   - The datagrams of one super-packet to one peer go out as one UDP GSO
//     message (the UDP_SEGMENT control message, at most 64 datagrams and
//     64 KiB), its iovecs pointing at the headers and payload slices;
//     the whole batch is one sendmmsg. On the wire these are ordinary
//     datagrams: the kernel (or the NIC) cuts them apart.
//   - The socket has UDP GRO: one recvmmsg takes up to 32 messages, each a
//     run of up to 64 KiB of datagrams of one flow and its size in a control
//     message (two stages: one goroutine receives and checks, another
//     writes into twill0, three batches between them, so that on several
//     CPUs one batch is written while the next is received). Every
//     datagram is checked (decap) on its own; then the
//     coalescer merges runs of TCP segments of one flow (consecutive
//     sequence numbers, same headers and options, only ACK/PSH) into one
//     super-packet that is written to twill0 with one writev: a virtio-net
//     header (TCPv4 GSO, CHECKSUM_PARTIAL), the merged headers and the
//     payload slices. Other packets are written one by one with an empty
//     virtio-net header, so the kernel checks their checksums. The kernel
//     trusts a merged super-packet's partial checksum, so each segment's
//     TCP checksum is verified before it is merged (the outer UDP checksum
//     may be zero: IPv4 allows it, and the kernel path sends it so); a
//     segment that fails is written alone and the kernel drops it.
//
// A plain flannel peer sends and takes single datagrams: GRO hands those
// over one per message, and they are checked and coalesced like the
// others; what GSO sends looks the same on the wire as what flannel sends.
// When the kernel refuses a GSO send (EIO: no checksum offload on the
// route's device; EINVAL or ENOPROTOOPT: an old kernel), GSO is turned off
// for good and the batch goes out as single datagrams; a socket that
// refuses UDP_GRO just receives single datagrams (and with the kernel path
// UDP GRO is off, so that a device's GRO cannot merge datagrams before the
// ingress program sees them). "KernelPath": false keeps every packet in
// userspace; "Offload": false turns all of it off, the kernel path too,
// for debugging: no virtio-net header (one packet per TUN read or write),
// no GSO, no GRO, no coalescing; the UDP side is still batched (sendmmsg,
// recvmmsg).
//
// Queues. twill0 gets one queue per two CPUs (IFF_MULTI_QUEUE when more
// than one; TWILL_UDP_QUEUES overrides), each with its own SO_REUSEPORT
// socket and a TX and an RX loop. The TUN spreads flows over its queues;
// a peer's datagrams all carry ports 8285 to 8285, so they reach one socket
// whatever the number of queues.
//
// The TUN is opened here rather than through a library: songgao/water
// cannot open one with IFF_VNET_HDR and has had no commit since 2020;
// wireguard-go's tun package can, but its Read splits super-packets into
// copies and its Write coalesces only what its own Read produced, while
// twill needs the payload in place for scatter-gather sends and its own
// coalescing of received datagrams.
//
// The backend works in the namespace backend.Node.NetNS: the TUN and the
// socket are created on a locked OS thread switched into it; the Router's
// netlink, overlay/kernel and nftables handles are bound to it.
//
// It must not touch other nodes' state or anything it did not create, nor
// keep kernel state of its own beside the Router's: routes, twill0's address
// and the firewall go through the Router (overlay/kernel, protocol 126;
// overlay/kernel/nft). Cleanup removes twill0, twill's routes and the twill
// nftables table. The package is Linux-only but compiles elsewhere (New then
// returns a backend whose Prepare fails).
package udp
