// Package netconf is the cluster's network configuration: flannel's JSON
// (Network, SubnetLen, SubnetMin, SubnetMax, EnableIPv4, EnableIPv6,
// IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax, Backend), its
// defaults, its validation and the subnet arithmetic of both families.
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
// It holds an IPv4 range, an IPv6 range, or both (dual stack); the fields
// of a family that is not enabled are zero.
type Config struct {
	// EnableIPv4 and EnableIPv6 say which families nodes lease subnets of
	// (flannel's keys; IPv4 by default, IPv6 when asked for).
	EnableIPv4, EnableIPv6 bool
	// Network is the cluster network that every node subnet is carved from.
	Network netip.Prefix
	// SubnetLen is the prefix length of each node's subnet.
	SubnetLen int
	// SubnetMin and SubnetMax are the first and last subnet (inclusive) that
	// may be leased, as base addresses.
	SubnetMin netip.Addr
	SubnetMax netip.Addr
	// IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are the
	// same for IPv6 (IPv6SubnetLen 64 by default, or the network's prefix +
	// 2 when the network is smaller than a /62).
	IPv6Network   netip.Prefix
	IPv6SubnetLen int
	IPv6SubnetMin netip.Addr
	IPv6SubnetMax netip.Addr
	// Backend is the data path and its options.
	Backend Backend
}

// IPv4 is the config's IPv4 range; zero when IPv4 is not enabled.
func (c *Config) IPv4() SubnetRange {
	return SubnetRange{Network: c.Network, SubnetLen: c.SubnetLen, SubnetMin: c.SubnetMin, SubnetMax: c.SubnetMax}
}

// IPv6 is the config's IPv6 range; zero when IPv6 is not enabled.
func (c *Config) IPv6() SubnetRange {
	return SubnetRange{Network: c.IPv6Network, SubnetLen: c.IPv6SubnetLen, SubnetMin: c.IPv6SubnetMin, SubnetMax: c.IPv6SubnetMax}
}

func (c *Config) setRange(f family, r SubnetRange) {
	if f.bits == 32 {
		c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax = r.Network, r.SubnetLen, r.SubnetMin, r.SubnetMax
		return
	}
	c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax = r.Network, r.SubnetLen, r.SubnetMin, r.SubnetMax
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

// topLevelKeys are the keys a config may have. EnableNFTables is accepted
// so that twill can read a config that a flannel cluster wrote.
var topLevelKeys = []string{"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6",
	"IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "EnableNFTables"}

// Parse reads a JSON network config, applies the defaults and validates it.
// Every field that is wrong is reported, each as a *FieldError, joined into
// one error (errors.As finds the first); a field whose check needs another
// field that is wrong (SubnetMin needs Network) is not checked.
//
// The fields of a family that is not enabled are checked when present, as
// a typo should be, and then left out of the Config, as flannel ignores
// them.
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
	cfg := &Config{EnableIPv4: true}

	enabled := map[string]*bool{"EnableIPv4": &cfg.EnableIPv4, "EnableIPv6": &cfg.EnableIPv6, "EnableNFTables": new(bool)}
	for _, key := range []string{"EnableIPv4", "EnableIPv6", "EnableNFTables"} {
		// twill always uses nftables; EnableNFTables is accepted for flannel's sake.
		if v, ok := raw[key]; ok && json.Unmarshal(v, enabled[key]) != nil {
			fail(fieldErr(key, v, "must be true or false"))
		}
	}
	if len(errs) == 0 && !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		fail(&FieldError{Field: "EnableIPv4", Value: "false", Reason: "and EnableIPv6 is not true: the config enables no address family"})
	}

	for _, f := range []family{ipv4, ipv6} {
		on := cfg.EnableIPv4
		if f.bits == 128 {
			on = cfg.EnableIPv6
		}
		if !on && !slices.ContainsFunc([]string{f.network, f.subnetLen, f.subnetMin, f.subnetMax}, func(k string) bool { _, ok := raw[k]; return ok }) {
			continue
		}
		r, rerrs := parseRange(raw, f)
		errs = append(errs, rerrs...)
		if on {
			cfg.setRange(f, r)
		}
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

// MarshalJSON writes the config in flannel's JSON form, defaults included.
// The keys of a family that is not enabled are left out.
func (c *Config) MarshalJSON() ([]byte, error) {
	backend, err := c.Backend.MarshalJSON()
	if err != nil {
		return nil, err
	}
	var w struct {
		EnableIPv4    *bool  `json:",omitempty"`
		EnableIPv6    bool   `json:",omitempty"`
		Network       string `json:",omitempty"`
		SubnetLen     int    `json:",omitempty"`
		SubnetMin     string `json:",omitempty"`
		SubnetMax     string `json:",omitempty"`
		IPv6Network   string `json:",omitempty"`
		IPv6SubnetLen int    `json:",omitempty"`
		IPv6SubnetMin string `json:",omitempty"`
		IPv6SubnetMax string `json:",omitempty"`
		Backend       json.RawMessage
	}
	if c.EnableIPv4 {
		w.Network, w.SubnetLen, w.SubnetMin, w.SubnetMax = c.Network.String(), c.SubnetLen, c.SubnetMin.String(), c.SubnetMax.String()
	} else {
		w.EnableIPv4 = new(bool)
	}
	if c.EnableIPv6 {
		w.EnableIPv6 = true
		w.IPv6Network, w.IPv6SubnetLen, w.IPv6SubnetMin, w.IPv6SubnetMax = c.IPv6Network.String(), c.IPv6SubnetLen, c.IPv6SubnetMin.String(), c.IPv6SubnetMax.String()
	}
	w.Backend = backend
	return json.Marshal(w)
}

// SubnetCountInNetwork is how many IPv4 subnets of SubnetLen the network holds.
func (c *Config) SubnetCountInNetwork() int { return c.IPv4().CountInNetwork() }

// SubnetCount is how many IPv4 subnets may be leased: those from SubnetMin
// to SubnetMax inclusive.
func (c *Config) SubnetCount() int { return c.IPv4().Count() }

// Subnet returns the i-th leasable IPv4 subnet, counting from SubnetMin.
func (c *Config) Subnet(i int) netip.Prefix { return c.IPv4().Subnet(i) }

// Leasable reports whether s is an IPv4 subnet of the network that may be
// leased: the right length, aligned, and within SubnetMin..SubnetMax.
func (c *Config) Leasable(s netip.Prefix) bool { return c.IPv4().Leasable(s) }

// Gateway is the first address of a subnet: the node's own address on its
// pod bridge, and what flannel writes to its subnet file.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

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
