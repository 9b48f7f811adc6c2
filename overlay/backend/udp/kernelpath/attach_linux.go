package kernelpath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// hook is one of twill's programs attached to one device's hook. To keep
// the data path through a restart, a hook can later be pinned (a tcx
// link's Pin; a tc filter is found again by its priority and handle) and
// its program swapped (link.Update; FilterReplace at the same priority
// and handle) without a moment in which no program runs.
type hook interface {
	// detach takes the program off the hook.
	detach() error
	// release lets go of the hook and leaves the program on it, for the
	// next twilld to adopt.
	release() error
}

// where is a hook: the device (ifindex, name for messages) and direction.
type where struct {
	ifindex int
	device  string
	ingress bool
}

func (w where) String() string {
	if w.ingress {
		return w.device + " ingress"
	}
	return w.device + " egress"
}

// tcxHook is a tcx link; closing it detaches the program, unless it is
// pinned (then the pin keeps it attached).
type tcxHook struct {
	l      link.Link
	pinned bool
}

// attachTCX attaches prog after every program already on the hook: those
// keep seeing every packet they saw before, and twill's program gets what
// they pass on (TCX_NEXT), as its tc filter would.
func attachTCX(w where, prog *ebpf.Program) (hook, error) {
	at := ebpf.AttachTCXEgress
	if w.ingress {
		at = ebpf.AttachTCXIngress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: w.ifindex, Program: prog, Attach: at, Anchor: link.Tail()})
	if err != nil {
		return nil, fmt.Errorf("attach the kernel path to %s (tcx): %w", w, err)
	}
	return tcxHook{l: l}, nil
}

func (h tcxHook) detach() error {
	var err error
	if h.pinned {
		err = h.l.Unpin()
	}
	return errors.Join(err, h.l.Close())
}

func (h tcxHook) release() error { return h.l.Close() }

// tcHook is one of twill's cls_bpf filters.
type tcHook struct {
	nl     *netlink.Handle
	w      where
	prio   uint16
	progID ebpf.ProgramID
	// ownQdisc: twill made the device's clsact qdisc, and removes it
	// when it holds no filter any more.
	ownQdisc bool
}

const clsactHandle = 0xffff0000 // ffff:, the handle of clsact (and ingress)

func (w where) parent() uint32 {
	if w.ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// isTwills reports whether f is one of twill's filters (any priority).
func isTwills(f netlink.Filter) bool {
	b, ok := f.(*netlink.BpfFilter)
	return ok && b.Handle == TCHandle && strings.HasPrefix(b.Name, tcNamePrefix)
}

// attachTC puts prog on the hook as a cls_bpf filter: on the device's
// clsact qdisc, made if there is none, at the first of twill's priorities
// that no one else uses. A filter of twill's left on the hook (by a
// twilld that did not close) is replaced in place, or removed if it sits
// at another priority. Nothing else on the device is changed.
func attachTC(h *netlink.Handle, w where, prog *ebpf.Program, name string) (hook, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("read the program %s: %w", name, err)
	}
	id, ok := info.ID()
	if !ok {
		return nil, fmt.Errorf("the kernel does not tell program %s's ID (needs Linux 4.13)", name)
	}
	hk := &tcHook{nl: h, w: w, progID: id}
	if hk.ownQdisc, err = ensureClsact(h, w); err != nil {
		return nil, err
	}
	fail := func(err error) (hook, error) {
		if hk.ownQdisc {
			err = errors.Join(err, hk.removeQdiscIfEmpty())
		}
		return nil, err
	}
	filters, err := hk.filters()
	if err != nil {
		return fail(err)
	}
	taken := map[uint16]bool{}
	for _, f := range filters {
		if a := f.Attrs(); a.Handle != 0 && !isTwills(f) {
			taken[a.Priority] = true
		}
	}
	for p := uint16(TCPriority); p < TCPriority+tcPriorities; p++ {
		if !taken[p] {
			hk.prio = p
			break
		}
	}
	if hk.prio == 0 {
		return fail(fmt.Errorf("attach the kernel path to %s (tc): priorities %d-%d are all used by other filters",
			w, TCPriority, TCPriority+tcPriorities-1))
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: w.ifindex, Parent: w.parent(), Handle: TCHandle,
			Priority: hk.prio, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: name, DirectAction: true,
	}
	if err := h.FilterReplace(f); err != nil {
		if errors.Is(err, unix.ENOENT) {
			err = fmt.Errorf("the kernel has no bpf classifier (module cls_bpf): %w", err)
		}
		return fail(fmt.Errorf("attach the kernel path to %s (tc filter priority %d handle %#x): %w", w, hk.prio, TCHandle, err))
	}
	var errs []error
	for _, f := range filters {
		if isTwills(f) && f.Attrs().Priority != hk.prio {
			if err := h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove an old kernel-path filter from %s (priority %d): %w", w, f.Attrs().Priority, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, hk.detach())
	}
	return hk, nil
}

// ensureClsact finds the device's clsact qdisc, or makes it (made true).
// An ingress qdisc serves as well for an ingress hook.
func ensureClsact(h *netlink.Handle, w where) (made bool, err error) {
	dev := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: w.ifindex}}
	for range 2 {
		qs, err := h.QdiscList(dev)
		if err != nil {
			return false, fmt.Errorf("list the qdiscs of %s: %w", w.device, err)
		}
		for _, q := range qs {
			if q.Attrs().Handle != clsactHandle {
				continue
			}
			if q.Type() == "clsact" || q.Type() == "ingress" && w.ingress {
				return false, nil
			}
			return false, fmt.Errorf("%s has a %s qdisc at ffff:, where the kernel path needs clsact", w.device, q.Type())
		}
		err = h.QdiscAdd(&netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: w.ifindex, Handle: clsactHandle, Parent: netlink.HANDLE_CLSACT}})
		if err == nil {
			return true, nil
		}
		if errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("add a clsact qdisc to %s: the kernel has none (module sch_ingress, Linux 4.5): %w", w.device, err)
		}
		if !errors.Is(err, unix.EEXIST) {
			return false, fmt.Errorf("add a clsact qdisc to %s: %w", w.device, err)
		}
		// Someone else made one meanwhile: use theirs.
	}
	return false, fmt.Errorf("add a clsact qdisc to %s: it exists but is not listed", w.device)
}

