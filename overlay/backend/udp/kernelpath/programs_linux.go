package kernelpath

import (
	"github.com/cilium/ebpf/asm"
)

// Offsets into struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbLen      = 0
	skbPktType  = 4
	skbProtocol = 16
	skbGSOSize  = 176
)

// Return codes of a tcx program; a direct-action tc filter's are the same
// numbers (TC_ACT_UNSPEC, TC_ACT_SHOT), so one program serves both.
const (
	tcxNext = -1 // not ours: the next program or filter, then the stack, decides
	tcxDrop = 2
)

// bpf_skb_adjust_room's mode and flags.
const (
	adjRoomMAC      = 1
	adjFixedGSO     = 1 << 0
	adjEncapL3IPv4  = 1 << 1
	adjEncapL4UDP   = 1 << 4
	adjDecapL4UDP   = 1 << 10 // newer kernels: also clears the tunnel GSO state
	bpfFIngress     = 1
	ethPIPLittle    = 0x0008 // htons(ETH_P_IP) read as a little-endian word
	ipProtoTCP      = 6
	ipProtoUDP      = 17
	outerLen        = 20 + 8 // outer IPv4 and UDP headers
	ethLen          = 14
	innerAfterEncap = ethLen + outerLen
)

// The stack frame both programs use (offsets from R10).
const (
	fpConfigKey = -4   // u32: 0, the key of the config map
	fpSlotKey   = -8   // u32: the stats slot of the peer
	fpInnerLen  = -16  // u64: the inner packet's length
	fpOuter     = -68  // ingress: 48 bytes, outer IPv4 + UDP + inner IPv4
	fpInner     = -40  // 20 bytes: the inner IPv4 header (both programs)
	fpTCPByte   = -72  // u8: the inner TCP header's data offset byte
	fpLPMKey    = -80  // 8 bytes: prefix length and address
	fpBytes     = -88  // u64: the inner bytes to count
	fpBuild     = -120 // egress: 28 bytes, the outer header being built
)

// The config map's value (little endian, 24 bytes).
const (
	cfgLocalIP  = 0  // be32, this node's public IP
	cfgPorts    = 4  // be16 source port, be16 destination port
	cfgSubnet   = 8  // be32, this node's subnet
	cfgMask     = 12 // be32, its mask
	cfgTUN      = 16 // u32, twill0's ifindex
	cfgUnderlay = 20 // u32, the underlay device's ifindex
	cfgSize     = 24
)

// The peers map's value: the peer's public IP (be32), its stats slot, and
// whether the egress program sends to it (the peer runs the kernel path
// too; see Peer.Send).
const (
	peerIP   = 0
	peerSlot = 4
	peerSend = 8
	peerSize = 12
)

// The pods map's value: the pod's MAC, the bridge's MAC, the ifindex of
// the pod's veth on the node.
const (
	podMACs    = 0 // 12 bytes: destination then source, as in an Ethernet header
	podIfindex = 12
	podSize    = 16
)

// The stats map's value (per CPU).
const (
	statTxPackets = 0
	statTxBytes   = 8
	statRxPackets = 16
	statRxBytes   = 24
	statRxLast    = 32
	statSize      = 40
)

// builder collects instructions and attaches pending labels to the next one.
type builder struct {
	insns   asm.Instructions
	pending string
}

func (b *builder) label(name string) { b.pending = name }

func (b *builder) emit(ins ...asm.Instruction) {
	for _, in := range ins {
		if b.pending != "" {
			in = in.WithSymbol(b.pending)
			b.pending = ""
		}
		b.insns = append(b.insns, in)
	}
}

// call emits a helper call with up to five register arguments already set.
func (b *builder) call(fn asm.BuiltinFunc) { b.emit(fn.Call()) }

// lookup emits map_lookup_elem(map, R10+keyOff); the result is in R0.
func (b *builder) lookup(mapName string, keyOff int16) {
	b.emit(
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapName),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, int32(keyOff)),
	)
	b.call(asm.FnMapLookupElem)
}

