// Package subnetfile reads and writes the node's subnet file
// (/run/twill/subnet.env): the environment-file form of the node's lease that
// the CNI plugin and systemd units read.
//
//	TWILL_NETWORK=10.244.0.0/16
//	TWILL_SUBNET=10.244.1.1/24
//	TWILL_MTU=1450
//	TWILL_IPMASQ=true
//
// TWILL_SUBNET is the node's subnet written as its gateway address (the first
// address) with the subnet's prefix length, as flannel writes FLANNEL_SUBNET.
//
// A dual-stack node adds its IPv6 network and subnet after TWILL_SUBNET, in
// the same form and place as flannel's FLANNEL_IPV6_NETWORK and
// FLANNEL_IPV6_SUBNET; an IPv6-only node writes them instead of
// TWILL_NETWORK and TWILL_SUBNET, as flannel does:
//
//	TWILL_NETWORK=10.244.0.0/16
//	TWILL_SUBNET=10.244.1.1/24
//	TWILL_IPV6_NETWORK=fd00:10:244::/56
//	TWILL_IPV6_SUBNET=fd00:10:244:1::1/64
//	TWILL_MTU=1450
//	TWILL_IPMASQ=true
//
// Parse also reads flannel's own file (/run/flannel/subnet.env, the same
// keys with FLANNEL_ for TWILL_).
//
// With a sublink backend (macvlan, ipvlan) twilld adds what the CNI plugin
// needs to put pods straight onto the underlay; these keys are optional, and a
// file without them describes an overlay node:
//
//	TWILL_BACKEND=macvlan
//	TWILL_UNDERLAY_MASTER=eth0
//	TWILL_UNDERLAY_MODE=bridge
//	TWILL_UNDERLAY_SUBNET=192.168.56.0/24
//	TWILL_UNDERLAY_GATEWAY=192.168.56.1
//
// There TWILL_SUBNET's address is the one twilld gives the host itself (on
// twill.host), TWILL_UNDERLAY_SUBNET the master's subnet (pods get addresses
// of that length, so the whole segment is on-link to them) and
// TWILL_UNDERLAY_GATEWAY the underlay's default gateway (absent if the
// master has none).
// Writes are atomic: a reader sees the old file or the new one, never a part.
package subnetfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultPath is where twilld writes the file unless told otherwise.
const DefaultPath = "/run/twill/subnet.env"

// File is the content of a subnet file.
type File struct {
	// Network is the cluster network.
	Network netip.Prefix
	// Subnet is the node's subnet, its address the gateway (first address).
	Subnet netip.Prefix
	// IPv6Network and IPv6Subnet are the same for IPv6; zero when the node
	// has no IPv6 subnet (as Network and Subnet are on an IPv6-only node).
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	// MTU is the MTU pods should use.
	MTU int
	// IPMasq says twilld masquerades pod traffic leaving the network, so the
	// CNI plugin need not.
	IPMasq bool

	// Backend is the backend type (TWILL_BACKEND); empty in files written
	// before it was added, which are overlay files.
	Backend string
	// Sublink describes where pods attach to the underlay; only for the
	// sublink backends (macvlan, ipvlan), in the TWILL_UNDERLAY_* keys.
	Sublink Sublink
}

// Sublink is what the CNI plugin needs to attach pods to the underlay as
// sub-interfaces of its master.
type Sublink struct {
	// Master is the host interface pods' sub-interfaces hang off.
	Master string
	// Mode is the macvlan or ipvlan mode.
	Mode string
	// Subnet is the master's subnet (with its address bits cleared).
	Subnet netip.Prefix
	// Gateway is the underlay's default gateway; invalid if none.
	Gateway netip.Addr
}

// IsSublink says pods attach to the underlay as sub-interfaces of its master
// (macvlan, ipvlan) rather than to the cni0 bridge.
func (f File) IsSublink() bool { return f.Backend == "macvlan" || f.Backend == "ipvlan" }

// NodeSubnet is the node's IPv4 subnet with the host bits cleared (zero on
// an IPv6-only node).
func (f File) NodeSubnet() netip.Prefix { return masked(f.Subnet) }