// filters lists the filters on the hook.
func (hk *tcHook) filters() ([]netlink.Filter, error) {
	return listFilters(hk.nl, hk.w.ifindex, hk.w.parent(), hk.w.String())
}

func listFilters(h *netlink.Handle, ifindex int, parent uint32, what string) ([]netlink.Filter, error) {
	dev := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	var err error
	for range 3 {
		var fs []netlink.Filter
		if fs, err = h.FilterList(dev, parent); err == nil {
			return fs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list the tc filters on %s: %w", what, err)
}

// release leaves the filter in place: it outlives the process.
func (hk *tcHook) release() error { return nil }

// detach removes twill's filter if it still runs this hook's program (a
// twilld that replaced it owns it now), then the clsact qdisc if twill
// made it and no one's filter is left on it.
func (hk *tcHook) detach() error {
	filters, err := hk.filters()
	if errors.Is(err, unix.ENODEV) {
		return nil // the device is gone, and its filters with it
	}
	if err != nil {
		return err
	}
	for _, f := range filters {
		if b, ok := f.(*netlink.BpfFilter); ok && isTwills(f) && b.Priority == hk.prio && ebpf.ProgramID(b.Id) == hk.progID {
			if err := hk.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove the kernel path's filter from %s (priority %d): %w", hk.w, hk.prio, err)
			}
		}
	}
	if hk.ownQdisc {
		return hk.removeQdiscIfEmpty()
	}
	return nil
}

// removeQdiscIfEmpty deletes the device's clsact qdisc unless a filter is
// on either of its hooks: deleting a qdisc deletes its filters.
func (hk *tcHook) removeQdiscIfEmpty() error {
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := listFilters(hk.nl, hk.w.ifindex, parent, hk.w.device)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if f.Attrs().Handle != 0 {
				return nil
			}
		}
	}
	err := hk.nl.QdiscDel(&netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: hk.w.ifindex, Handle: clsactHandle, Parent: netlink.HANDLE_CLSACT}})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("remove the clsact qdisc twill added to %s: %w", hk.w.device, err)
	}
	return nil
}

// Cleanup removes the kernel path of the namespace ns that twilld leaves
// behind when it stops: the pinned tcx links (detaching them) and maps
// (PinDir), and every tc filter of twill's (by handle and name, at any
// priority) from both hooks of each device. It leaves the qdiscs, not
// knowing who made them, and a device that is not there.
func Cleanup(ns netns.NsHandle, devices ...string) error {
	var errs []error
	// Where no bpffs is mounted, nothing was pinned: nothing is mounted.
	if dir, err := pinDir(ns); err != nil {
		errs = append(errs, err)
	} else if err := RemovePins(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(append(errs, removeTCFilters(ns, devices...))...)
}

// removeTCFilters removes every tc filter of twill's from both hooks of
// each device in the namespace ns.
func removeTCFilters(ns netns.NsHandle, devices ...string) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle for the kernel path's cleanup: %w", err)
	}
	defer h.Close()
	var errs []error
	for _, dev := range devices {
		l, err := h.LinkByName(dev)
		if err != nil {
			if !errors.As(err, new(netlink.LinkNotFoundError)) {
				errs = append(errs, fmt.Errorf("find %s: %w", dev, err))
			}
			continue
		}
		for _, ingress := range []bool{false, true} {
			errs = append(errs, removeFilters(h, where{ifindex: l.Attrs().Index, device: dev, ingress: ingress}))
		}
	}
	return errors.Join(errs...)
}

// removeFilters removes every filter of twill's from the hook.
func removeFilters(h *netlink.Handle, w where) error {
	fs, err := listFilters(h, w.ifindex, w.parent(), w.String())
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range fs {
		if isTwills(f) {
			if err := h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove the kernel path's filter from %s (priority %d): %w", w, f.Attrs().Priority, err))
			}
		}
	}
	return errors.Join(errs...)
}