// fold16 folds the 32-bit one's complement sum in R0 to 16 bits (no
// complement). Uses R1.
func (b *builder) fold16() {
	for range 2 {
		b.emit(
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.RSh.Imm(asm.R1, 16),
			asm.And.Imm(asm.R0, 0xffff),
			asm.Add.Reg(asm.R0, asm.R1),
		)
	}
}

// count adds one packet (or a super-packet's segments) to the peer's stats
// slot. On entry: R6 the skb, R8 the peer value, the inner header at
// fpInner, its length at fpInnerLen; innerOff is where the inner packet
// starts in the skb now. rx also sets the last-received time. Clobbers
// R0-R5 and R9.
func (b *builder) count(prefix string, innerOff int32, rx bool) {
	l := func(s string) string { return prefix + s }
	b.emit(
		asm.Mov.Imm(asm.R9, 1),
		asm.LoadMem(asm.R2, asm.R10, fpInnerLen, asm.DWord),
		asm.StoreMem(asm.R10, fpBytes, asm.R2, asm.DWord),
		asm.LoadMem(asm.R3, asm.R6, skbGSOSize, asm.Word),
		asm.JEq.Imm(asm.R3, 0, l("store")),
		// hdr = ihl*4 + the transport header
		asm.LoadMem(asm.R4, asm.R10, fpInner, asm.Byte),
		asm.And.Imm(asm.R4, 0x0f),
		asm.LSh.Imm(asm.R4, 2),
		asm.LoadMem(asm.R5, asm.R10, fpInner+9, asm.Byte),
		asm.JEq.Imm(asm.R5, ipProtoUDP, l("udp")),
		asm.JNE.Imm(asm.R5, ipProtoTCP, l("store")),
		asm.Mov.Reg(asm.R9, asm.R4),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R4),
		asm.Add.Imm(asm.R2, innerOff+12),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpTCPByte),
		asm.Mov.Imm(asm.R4, 1),
	)
	b.call(asm.FnSkbLoadBytes)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, l("one")),
		asm.LoadMem(asm.R4, asm.R10, fpTCPByte, asm.Byte),
		asm.RSh.Imm(asm.R4, 4),
		asm.LSh.Imm(asm.R4, 2),
		asm.Add.Reg(asm.R4, asm.R9),
		asm.Ja.Label(l("segs")),
	)
	b.label(l("udp"))
	b.emit(asm.Add.Imm(asm.R4, 8))
	b.label(l("segs"))
	b.emit(
		asm.LoadMem(asm.R3, asm.R6, skbGSOSize, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, fpInnerLen, asm.DWord),
		asm.JLE.Reg(asm.R2, asm.R4, l("one")),
		asm.Sub.Reg(asm.R2, asm.R4),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.Sub.Imm(asm.R2, 1),
		asm.Div.Reg(asm.R2, asm.R3),
		asm.Mov.Reg(asm.R9, asm.R2),
		// bytes = len + (segs-1)*hdr: every segment carries the headers
		asm.Sub.Imm(asm.R2, 1),
		asm.Mul.Reg(asm.R2, asm.R4),
		asm.LoadMem(asm.R5, asm.R10, fpInnerLen, asm.DWord),
		asm.Add.Reg(asm.R2, asm.R5),
		asm.StoreMem(asm.R10, fpBytes, asm.R2, asm.DWord),
		asm.Ja.Label(l("store")),
	)
	b.label(l("one"))
	b.emit(asm.Mov.Imm(asm.R9, 1))
	b.label(l("store"))
	b.emit(
		asm.LoadMem(asm.R2, asm.R8, peerSlot, asm.Word),
		asm.StoreMem(asm.R10, fpSlotKey, asm.R2, asm.Word),
	)
	b.lookup("stats", fpSlotKey)
	pk, by := int16(statTxPackets), int16(statTxBytes)
	if rx {
		pk, by = statRxPackets, statRxBytes
	}
	b.emit(
		asm.JEq.Imm(asm.R0, 0, l("done")),
		asm.LoadMem(asm.R1, asm.R0, pk, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R9),
		asm.StoreMem(asm.R0, pk, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, by, asm.DWord),
		asm.LoadMem(asm.R2, asm.R10, fpBytes, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R0, by, asm.R1, asm.DWord),
	)
	if rx {
		b.emit(asm.Mov.Reg(asm.R9, asm.R0))
		b.call(asm.FnKtimeGetNs)
		b.emit(asm.StoreMem(asm.R9, statRxLast, asm.R0, asm.DWord))
	}
	b.label(l("done"))
}