// Gateway is the node's address in its IPv4 subnet.
func (f File) Gateway() netip.Addr { return f.Subnet.Addr() }

// IPv6NodeSubnet is the node's IPv6 subnet with the host bits cleared (zero
// when it has none).
func (f File) IPv6NodeSubnet() netip.Prefix { return masked(f.IPv6Subnet) }

// IPv6Gateway is the node's address in its IPv6 subnet.
func (f File) IPv6Gateway() netip.Addr { return f.IPv6Subnet.Addr() }

// Subnets are the node's subnets, IPv4 first, each with its gateway as the
// address: one per family the node has.
func (f File) Subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{f.Subnet, f.IPv6Subnet} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func masked(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	return p.Masked()
}

// Marshal renders the file.
func (f File) Marshal() []byte {
	var b bytes.Buffer
	if f.Network.IsValid() {
		fmt.Fprintf(&b, "TWILL_NETWORK=%s\n", f.Network)
		fmt.Fprintf(&b, "TWILL_SUBNET=%s\n", f.Subnet)
	}
	if f.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "TWILL_IPV6_NETWORK=%s\n", f.IPv6Network)
		fmt.Fprintf(&b, "TWILL_IPV6_SUBNET=%s\n", f.IPv6Subnet)
	}
	fmt.Fprintf(&b, "TWILL_MTU=%d\n", f.MTU)
	fmt.Fprintf(&b, "TWILL_IPMASQ=%t\n", f.IPMasq)
	if f.Backend != "" {
		fmt.Fprintf(&b, "TWILL_BACKEND=%s\n", f.Backend)
	}
	if f.IsSublink() {
		fmt.Fprintf(&b, "TWILL_UNDERLAY_MASTER=%s\n", f.Sublink.Master)
		fmt.Fprintf(&b, "TWILL_UNDERLAY_MODE=%s\n", f.Sublink.Mode)
		fmt.Fprintf(&b, "TWILL_UNDERLAY_SUBNET=%s\n", f.Sublink.Subnet)
		if f.Sublink.Gateway.IsValid() {
			fmt.Fprintf(&b, "TWILL_UNDERLAY_GATEWAY=%s\n", f.Sublink.Gateway)
		}
	}
	return b.Bytes()
}

