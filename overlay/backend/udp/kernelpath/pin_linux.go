package kernelpath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// BPFFS is where the bpf filesystem is mounted; twill pins under
// BPFFS/twill/<netns inode>. The environment variable TWILL_BPFFS names
// another one: a twilld started by `ip netns exec` (as the netns labs do)
// runs in a mount namespace of its own with a fresh /sys, where a bpffs
// it mounted would go with it; there TWILL_BPFFS points at one that
// outlives it (the host's, say /proc/<pid of a process on the host>/root/sys/fs/bpf).
const BPFFS = "/sys/fs/bpf"

// bpffs is where to pin: TWILL_BPFFS, else BPFFS.
func bpffs() string {
	if d := os.Getenv("TWILL_BPFFS"); d != "" {
		return d
	}
	return BPFFS
}

// mapNames are the pinned maps' names (their files in the pin directory).
var mapNames = []string{"twill_cfg", "twill_peers", "twill_stats", "twill_pods"}

// linkPin is the file of the tcx link of a program in the pin directory.
func linkPin(dir, prog string) string { return filepath.Join(dir, "link_"+prog) }

// PinDir is the directory the kernel path of the namespace ns pins its
// maps and tcx links in: BPFFS/twill/<the namespace's inode>, one per
// namespace, because the node namespaces of a lab share the host's bpffs.
// It mounts bpffs on BPFFS when nothing is mounted there (TWILL_BPFFS
// must be a bpffs already); it makes no directory.
func PinDir(ns netns.NsHandle) (string, error) {
	dir, err := pinDir(ns)
	if err != nil {
		return "", err
	}
	if err := ensureBPFFS(filepath.Dir(filepath.Dir(dir))); err != nil {
		return "", err
	}
	return dir, nil
}

// pinDir is PinDir without mounting anything.
func pinDir(ns netns.NsHandle) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return "", fmt.Errorf("read the network namespace's inode: %w", err)
	}
	return filepath.Join(bpffs(), "twill", fmt.Sprint(st.Ino)), nil
}

// ensureBPFFS mounts the bpf filesystem on dir unless it is there; only
// BPFFS is mounted.
func ensureBPFFS(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if dir != BPFFS {
		return fmt.Errorf("TWILL_BPFFS %s is not a bpf filesystem", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("make %s for bpffs: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// loadPinned creates the collection with its maps pinned in dir, reusing
// the maps pinned there by an earlier twilld. Maps of another layout (an
// older twill) are removed and made afresh.
func loadPinned(s *ebpf.CollectionSpec, dir string) (*ebpf.Collection, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make the kernel path's pin directory: %w", err)
	}
	for _, m := range s.Maps {
		m.Pinning = ebpf.PinByName
	}
	opts := ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	coll, err := ebpf.NewCollectionWithOptions(s, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		for _, name := range mapNames {
			_ = os.Remove(filepath.Join(dir, name))
		}
		coll, err = ebpf.NewCollectionWithOptions(s, opts)
	}
	return coll, err
}

// adopt takes over the state an earlier twilld left in the pinned maps:
// the peers with their counter slots, the pods, and the subnet in the
// config when the local IP and port are the same. It reports whether there
// was any.
func (p *Path) adopt() (bool, error) {
	var old [cfgSize]byte
	found := false
	if err := p.coll.Maps["config"].Lookup(uint32(0), &old); err != nil {
		return false, fmt.Errorf("read the pinned config: %w", err)
	}
	if old[cfgLocalIP] != 0 && [8]byte(old[:8]) == [8]byte(p.cfg[:8]) {
		copy(p.cfg[cfgSubnet:cfgMask+4], old[cfgSubnet:cfgMask+4])
		found = true
	}
	var k lpmKey
	var v peerValue
	used := map[uint32]bool{}
	it := p.coll.Maps["peers"].Iterate()
	for it.Next(&k, &v) {
		s := netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Bits))
		if v.Slot >= MaxPeers || used[v.Slot] {
			continue // not one twill wrote; SetPeers replaces it
		}
		used[v.Slot] = true
		p.peers[s], p.slots[s] = v, v.Slot
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("read the pinned peers: %w", err)
	}
	p.free = p.free[:0]
	for i := MaxPeers - 1; i >= 0; i-- {
		if !used[uint32(i)] {
			p.free = append(p.free, uint32(i))
		}
	}
	var ip [4]byte
	var pod podValue
	pit := p.coll.Maps["pods"].Iterate()
	for pit.Next(&ip, &pod) {
		p.pods[netip.AddrFrom4(ip)] = pod
	}
	if err := pit.Err(); err != nil {
		return false, fmt.Errorf("read the pinned pods: %w", err)
	}
	return found || len(p.peers) > 0, nil
}

// attachTCXPinned attaches prog to the hook through the tcx link pinned
// at pin: an earlier twilld's link on the same hook gets the new program
// (link.Update, no moment without one); otherwise a new link is attached
// and pinned there (a stale pin, of a device that went, is dropped first).
func attachTCXPinned(w where, prog *ebpf.Program, pin string) (hook, error) {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == w.ifindex {
			if err := l.Update(prog); err == nil {
				return tcxHook{l: l, pinned: true}, nil
			}
		}
		_ = l.Unpin()
		_ = l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(pin)
	}
	h, err := attachTCX(w, prog)
	if err != nil {
		return nil, err
	}
	th := h.(tcxHook)
	if err := th.l.Pin(pin); err != nil {
		return nil, errors.Join(fmt.Errorf("pin the kernel path's link on %s: %w", w, err), th.detach())
	}
	th.pinned = true
	return th, nil
}

// unpinLinks detaches the tcx links pinned in dir.
func unpinLinks(dir string) error {
	var errs []error
	for _, prog := range []string{egressName, ingressName} {
		pin := linkPin(dir, prog)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove the pinned link %s: %w", pin, errors.Join(err, rerr)))
			}
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	return errors.Join(errs...)
}

// RemovePins detaches the tcx links pinned in dir and removes the pinned
// maps and dir itself (also BPFFS/twill when that is then empty).
func RemovePins(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	errs := []error{unpinLinks(dir)}
	for _, name := range mapNames {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove the pinned map %s: %w", name, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove the pin directory: %w", err))
	}
	_ = os.Remove(filepath.Dir(dir)) // fails while another namespace pins there
	return errors.Join(errs...)
}
