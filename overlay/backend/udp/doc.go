// Package udp is twill's udp backend: flannel's classic udp mode, wire
// compatible with it. Pod packets for other nodes are routed (one route for
// the whole cluster network, protocol 126) into the TUN device twill0; the
// backend reads them and sends each, unchanged, as the whole payload of a
// UDP datagram to port Port (8285) of the peer whose subnet holds the
// destination. No header is added, so a twill node and a flannel udp node
// talk to each other. Datagrams received are checked (decap) and the packets
// inside are written into twill0.
//
// The peer table (subnet -> public IP) lives here: it is rebuilt from the
// lease events (through overlay/plan) and swapped in atomically, and the
// packet loops read it without locks. Per-peer counters (packets and inner
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
// I/O is batched from the start: the TUN is golang.zx2c4.com/wireguard/tun
// (Read(bufs, sizes, offset) / Write(bufs, offset), BatchSize), the socket
// goes through golang.org/x/net/ipv4's ReadBatch and WriteBatch (recvmmsg,
// sendmmsg). wireguard-go's tun is used rather than songgao/water because
// water cannot open a TUN with IFF_VNET_HDR (so no segmentation offload,
// one packet per system call) and has had no commit since 2020; wireguard-go's
// tun is maintained, and with IFF_VNET_HDR it takes the kernel's TCP/UDP
// super-packets and splits them (TSO/USO) on Read, and coalesces received
// segments (GRO) on Write.
//
// Offload. The backend opens /dev/net/tun itself, in the node's namespace,
// and hands the descriptor to tun.CreateUnmonitoredTUNFromFD (which also
// skips wireguard-go's link-watching goroutines, which twill does not need).
// With Offload (the default) it sets IFF_VNET_HDR, and the tun package turns
// on TSO (and USO where the kernel has it) and batches of up to 128
// packets. With "Offload": false it does not: every Read and Write of the
// TUN carries one packet, the kernel segments before the TUN, and nothing is
// coalesced. The UDP side is batched either way. UDP GSO/GRO on the socket
// is not used yet.
//
// The backend works in the namespace backend.Node.NetNS: the TUN and the
// socket are created on a locked OS thread switched into it; netlink,
// overlay/kernel and nftables work through handles bound to it.
//
// It must not touch other nodes' state or anything it did not create: routes
// go through overlay/kernel (protocol 126), the firewall through
// overlay/kernel/nft. Cleanup removes twill0, twill's routes and the twill
// nftables table. The package is Linux-only but compiles elsewhere (New then
// returns a backend whose Prepare fails).
package udp