// Parse reads a subnet file's content. TWILL_NETWORK and TWILL_SUBNET,
// TWILL_IPV6_NETWORK and TWILL_IPV6_SUBNET, or all four are required, and
// TWILL_MTU and TWILL_IPMASQ; TWILL_BACKEND is optional, and when it names a
// sublink backend TWILL_UNDERLAY_MASTER, _MODE and _SUBNET are required too
// (TWILL_UNDERLAY_GATEWAY stays optional). A file with FLANNEL_ keys and no
// TWILL_ ones is flannel's, and read as if its keys began with TWILL_.
func Parse(data []byte) (File, error) {
	vals := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return File{}, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
		}
		vals[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	vals = flannelKeys(vals)
	var f File
	var errs []error
	need := func(k string) (string, bool) {
		v, ok := vals[k]
		if !ok {
			errs = append(errs, fmt.Errorf("%s is missing", k))
		}
		return v, ok
	}
	_, has4 := vals["TWILL_NETWORK"]
	_, has6 := vals["TWILL_IPV6_NETWORK"]
	for _, fam := range []struct {
		network, subnet string
		bits            int
		dstNet, dstSub  *netip.Prefix
		want            bool
	}{
		{"TWILL_NETWORK", "TWILL_SUBNET", 32, &f.Network, &f.Subnet, has4 || !has6},
		{"TWILL_IPV6_NETWORK", "TWILL_IPV6_SUBNET", 128, &f.IPv6Network, &f.IPv6Subnet, has6},
	} {
		if !fam.want {
			if _, ok := vals[fam.subnet]; ok {
				errs = append(errs, fmt.Errorf("%s is missing (%s is set)", fam.network, fam.subnet))
			}
			continue
		}
		if v, ok := need(fam.network); ok {
			p, err := netip.ParsePrefix(v)
			if err != nil || p.Masked() != p || p.Addr().BitLen() != fam.bits {
				errs = append(errs, fmt.Errorf("%s=%s: not an IPv%d network CIDR", fam.network, v, map[int]int{32: 4, 128: 6}[fam.bits]))
			}
			*fam.dstNet = p
		}
		if v, ok := need(fam.subnet); ok {
			p, err := netip.ParsePrefix(v)
			if err != nil || p.Addr().BitLen() != fam.bits {
				errs = append(errs, fmt.Errorf("%s=%s: not an ADDRESS/PREFIXLEN", fam.subnet, v))
			}
			*fam.dstSub = p
		}
	}
	if v, ok := need("TWILL_MTU"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 68 || n > 65535 {
			errs = append(errs, fmt.Errorf("TWILL_MTU=%s: not an MTU 68..65535", v))
		}
		f.MTU = n
	}
	if v, ok := need("TWILL_IPMASQ"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("TWILL_IPMASQ=%s: not true or false", v))
		}
		f.IPMasq = b
	}
	if v, ok := vals["TWILL_BACKEND"]; ok {
		if v == "" || strings.ContainsAny(v, " \t") {
			errs = append(errs, fmt.Errorf("TWILL_BACKEND=%s: not a backend type", v))
		}
		f.Backend = v
	}
	if f.IsSublink() {
		if v, ok := need("TWILL_UNDERLAY_MASTER"); ok {
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t") {
				errs = append(errs, fmt.Errorf("TWILL_UNDERLAY_MASTER=%s: not an interface name", v))
			}
			f.Sublink.Master = v
		}
		if v, ok := need("TWILL_UNDERLAY_MODE"); ok {
			if v == "" {
				errs = append(errs, errors.New("TWILL_UNDERLAY_MODE is empty"))
			}
			f.Sublink.Mode = v
		}
		if v, ok := need("TWILL_UNDERLAY_SUBNET"); ok {
			p, err := netip.ParsePrefix(v)
			if err != nil || p.Masked() != p {
				errs = append(errs, fmt.Errorf("TWILL_UNDERLAY_SUBNET=%s: not a network CIDR", v))
			}
			f.Sublink.Subnet = p
		}
		if v, ok := vals["TWILL_UNDERLAY_GATEWAY"]; ok && v != "" {
			a, err := netip.ParseAddr(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("TWILL_UNDERLAY_GATEWAY=%s: not an address", v))
			}
			f.Sublink.Gateway = a
		}
		if len(errs) == 0 && !f.Sublink.Subnet.Contains(f.Network.Addr()) {
			errs = append(errs, fmt.Errorf("TWILL_NETWORK=%s is outside TWILL_UNDERLAY_SUBNET=%s", f.Network, f.Sublink.Subnet))
		}
	}
	if len(errs) == 0 && f.Network.IsValid() && !f.Network.Contains(f.Subnet.Addr()) {
		errs = append(errs, fmt.Errorf("TWILL_SUBNET=%s is outside TWILL_NETWORK=%s", f.Subnet, f.Network))
	}
	if len(errs) == 0 && f.IPv6Network.IsValid() && !f.IPv6Network.Contains(f.IPv6Subnet.Addr()) {
		errs = append(errs, fmt.Errorf("TWILL_IPV6_SUBNET=%s is outside TWILL_IPV6_NETWORK=%s", f.IPv6Subnet, f.IPv6Network))
	}
	if err := errors.Join(errs...); err != nil {
		return File{}, fmt.Errorf("subnet file: %w", err)
	}
	return f, nil
}

// flannelKeys returns vals with flannel's FLANNEL_ keys named as twill's,
// if it has no TWILL_ keys: a file flannel wrote.
func flannelKeys(vals map[string]string) map[string]string {
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		if strings.HasPrefix(k, "TWILL_") {
			return vals
		}
		if rest, ok := strings.CutPrefix(k, "FLANNEL_"); ok {
			k = "TWILL_" + rest
		}
		out[k] = v
	}
	return out
}

// Read reads and parses the file at path.
func Read(path string) (File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("read subnet file: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Write writes f to path atomically (a temporary file in the same directory,
// synced, then renamed), creating the directory if needed.
func Write(path string, f File) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(f.Marshal()); err != nil {
		tmp.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write subnet file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}
