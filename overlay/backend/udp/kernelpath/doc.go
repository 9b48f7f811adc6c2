// Package kernelpath is the udp backend's kernel fast path: two eBPF
// programs on the tc hooks (tcx) that carry pod packets to and from peers
// in flannel's udp wire format (an outer IPv4 and UDP header, then the
// inner IPv4 packet, nothing else) without a trip through twilld.
//
//   - On twill0's egress, a packet whose destination lies in a peer's subnet
//     gets an outer IPv4/UDP header (from this node's public IP, port Port to
//     the peer's public IP, port Port; DF set, UDP checksum zero) and is
//     handed to the underlay device with bpf_redirect_neigh, which resolves
//     the next hop as a routed packet would. A TCP or UDP super-packet (GSO)
//     stays whole: the encapsulation is marked as a UDP tunnel so that the
//     device (or the kernel's software segmentation) cuts it into datagrams
//     that each carry one whole inner packet, exactly as twilld's userspace
//     segmenter does.
//   - On the underlay device's ingress, a datagram to this node's public IP
//     and Port is taken off the wire when it is exactly one well-formed IPv4
//     packet (outer header checksum, lengths that agree), its outer source is
//     the public IP of the peer that holds the inner source, and its inner
//     destination lies in this node's subnet; the outer headers are removed
//     and the inner packet is delivered as if twill0 had received it.
//
// Anything else (IPv6, fragments, IP options, unknown peers, spoofed
// sources, packets for other nodes, a kernel helper that refuses) is left
// alone (TCX_NEXT), so it takes the userspace path, which checks it again,
// counts the drops by reason and answers ICMP. The fast path therefore
// changes nothing a peer can see and nothing an operator counts, except
// speed: per-peer packet and byte counters are kept in a per-CPU map and
// added to the userspace ones by the backend.
//
// The programs are written here with cilium/ebpf's assembler (no C
// toolchain at build time) and attached as tcx links owned by the process:
// when twilld exits, the kernel detaches them, so no program outlives the
// TUN it redirects to. tcx needs Linux 6.6; on older kernels Attach fails
// and the backend keeps everything in userspace. The package must not
// touch anything but the two hooks it attaches and the maps it creates.
package kernelpath
