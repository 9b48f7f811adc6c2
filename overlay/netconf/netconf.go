// Package netconf is the cluster's network configuration: flannel's JSON
// (Network, SubnetLen, SubnetMin, SubnetMax, Backend), its defaults, its
// validation and the subnet arithmetic built on it.
//
// A config is either valid, with every default filled in, or refused with a
// *FieldError that names the field and the value. The package does no I/O and
// knows nothing of etcd or the kernel; it only knows which backend types exist
// and which options each one takes, so that a typo is caught before a node
// leases anything.
package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Config is a validated network configuration with its defaults applied.
type Config struct {
	// EnableIPv6, IPv6Network, IPv6SubnetLen: placeholders of the model
	// branch's fields (i17-model), for the data path until it merges.
	EnableIPv6    bool
	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	// Network is the cluster network that every node subnet is carved from.
	Network netip.Prefix
	// SubnetLen is the prefix length of each node's subnet.
	SubnetLen int
	// SubnetMin and SubnetMax are the first and last subnet (inclusive) that
	// may be leased, as base addresses.
	SubnetMin netip.Addr
	SubnetMax netip.Addr
	// Backend is the data path and its options.
	Backend Backend
}

// FieldError is a configuration error: the field, the value found there, and
// why it was refused.
type FieldError struct {
	Field  string
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("network config: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("network config: %s = %s: %s", e.Field, e.Value, e.Reason)
}

func fieldErr(field string, value json.RawMessage, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Value: string(bytes.TrimSpace(value)), Reason: fmt.Sprintf(format, args...)}
}

// topLevelKeys are the keys a config may have. The flannel-only keys are
// accepted so that twill can read a config that a flannel cluster wrote.
var topLevelKeys = []string{"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6", "EnableNFTables"}

// Parse reads a JSON network config, applies the defaults and validates it.
// Every field that is wrong is reported, each as a *FieldError, joined into
// one error (errors.As finds the first); a field whose check needs another
// field that is wrong (SubnetMin needs Network) is not checked.
func Parse(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("network config: not a JSON object: %w", err)
	}
	if raw == nil {
		return nil, errors.New("network config: not a JSON object: null")
	}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	if err := checkKeys("", raw, topLevelKeys); err != nil {
		fail(err)
	}
	cfg := &Config{}

	for _, f := range []struct{ key, refusal string }{
		{"EnableIPv4", "twill needs IPv4; an IPv6-only network is not supported"},
		{"EnableIPv6", "IPv6 pod networks are not supported yet"},
		{"EnableNFTables", ""}, // twill always uses nftables; the key is accepted for flannel's sake
	} {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		var on bool
		if err := json.Unmarshal(v, &on); err != nil {
			fail(fieldErr(f.key, v, "must be true or false"))
			continue
		}
		if refused := (f.key == "EnableIPv4") != on; refused && f.refusal != "" {
			fail(fieldErr(f.key, v, "%s", f.refusal))
		}
	}

	network, nerr := parseNetwork(raw)
	if nerr != nil {
		fail(nerr)
	} else {
		cfg.Network = network
		errs = append(errs, cfg.parseSubnets(raw)...)
	}

	v, ok := raw["Backend"]
	if !ok {
		v = json.RawMessage(`{}`)
	}
	b, berrs := parseBackend(v)
	errs = append(errs, berrs...)
	if len(errs) == 0 {
		cfg.Backend = b
		if err := cfg.Backend.validateAgainst(cfg); err != nil {
			fail(err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// specialNetworks are IPv4 ranges that cannot carry pods: a cluster network
// that overlaps one is refused (RFC 6890 and its successors).
var specialNetworks = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (0.0.0.0/8)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (127.0.0.0/8)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (169.254.0.0/16)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (224.0.0.0/4)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast (240.0.0.0/4)"},
}

// parseNetwork reads and checks Network.
func parseNetwork(raw map[string]json.RawMessage) (netip.Prefix, error) {
	v, ok := raw["Network"]
	if !ok {
		return netip.Prefix{}, &FieldError{Field: "Network", Reason: "missing; the cluster network is required, e.g. \"10.244.0.0/16\""}
	}
	network, err := parsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fieldErr("Network", v, "%v", err)
	}
	if !network.Addr().Is4() {
		return netip.Prefix{}, fieldErr("Network", v, "must be an IPv4 network")
	}
	if network != network.Masked() {
		return netip.Prefix{}, fieldErr("Network", v, "has host bits set; did you mean %q?", network.Masked().String())
	}
	if network.Bits() > 28 {
		return netip.Prefix{}, fieldErr("Network", v, "is too small: the prefix must be at most /28")
	}
	for _, sp := range specialNetworks {
		if network.Overlaps(sp.prefix) {
			return netip.Prefix{}, fieldErr("Network", v, "overlaps the %s range, which cannot carry pod traffic; use a private range such as \"10.244.0.0/16\"", sp.what)
		}
	}
	return network, nil
}

// parseSubnets reads SubnetLen, SubnetMin and SubnetMax against c.Network.
func (c *Config) parseSubnets(raw map[string]json.RawMessage) []error {
	network := c.Network
	if v, ok := raw["SubnetLen"]; ok {
		var n int
		if err := strictUnmarshal(v, &n); err != nil {
			return []error{fieldErr("SubnetLen", v, "must be an integer prefix length")}
		}
		switch {
		case n <= network.Bits():
			return []error{fieldErr("SubnetLen", v, "must be longer than the network's prefix /%d", network.Bits())}
		case n > 30:
			return []error{fieldErr("SubnetLen", v, "must be at most 30, so that a subnet holds a gateway and a pod")}
		}
		c.SubnetLen = n
	} else if network.Bits() < 22 {
		c.SubnetLen = 24
	} else {
		c.SubnetLen = network.Bits() + 2
	}

	var errs []error
	size := c.subnetSize()
	first := addrToUint(network.Addr())
	last := first + uint32(c.SubnetCountInNetwork()-1)*size
	c.SubnetMin = uintToAddr(first + size)
	c.SubnetMax = uintToAddr(last)
	for _, f := range []struct {
		name string
		dst  *netip.Addr
	}{{"SubnetMin", &c.SubnetMin}, {"SubnetMax", &c.SubnetMax}} {
		v, ok := raw[f.name]
		if !ok {
			continue
		}
		a, err := parseAddr(v)
		switch {
		case err != nil:
			errs = append(errs, fieldErr(f.name, v, "%v", err))
		case !network.Contains(a):
			errs = append(errs, fieldErr(f.name, v, "is outside the network %s", network))
		case (addrToUint(a)-first)%size != 0:
			errs = append(errs, fieldErr(f.name, v, "is not the first address of a /%d subnet", c.SubnetLen))
		default:
			*f.dst = a
		}
	}
	if len(errs) == 0 && c.SubnetMin.Compare(c.SubnetMax) > 0 {
		errs = append(errs, &FieldError{Field: "SubnetMin", Value: c.SubnetMin.String(),
			Reason: fmt.Sprintf("is after SubnetMax %s", c.SubnetMax)})
	}
	return errs
}

// MarshalJSON writes the config in flannel's JSON form, defaults included.
func (c *Config) MarshalJSON() ([]byte, error) {
	backend, err := c.Backend.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Network   string
		SubnetLen int
		SubnetMin string
		SubnetMax string
		Backend   json.RawMessage
	}{c.Network.String(), c.SubnetLen, c.SubnetMin.String(), c.SubnetMax.String(), backend})
}

