// Package kernelpath is the udp backend's kernel fast path: two eBPF
// programs on the tc hooks (tcx or classic tc) that carry pod packets to
// and from peers in flannel's udp wire format (an outer IPv4 and UDP
// header, then the inner IPv4 packet, nothing else) without a trip
// through twilld.
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
// alone (TCX_NEXT, which is tc's TC_ACT_UNSPEC), so it takes the userspace path, which checks it again,
// counts the drops by reason and answers ICMP. The fast path therefore
// changes nothing a peer can see and nothing an operator counts, except
// speed: per-peer packet and byte counters are kept in a per-CPU map and
// added to the userspace ones by the backend.
//
// The programs are written here with cilium/ebpf's assembler (no C
// toolchain at build time). They need Linux 5.10 (bpf_redirect_neigh and
// bpf_redirect_peer; everything else they use is older: __sk_buff's
// gso_size 5.7, bpf_skb_adjust_room's BPF_ADJ_ROOM_MAC and encap flags
// 5.2, LPM tries 4.11, bpf_csum_diff and per-CPU arrays 4.6). Supported
// probes the kernel for each helper, map type and the instruction set
// rather than reading its version, and names what is missing.
//
// Attachment. Config.Attach chooses: tcx (Linux 6.6), classic tc, or auto
// (the default: tcx, and tc where the kernel has no tcx, found by trying).
// Path.Attachment says which is in use.
//
//   - tcx: a link per hook, appended after the programs already there
//     (link.Tail): they keep seeing every packet they saw before, and
//     twill's program sees what they pass on. Without Config.PinDir the
//     links belong to the process and the kernel detaches them when it
//     exits; with it they are pinned and stay. tcx programs run before
//     any classic tc filter of the device, so those do not see the
//     datagrams twill's program takes.
//   - tc: a direct-action cls_bpf filter per hook, for all protocols, on
//     the device's clsact qdisc. An existing clsact qdisc (or, for the
//     underlay's ingress, an ingress qdisc) is used as it is; twill makes
//     one only where there is none, and removes on Close only one it made,
//     and only when no filter of anyone is left on it (deleting a qdisc
//     deletes its filters). twill's filters have handle TCHandle (0x7477),
//     are named after their programs (twill_udp_egr, twill_udp_ingr), and
//     sit at priority TCPriority (50000), or the next one of the 16 from
//     there that holds no one else's filter. Filters run in ascending
//     priority, so twill's come after Cilium's (priority 1) and after
//     filters added without a priority (the kernel numbers those from 49152
//     down), with the same effect as tcx's order. A filter of twill's at
//     that handle (one a twilld left behind) is replaced in place, the
//     program swapped without a gap; Close removes a filter only while it
//     still runs this Path's program. Nothing else on either device is
//     ever changed. tc filters outlive the process: a twilld killed before
//     Close leaves them; the next Attach replaces them, or with tcx
//     removes them (they would run after its links), and Cleanup removes
//     them for good.
//
// Pinning (Config.PinDir, under PinDir of the namespace): the maps and
// the tcx links are pinned there, so that the data path outlives twilld.
// Attach with the same PinDir reuses the pinned maps (a layout that does
// not match is made afresh), takes over the peers, their counter slots,
// the pods and the subnet, and swaps its programs in without a moment with
// no program: link.Update on a pinned link of the same device, or the tc
// filter replaced in place. Release lets go and leaves everything
// attached; Close detaches and removes the pins; Cleanup removes what a
// stopped twilld left (pins and filters).
//
// The package must not touch anything but the two hooks it attaches, the
// clsact qdiscs it makes, the maps it creates and its pin directory.
package kernelpath