// prologue checks IPv4 and loads the config into R7 (passing when there is
// none yet).
func (b *builder) prologue() {
	b.emit(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ethPIPLittle, "pass"),
		asm.StoreImm(asm.R10, fpConfigKey, 0, asm.Word),
	)
	b.lookup("config", fpConfigKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R2, asm.R7, cfgLocalIP, asm.Word),
		asm.JEq.Imm(asm.R2, 0, "pass"),
	)
}

// epilogue emits the pass exit, and the drop exit if the program uses it
// (the verifier refuses unreachable instructions).
func (b *builder) epilogue(drop bool) {
	b.label("pass")
	b.emit(asm.Mov.Imm(asm.R0, tcxNext), asm.Return())
	if drop {
		b.label("drop")
		b.emit(asm.Mov.Imm(asm.R0, tcxDrop), asm.Return())
	}
}

// egressProgram is attached to twill0's egress: packets for peers are
// encapsulated and sent out of the underlay device.
func egressProgram() asm.Instructions {
	var b builder
	b.prologue()
	// The inner IPv4 header; twill0 has no link-layer header.
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpInner),
		asm.Mov.Imm(asm.R4, 20),
	)
	b.call(asm.FnSkbLoadBytes)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R10, fpInner, asm.Byte),
		asm.RSh.Imm(asm.R2, 4),
		asm.JNE.Imm(asm.R2, 4, "pass"),
		// The peer whose subnet holds the destination.
		asm.StoreImm(asm.R10, fpLPMKey, 32, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, fpInner+16, asm.Word),
		asm.StoreMem(asm.R10, fpLPMKey+4, asm.R2, asm.Word),
	)
	b.lookup("peers", fpLPMKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMem(asm.R2, asm.R8, peerSend, asm.Word),
		asm.JEq.Imm(asm.R2, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.StoreMem(asm.R10, fpInnerLen, asm.R2, asm.DWord),

		// The outer IPv4 header: version 4, IHL 5, TOS 0, total length.
		asm.Add.Imm(asm.R2, outerLen),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.LSh.Imm(asm.R2, 16),
		asm.Or.Imm(asm.R2, 0x45),
		asm.StoreMem(asm.R10, fpBuild, asm.R2, asm.Word),
		// ID 0, DF; TTL 64, protocol UDP, checksum 0 for now.
		asm.StoreImm(asm.R10, fpBuild+4, 0x00400000, asm.Word),
		asm.StoreImm(asm.R10, fpBuild+8, 0x1140, asm.Word),
		asm.LoadMem(asm.R2, asm.R7, cfgLocalIP, asm.Word),
		asm.StoreMem(asm.R10, fpBuild+12, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, peerIP, asm.Word),
		asm.StoreMem(asm.R10, fpBuild+16, asm.R2, asm.Word),
		// UDP: ports, length, checksum 0 (allowed over IPv4).
		asm.LoadMem(asm.R2, asm.R7, cfgPorts, asm.Word),
		asm.StoreMem(asm.R10, fpBuild+20, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, fpInnerLen, asm.DWord),
		asm.Add.Imm(asm.R2, 8),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.R10, fpBuild+24, asm.R2, asm.Word),
		// The header checksum.
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpBuild),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, 0),
	)
	b.call(asm.FnCsumDiff)
	b.fold16()
	b.emit(
		asm.Xor.Imm(asm.R0, 0xffff),
		asm.StoreMem(asm.R10, fpBuild+10, asm.R0, asm.Half),

		// A super-packet is marked as a UDP tunnel (its segments keep the
		// inner MSS); a single packet just gets the headers in front, as
		// adjust_room refuses to grow it past twill0's MTU.
		asm.LoadMem(asm.R2, asm.R6, skbGSOSize, asm.Word),
		asm.JEq.Imm(asm.R2, 0, "single"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, outerLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, adjFixedGSO|adjEncapL3IPv4|adjEncapL4UDP),
	)
	b.call(asm.FnSkbAdjustRoom)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen),
		asm.Mov.Imm(asm.R3, 0),
	)
	b.call(asm.FnSkbChangeHead)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.Ja.Label("write"),
	)
	b.label("single")
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen+outerLen),
		asm.Mov.Imm(asm.R3, 0),
	)
	b.call(asm.FnSkbChangeHead)
	b.emit(asm.JNE.Imm(asm.R0, 0, "pass"))
	// The link-layer header stays zero: bpf_redirect_neigh replaces it.
	b.label("write")
	b.emit(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpBuild),
		asm.Mov.Imm(asm.R4, outerLen),
		asm.Mov.Imm(asm.R5, 0),
	)
	b.call(asm.FnSkbStoreBytes)
	b.emit(asm.JNE.Imm(asm.R0, 0, "drop"))
	b.count("tx_", innerAfterEncap, false)
	b.emit(
		asm.LoadMem(asm.R1, asm.R7, cfgUnderlay, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
	)
	b.call(asm.FnRedirectNeigh)
	b.emit(asm.Return())
	b.epilogue(true)
	return b.insns
}

