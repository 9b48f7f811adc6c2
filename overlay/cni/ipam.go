package cni

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Attachment names one pod interface: the runtime's container ID and the
// interface name inside the pod, the pair CNI uses as an attachment's key.
type Attachment struct {
	ContainerID string
	IfName      string
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Allocation is one address handed out, and to whom. An allocation whose
// file could not be read has a zero Attachment.
type Allocation struct {
	Addr  netip.Addr
	Owner Attachment
}

// Store keeps address allocations on disk, one file per address named by the
// address and holding the owner's container ID and interface name. Files are
// created with O_EXCL, so an address is never handed out twice, even across
// processes; changes are also serialised by an flock on a lock file, so that
// two ADDs for one attachment agree on its address.
type Store struct {
	dir string
}

const (
	lockFile     = "lock"
	lastReserved = "last_reserved_ip"
)

// OpenStore opens (creating it if needed) the allocation directory of a
// network under dataDir.
func OpenStore(dataDir, network string) (*Store, error) {
	if network == "" || strings.ContainsAny(network, "/\x00") || network == "." || network == ".." {
		return nil, fmt.Errorf("open address store: bad network name %q", network)
	}
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open address store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Lock takes the store's exclusive lock (waiting for it) and returns the
// function that releases it.
func (s *Store) Lock() (unlock func(), err error) {
	return flock(filepath.Join(s.dir, lockFile))
}

// Allocate returns the address of owner in subnet: the one it already holds
// there, or a free one. The subnet's network address, gateway and (for IPv4)
// broadcast address are never handed out. Addresses held in other subnets
// (an old node subnet) are neither returned nor freed. The caller holds the
// lock.
func (s *Store) Allocate(subnet netip.Prefix, gateway netip.Addr, owner Attachment) (netip.Addr, error) {
	subnet = subnet.Masked()
	allocs, err := s.List()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range allocs {
		if a.Owner == owner && subnet.Contains(a.Addr) && a.Addr != gateway {
			return a.Addr, nil
		}
	}
	first, last, ok := hostRange(subnet)
	if !ok {
		return netip.Addr{}, fmt.Errorf("allocate address in %s: subnet has no room for pods", subnet)
	}
	start := first
	if b, err := os.ReadFile(lastReservedFile(s.dir, subnet)); err == nil {
		if prev, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && subnet.Contains(prev) && prev.Less(last) && !prev.Less(first) {
			start = prev.Next()
		}
	}
	content := []byte(owner.ContainerID + "\n" + owner.IfName + "\n")
	for addr := start; ; {
		if addr != gateway {
			switch err := s.create(addr, content); {
			case err == nil:
				if err := writeFileAtomic(lastReservedFile(s.dir, subnet), []byte(addr.String()+"\n")); err != nil {
					return netip.Addr{}, errors.Join(err, s.remove(addr))
				}
				return addr, nil
			case !errors.Is(err, fs.ErrExist):
				return netip.Addr{}, fmt.Errorf("allocate address in %s: %w", subnet, err)
			}
		}
		if addr == last {
			addr = first
		} else {
			addr = addr.Next()
		}
		if addr == start {
			return netip.Addr{}, fmt.Errorf("allocate address in %s: no free address left", subnet)
		}
	}
}

// lastReservedFile is where the last address handed out in subnet's family
// is kept, so that the next one starts after it: one file per family, as a
// dual-stack pod takes an address of each.
func lastReservedFile(dir string, subnet netip.Prefix) string {
	if subnet.Addr().Is6() {
		return filepath.Join(dir, lastReserved+".v6")
	}
	return filepath.Join(dir, lastReserved)
}

// create claims addr for the content's owner; fs.ErrExist if it is taken.
func (s *Store) create(addr netip.Addr, content []byte) error {
	name := filepath.Join(s.dir, addr.String())
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(content)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", name, err), os.Remove(name))
	}
	return nil
}

func (s *Store) remove(addr netip.Addr) error {
	if err := os.Remove(filepath.Join(s.dir, addr.String())); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("free address %s: %w", addr, err)
	}
	return nil
}

// Release frees every address held by owner, in any subnet, and returns
// them. Releasing an owner with no address is not an error. The caller
// holds the lock.
func (s *Store) Release(owner Attachment) ([]netip.Addr, error) {
	allocs, err := s.List()
	if err != nil {
		return nil, err
	}
	var freed []netip.Addr
	var errs []error
	for _, a := range allocs {
		if a.Owner != owner {
			continue
		}
		if err := s.remove(a.Addr); err != nil {
			errs = append(errs, err)
			continue
		}
		freed = append(freed, a.Addr)
	}
	return freed, errors.Join(errs...)
}

// Free frees one address, whoever holds it. The caller holds the lock.
func (s *Store) Free(addr netip.Addr) error { return s.remove(addr) }

// List returns every allocation in the store, in address order.
func (s *Store) List() ([]Allocation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list address allocations: %w", err)
	}
	var out []Allocation
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		a := Allocation{Addr: addr}
		b, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("read allocation %s: %w", addr, err)
		}
		a.Owner = parseOwner(b)
		out = append(out, a)
	}
	return out, nil
}

// Owner returns who holds addr, and whether anyone does.
func (s *Store) Owner(addr netip.Addr) (Attachment, bool, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, addr.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return Attachment{}, false, nil
	}
	if err != nil {
		return Attachment{}, false, fmt.Errorf("read allocation %s: %w", addr, err)
	}
	return parseOwner(b), true, nil
}

func parseOwner(b []byte) Attachment {
	sc := bufio.NewScanner(bytes.NewReader(b))
	var lines []string
	for sc.Scan() {
		lines = append(lines, strings.TrimSpace(sc.Text()))
	}
	if len(lines) < 2 {
		return Attachment{}
	}
	return Attachment{ContainerID: lines[0], IfName: lines[1]}
}

// hostRange is the first and last address of subnet that may go to a pod:
// the network address and the IPv4 broadcast address excluded.
func hostRange(p netip.Prefix) (first, last netip.Addr, ok bool) {
	p = p.Masked()
	first = p.Addr().Next()
	b := p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	last = netip.AddrFrom16(b)
	if p.Addr().Is4() {
		last = last.Unmap().Prev() // the broadcast address is not a host
	}
	if !first.IsValid() || !last.IsValid() || last.Less(first) {
		return netip.Addr{}, netip.Addr{}, false
	}
	return first, last, true
}

// writeFileAtomic writes data to name through a temporary file and a rename.
func writeFileAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
