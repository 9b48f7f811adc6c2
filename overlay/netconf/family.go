package netconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// family is one address family's subnet fields in a config: the JSON keys
// that hold them and the limits they must keep. IPv4 and IPv6 are read and
// checked by the same code, each through its family.
type family struct {
	name                                     string // "IPv4" or "IPv6"
	network, subnetLen, subnetMin, subnetMax string // the JSON keys
	bits                                     int    // address bits
	maxNetworkLen, maxSubnetLen              int    // the smallest network, the smallest subnet
	defaultSubnetLen                         int    // unless the network is too small for four of them
	example                                  string
	special                                  []specialRange
}

type specialRange struct {
	prefix netip.Prefix
	what   string
}

var ipv4 = family{
	name: "IPv4", network: "Network", subnetLen: "SubnetLen", subnetMin: "SubnetMin", subnetMax: "SubnetMax",
	bits: 32, maxNetworkLen: 28, maxSubnetLen: 30, defaultSubnetLen: 24, example: "10.244.0.0/16",
	// IPv4 ranges that cannot carry pods (RFC 6890 and its successors).
	special: []specialRange{
		{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
		{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
		{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
		{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"},
	},
}

var ipv6 = family{
	name: "IPv6", network: "IPv6Network", subnetLen: "IPv6SubnetLen", subnetMin: "IPv6SubnetMin", subnetMax: "IPv6SubnetMax",
	bits: 128, maxNetworkLen: 124, maxSubnetLen: 126, defaultSubnetLen: 64, example: "fd00:10:244::/56",
	// IPv6 ranges that cannot carry pods (RFC 4291).
	special: []specialRange{
		{netip.MustParsePrefix("::/127"), "unspecified and loopback (::/127)"},
		{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped (::ffff:0:0/96)"},
		{netip.MustParsePrefix("fe80::/10"), "link-local (fe80::/10)"},
		{netip.MustParsePrefix("ff00::/8"), "multicast (ff00::/8)"},
	},
}

// SubnetRange is one address family's part of a config: the cluster
// network, the length of each node's subnet, and the first and last subnet
// (inclusive, as base addresses) that may be leased. The zero SubnetRange is
// a family that is not enabled.
type SubnetRange struct {
	Network   netip.Prefix
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr
}

// Enabled reports whether the range holds a network.
func (r SubnetRange) Enabled() bool { return r.Network.IsValid() }

func (r SubnetRange) shift() int { return r.Network.Addr().BitLen() - r.SubnetLen }

// Count is how many subnets may be leased, SubnetMin to SubnetMax; an IPv6
// range with more than math.MaxInt of them says math.MaxInt.
func (r SubnetRange) Count() int {
	if !r.Enabled() {
		return 0
	}
	return toU128(r.SubnetMax).sub(toU128(r.SubnetMin)).shr(r.shift()).add(u128{lo: 1}).saturatedInt()
}

// CountInNetwork is how many subnets of SubnetLen the network holds
// (saturated at math.MaxInt).
func (r SubnetRange) CountInNetwork() int {
	if !r.Enabled() {
		return 0
	}
	return u128{lo: 1}.shl(r.SubnetLen - r.Network.Bits()).saturatedInt()
}

// Subnet returns the i-th leasable subnet, counting from SubnetMin.
func (r SubnetRange) Subnet(i int) netip.Prefix {
	a := toU128(r.SubnetMin).add(u128{lo: uint64(i)}.shl(r.shift()))
	return netip.PrefixFrom(a.addr(r.Network.Addr().Is4()), r.SubnetLen)
}

// Leasable reports whether s is a subnet of the network that may be leased:
// the right length, aligned, and within SubnetMin..SubnetMax.
func (r SubnetRange) Leasable(s netip.Prefix) bool {
	if !r.Fits(s) {
		return false
	}
	return s.Addr().Compare(r.SubnetMin) >= 0 && s.Addr().Compare(r.SubnetMax) <= 0
}

// Fits reports whether s is a subnet of the network of the right length,
// aligned, whether or not it lies within SubnetMin..SubnetMax (which bound
// only allocation: a reservation may sit outside them).
func (r SubnetRange) Fits(s netip.Prefix) bool {
	return r.Enabled() && s.IsValid() && s.Bits() == r.SubnetLen && s.Masked() == s && r.Network.Contains(s.Addr())
}

// parseRange reads one family's Network, SubnetLen, SubnetMin and SubnetMax.
// A network that is wrong is one error; the subnet fields, which need it,
// are then not checked.
func parseRange(raw map[string]json.RawMessage, f family) (SubnetRange, []error) {
	network, err := f.parseNetwork(raw)
	if err != nil {
		return SubnetRange{}, []error{err}
	}
	r := SubnetRange{Network: network}
	if v, ok := raw[f.subnetLen]; ok {
		var n int
		if err := strictUnmarshal(v, &n); err != nil {
			return SubnetRange{}, []error{fieldErr(f.subnetLen, v, "must be an integer prefix length")}
		}
		switch {
		case n <= network.Bits():
			return SubnetRange{}, []error{fieldErr(f.subnetLen, v, "must be longer than the network's prefix /%d", network.Bits())}
		case n > f.maxSubnetLen:
			return SubnetRange{}, []error{fieldErr(f.subnetLen, v, "must be at most %d, so that a subnet holds a gateway and a pod", f.maxSubnetLen)}
		}
		r.SubnetLen = n
	} else {
		r.SubnetLen = max(f.defaultSubnetLen, network.Bits()+2)
	}

	first := toU128(network.Addr())
	size := u128{lo: 1}.shl(r.shift())
	last := first.add(u128{lo: 1}.shl(f.bits - network.Bits())).sub(size)
	is4 := f.bits == 32
	r.SubnetMin, r.SubnetMax = first.add(size).addr(is4), last.addr(is4)
	var errs []error
	for _, fld := range []struct {
		name string
		dst  *netip.Addr
	}{{f.subnetMin, &r.SubnetMin}, {f.subnetMax, &r.SubnetMax}} {
		v, ok := raw[fld.name]
		if !ok {
			continue
		}
		a, err := f.parseAddr(v)
		switch {
		case err != nil:
			errs = append(errs, fieldErr(fld.name, v, "%v", err))
		case !network.Contains(a):
			errs = append(errs, fieldErr(fld.name, v, "is outside the network %s", network))
		case netip.PrefixFrom(a, r.SubnetLen).Masked().Addr() != a:
			errs = append(errs, fieldErr(fld.name, v, "is not the first address of a /%d subnet", r.SubnetLen))
		default:
			*fld.dst = a
		}
	}
	if len(errs) == 0 && r.SubnetMin.Compare(r.SubnetMax) > 0 {
		errs = append(errs, &FieldError{Field: f.subnetMin, Value: r.SubnetMin.String(),
			Reason: fmt.Sprintf("is after %s %s", f.subnetMax, r.SubnetMax)})
	}
	if len(errs) > 0 {
		return SubnetRange{}, errs
	}
	return r, nil
}

// parseNetwork reads and checks the family's network.
func (f family) parseNetwork(raw map[string]json.RawMessage) (netip.Prefix, error) {
	v, ok := raw[f.network]
	if !ok && f.bits == 128 {
		return netip.Prefix{}, &FieldError{Field: "EnableIPv6", Value: "true", Reason: fmt.Sprintf("needs IPv6Network, the IPv6 cluster network, e.g. %q", f.example)}
	}
	if !ok {
		return netip.Prefix{}, &FieldError{Field: f.network, Reason: fmt.Sprintf("missing; the %s cluster network is required, e.g. %q", f.name, f.example)}
	}
	network, err := parsePrefix(v, f.example)
	if err != nil {
		return netip.Prefix{}, fieldErr(f.network, v, "%v", err)
	}
	if network.Addr().BitLen() != f.bits || network.Addr().Zone() != "" {
		return netip.Prefix{}, fieldErr(f.network, v, "must be an %s network", f.name)
	}
	if network != network.Masked() {
		return netip.Prefix{}, fieldErr(f.network, v, "has host bits set; did you mean %q?", network.Masked().String())
	}
	if network.Bits() > f.maxNetworkLen {
		return netip.Prefix{}, fieldErr(f.network, v, "is too small: the prefix must be at most /%d", f.maxNetworkLen)
	}
	for _, sp := range f.special {
		if network.Overlaps(sp.prefix) {
			return netip.Prefix{}, fieldErr(f.network, v, "overlaps the %s range, which cannot carry pod traffic; use a private range such as %q", sp.what, f.example)
		}
	}
	return network, nil
}

func (f family) parseAddr(v json.RawMessage) (netip.Addr, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return netip.Addr{}, fmt.Errorf("must be an %s address string", f.name)
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.BitLen() != f.bits || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("is not a valid %s address", f.name)
	}
	return a, nil
}

func parsePrefix(v json.RawMessage, example string) (netip.Prefix, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return netip.Prefix{}, fmt.Errorf("must be a CIDR string such as %q", example)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("is not a valid CIDR")
	}
	return p, nil
}

// u128 is an address as a number, for the subnet arithmetic of both
// families (an IPv4 address is its low 32 bits).
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var u u128
	for i := range 8 {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[8+i])
	}
	return u
}

func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		return netip.AddrFrom4([4]byte{byte(u.lo >> 24), byte(u.lo >> 16), byte(u.lo >> 8), byte(u.lo)})
	}
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	return netip.AddrFrom16(b)
}

func (u u128) add(v u128) u128 {
	lo := u.lo + v.lo
	carry := uint64(0)
	if lo < u.lo {
		carry = 1
	}
	return u128{hi: u.hi + v.hi + carry, lo: lo}
}

func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	borrow := uint64(0)
	if u.lo < v.lo {
		borrow = 1
	}
	return u128{hi: u.hi - v.hi - borrow, lo: lo}
}

func (u u128) shl(n int) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: u.lo << (n - 64)}
	case n == 0:
		return u
	}
	return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
}

func (u u128) shr(n int) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: u.hi >> (n - 64)}
	case n == 0:
		return u
	}
	return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
}

func (u u128) saturatedInt() int {
	if u.hi != 0 || u.lo > math.MaxInt {
		return math.MaxInt
	}
	return int(u.lo)
}