func (c *Config) subnetSize() uint32 { return 1 << (32 - c.SubnetLen) }

// SubnetCountInNetwork is how many subnets of SubnetLen the network holds.
func (c *Config) SubnetCountInNetwork() int { return 1 << (c.SubnetLen - c.Network.Bits()) }

// SubnetCount is how many subnets may be leased: those from SubnetMin to
// SubnetMax inclusive.
func (c *Config) SubnetCount() int {
	return int((addrToUint(c.SubnetMax)-addrToUint(c.SubnetMin))/c.subnetSize()) + 1
}

// Subnet returns the i-th leasable subnet, counting from SubnetMin.
func (c *Config) Subnet(i int) netip.Prefix {
	return netip.PrefixFrom(uintToAddr(addrToUint(c.SubnetMin)+uint32(i)*c.subnetSize()), c.SubnetLen)
}

// Leasable reports whether s is a subnet of the network that may be leased:
// the right length, aligned, and within SubnetMin..SubnetMax.
func (c *Config) Leasable(s netip.Prefix) bool {
	if !s.IsValid() || s.Bits() != c.SubnetLen || s.Masked() != s || !c.Network.Contains(s.Addr()) {
		return false
	}
	return s.Addr().Compare(c.SubnetMin) >= 0 && s.Addr().Compare(c.SubnetMax) <= 0
}

// Gateway is the first address of a subnet: the node's own address on its
// pod bridge, and what flannel writes to its subnet file.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

func parsePrefix(v json.RawMessage) (netip.Prefix, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return netip.Prefix{}, errors.New("must be a CIDR string such as \"10.244.0.0/16\"")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("is not a valid CIDR")
	}
	return p, nil
}

func parseAddr(v json.RawMessage) (netip.Addr, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return netip.Addr{}, errors.New("must be an IPv4 address string")
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, errors.New("is not a valid IPv4 address")
	}
	return a, nil
}

// checkKeys refuses keys that are not in known, one error per key,
// suggesting the right spelling when only the case differs.
func checkKeys(prefix string, raw map[string]json.RawMessage, known []string) error {
	var unknown []string
	for k := range raw {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	var errs []error
	for _, k := range unknown {
		reason := "unknown key; known keys are " + strings.Join(known, ", ")
		for _, want := range known {
			if strings.EqualFold(k, want) {
				reason = fmt.Sprintf("unknown key; did you mean %q?", want)
			}
		}
		if len(known) == 0 {
			reason = "unknown key; this backend takes no options"
		}
		errs = append(errs, &FieldError{Field: prefix + k, Value: string(bytes.TrimSpace(raw[k])), Reason: reason})
	}
	return errors.Join(errs...)
}

// strictUnmarshal decodes JSON and refuses trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func addrToUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintToAddr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}