// ingressProgram is attached to the underlay device's ingress: peers'
// datagrams are decapsulated and delivered through twill0.
func ingressProgram() asm.Instructions {
	var b builder
	b.prologue()
	b.emit(
		asm.LoadMem(asm.R2, asm.R6, skbPktType, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "pass"), // PACKET_HOST only
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpOuter),
		asm.Mov.Imm(asm.R4, outerLen+20),
	)
	b.call(asm.FnSkbLoadBytes)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "pass"),
		// IPv4 without options, UDP, not a fragment, to us, to our port.
		asm.LoadMem(asm.R2, asm.R10, fpOuter, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "pass"),
		asm.LoadMem(asm.R2, asm.R10, fpOuter+9, asm.Byte),
		asm.JNE.Imm(asm.R2, ipProtoUDP, "pass"),
		asm.LoadMem(asm.R2, asm.R10, fpOuter+6, asm.Half),
		asm.And.Imm(asm.R2, 0xff3f), // MF and the offset, read little endian
		asm.JNE.Imm(asm.R2, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R10, fpOuter+16, asm.Word),
		asm.LoadMem(asm.R3, asm.R7, cfgLocalIP, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		asm.LoadMem(asm.R2, asm.R10, fpOuter+22, asm.Half),
		asm.LoadMem(asm.R3, asm.R7, cfgPorts+2, asm.Half),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		// The outer header checksum (the stack's ip_rcv is skipped).
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpOuter),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, 0),
	)
	b.call(asm.FnCsumDiff)
	b.fold16()
	b.emit(
		asm.JNE.Imm(asm.R0, 0xffff, "pass"),
		// Exactly one inner packet: the lengths agree.
		asm.LoadMem(asm.R2, asm.R10, fpOuter+2, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.LoadMem(asm.R3, asm.R10, fpOuter+24, asm.Half),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.Add.Imm(asm.R3, 20),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R10, fpInner+2, asm.Half),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.Add.Imm(asm.R4, outerLen),
		asm.JNE.Reg(asm.R2, asm.R4, "pass"),
		asm.Sub.Imm(asm.R2, outerLen),
		asm.StoreMem(asm.R10, fpInnerLen, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, asm.R10, fpInner, asm.Byte),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, 4),
		asm.JNE.Imm(asm.R3, 4, "pass"),
		asm.And.Imm(asm.R2, 0x0f),
		asm.JLT.Imm(asm.R2, 5, "pass"),
		asm.LSh.Imm(asm.R2, 2),
		asm.LoadMem(asm.R3, asm.R10, fpInnerLen, asm.DWord),
		asm.JGT.Reg(asm.R2, asm.R3, "pass"), // a header longer than the packet
		// The peer holding the inner source must be the outer source.
		asm.StoreImm(asm.R10, fpLPMKey, 32, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, fpInner+12, asm.Word),
		asm.StoreMem(asm.R10, fpLPMKey+4, asm.R2, asm.Word),
	)
	b.lookup("peers", fpLPMKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMem(asm.R2, asm.R8, peerIP, asm.Word),
		asm.LoadMem(asm.R3, asm.R10, fpOuter+12, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		// The inner destination must be in this node's subnet.
		asm.LoadMem(asm.R2, asm.R10, fpInner+16, asm.Word),
		asm.LoadMem(asm.R3, asm.R7, cfgMask, asm.Word),
		asm.And.Reg(asm.R2, asm.R3),
		asm.LoadMem(asm.R3, asm.R7, cfgSubnet, asm.Word),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		// Remove the outer headers (keeping the inner MSS of a
		// super-packet), clearing the tunnel GSO state where the kernel can.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, -outerLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, adjFixedGSO|adjDecapL4UDP),
	)
	b.call(asm.FnSkbAdjustRoom)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "decapped"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, -outerLen),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, adjFixedGSO),
	)
	b.call(asm.FnSkbAdjustRoom)
	b.emit(asm.JNE.Imm(asm.R0, 0, "pass"))
	b.label("decapped")
	b.count("rx_", ethLen, true)
	// A pod on this node's bridge that the node has talked to (its veth is
	// in the pods map) gets the packet straight into its namespace, as a
	// router would send it (TTL decremented, the bridge's MAC as source):
	// the bridge, which would cut a super-packet apart, is skipped.
	b.emit(
		asm.LoadMem(asm.R2, asm.R10, fpInner+16, asm.Word),
		asm.StoreMem(asm.R10, fpLPMKey, asm.R2, asm.Word),
	)
	b.lookup("pods", fpLPMKey)
	b.emit(
		asm.JEq.Imm(asm.R0, 0, "twill0"),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.LoadMem(asm.R2, asm.R10, fpInner+8, asm.Byte),
		asm.JLE.Imm(asm.R2, 1, "twill0"), // the stack sends time exceeded
		// TTL - 1 and the header checksum: the word at offset 8 is TTL,
		// protocol; read little endian the TTL is its low byte.
		asm.LoadMem(asm.R3, asm.R10, fpInner+8, asm.Half),
		asm.Mov.Reg(asm.R4, asm.R3),
		asm.Sub.Imm(asm.R4, 1),
		asm.StoreMem(asm.R10, fpInner+8, asm.R4, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen+10),
		asm.Mov.Imm(asm.R5, 2),
	)
	b.call(asm.FnL3CsumReplace)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "twill0"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, ethLen+8),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, fpInner+8),
		asm.Mov.Imm(asm.R4, 1),
		asm.Mov.Imm(asm.R5, 0),
	)
	b.call(asm.FnSkbStoreBytes)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R8),
		asm.Mov.Imm(asm.R4, 12),
		asm.Mov.Imm(asm.R5, 0),
	)
	b.call(asm.FnSkbStoreBytes)
	b.emit(
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.LoadMem(asm.R1, asm.R8, podIfindex, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
	)
	b.call(asm.FnRedirectPeer)
	b.emit(asm.Return())
	b.label("twill0")
	b.emit(
		asm.LoadMem(asm.R1, asm.R7, cfgTUN, asm.Word),
		asm.Mov.Imm(asm.R2, bpfFIngress),
	)
	b.call(asm.FnRedirect)
	b.emit(asm.Return())
	b.epilogue(true)
	return b.insns
}
