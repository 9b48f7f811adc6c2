package kernelpath

// The attachments: how the programs are put on their hooks.
const (
	// AttachAuto is tcx where the kernel has it, classic tc otherwise.
	AttachAuto = "auto"
	// AttachTCX is a tcx link per hook (Linux 6.6), owned by the process.
	AttachTCX = "tcx"
	// AttachTC is a direct-action cls_bpf filter per hook on a clsact
	// qdisc (Linux 4.5), owned by twill until Close removes it.
	AttachTC = "tc"
)

// twill's classic tc filters: every one is a direct-action cls_bpf filter
// for all protocols with handle TCHandle, named after its program
// (twill_udp_egr, twill_udp_ingr), at priority TCPriority, or the first of
// the next tcPriorities-1 priorities that holds no filter of anyone else.
// Priorities run in ascending order, so twill's filters come after
// Cilium's (priority 1) and after filters added without a priority (the
// kernel numbers those from 49152 down): the filters that were there first
// see every packet they saw before, and twill's sees what they pass on.
const (
	TCPriority   = 50000
	TCHandle     = 0x7477 // "tw"
	tcPriorities = 16
	tcNamePrefix = "twill_udp_"
)
