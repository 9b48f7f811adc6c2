// Package cni is twill's CNI plugin: it attaches a pod to the node's overlay
// subnet with a veth pair whose node end sits on the cni0 bridge, and hands
// out pod addresses from the node's subnets (read from the subnet file that
// twilld writes: an IPv4 subnet, an IPv6 one, or both, and then a pod gets
// an address and a default route of each family, the bridge both gateways),
// keeping its allocations on disk.
//
// It implements the CNI 1.1.0 verbs ADD, DEL, CHECK, STATUS, GC and VERSION
// for cmd/twill-cni. It acts only in the network namespace it runs in (the
// node's) and in the pod namespace it is given; it must not touch routes,
// firewall rules or devices other than cni0 and its own veths: those belong
// to twilld.
package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twillnet/twill/overlay/subnetfile"
)

// Defaults for the plugin configuration.
const (
	DefaultBridge  = "cni0"
	DefaultDataDir = "/var/lib/cni/twill"
)

// Conf is the plugin's entry in a network configuration list.
type Conf struct {
	types.PluginConf

	// SubnetFile is the subnet file twilld writes (default
	// /run/twill/subnet.env).
	SubnetFile string
	// Bridge is the node's bridge for pods (default cni0).
	Bridge string
	// DataDir holds the address allocations (default /var/lib/cni/twill).
	DataDir string
	// IsGateway gives the bridge the subnet's gateway address and pods a
	// default route through it (default true).
	IsGateway bool
	// IPMasq asks for masquerading of pod traffic leaving the cluster
	// network. The plugin does not masquerade; twilld does when the subnet
	// file says TWILL_IPMASQ=true, so true is accepted only then.
	IPMasq *bool
	// HairpinMode lets a pod reach itself through the bridge (default true).
	HairpinMode bool
}

// field is one known configuration key: how to decode it into a Conf.
type field struct {
	decode func(c *Conf, raw json.RawMessage) error
}

func stringField(set func(c *Conf, s string)) field {
	return field{func(c *Conf, raw json.RawMessage) error {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("not a string")
		}
		set(c, s)
		return nil
	}}
}

func boolField(set func(c *Conf, b bool)) field {
	return field{func(c *Conf, raw json.RawMessage) error {
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("not true or false")
		}
		set(c, b)
		return nil
	}}
}

// ignored are keys the CNI spec or runtimes put in a plugin's configuration
// that twill reads through types.PluginConf or does not need.
var ignored = field{func(*Conf, json.RawMessage) error { return nil }}

var fields = map[string]field{
	"cniVersion":                ignored,
	"name":                      ignored,
	"type":                      ignored,
	"capabilities":              ignored,
	"runtimeConfig":             ignored,
	"args":                      ignored,
	"prevResult":                ignored,
	"dns":                       ignored,
	"cni.dev/valid-attachments": ignored,
	"cni.dev/attachments":       ignored,
	"ipam": {func(c *Conf, raw json.RawMessage) error {
		if t := bytes.TrimSpace(raw); bytes.Equal(t, []byte("null")) || bytes.Equal(t, []byte("{}")) {
			return nil
		}
		return fmt.Errorf("twill allocates pod addresses itself; remove the ipam section")
	}},
	"subnetFile":  stringField(func(c *Conf, s string) { c.SubnetFile = s }),
	"bridge":      stringField(func(c *Conf, s string) { c.Bridge = s }),
	"dataDir":     stringField(func(c *Conf, s string) { c.DataDir = s }),
	"isGateway":   boolField(func(c *Conf, b bool) { c.IsGateway = b }),
	"hairpinMode": boolField(func(c *Conf, b bool) { c.HairpinMode = b }),
	"ipMasq":      boolField(func(c *Conf, b bool) { c.IPMasq = &b }),
}

// ParseConf decodes and validates the plugin configuration from a CNI
// command's stdin. Unknown keys and values of the wrong kind are errors that
// name the key and the value.
func ParseConf(data []byte) (Conf, error) {
	c := Conf{
		SubnetFile:  subnetfile.DefaultPath,
		Bridge:      DefaultBridge,
		DataDir:     DefaultDataDir,
		IsGateway:   true,
		HairpinMode: true,
	}
	if err := json.Unmarshal(data, &c.PluginConf); err != nil {
		return Conf{}, fmt.Errorf("decode network configuration: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return Conf{}, fmt.Errorf("decode network configuration: %w", err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []string
	for _, k := range keys {
		f, ok := fields[k]
		if !ok {
			errs = append(errs, fmt.Sprintf("unknown field %q (value %s)", k, clip(raw[k])))
			continue
		}
		if err := f.decode(&c, raw[k]); err != nil {
			errs = append(errs, fmt.Sprintf("field %q (value %s): %v", k, clip(raw[k]), err))
		}
	}
	check := func(key, val string) {
		if val == "" {
			errs = append(errs, fmt.Sprintf("field %q (value \"\"): must not be empty", key))
		}
	}
	check("subnetFile", c.SubnetFile)
	check("dataDir", c.DataDir)
	if c.Bridge == "" || len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/ \t\n:") {
		errs = append(errs, fmt.Sprintf("field %q (value %q): not an interface name", "bridge", c.Bridge))
	}
	if len(errs) > 0 {
		return Conf{}, fmt.Errorf("twill network configuration: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// clip renders a raw JSON value for an error message, cut short if long.
func clip(raw json.RawMessage) string {
	s := string(bytes.TrimSpace(raw))
	if len(s) > 64 {
		s = s[:61] + "..."
	}
	return s
}
