package netconf

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The backend types twill knows. Each has its own package under
// overlay/backend; this list is what a config may name.
const (
	TypeAlloc     = "alloc"
	TypeUDP       = "udp"
	TypeVXLAN     = "vxlan"
	TypeHostGW    = "host-gw"
	TypeIPIP      = "ipip"
	TypeMacvlan   = "macvlan"
	TypeIPvlan    = "ipvlan"
	TypeWireGuard = "wireguard"

	// DefaultBackend is the backend of a config that names none, as in flannel.
	DefaultBackend = TypeUDP
)

// Defaults of backend options, shared with flannel.
const (
	DefaultUDPPort   = 8285
	DefaultVXLANPort = 8472
	DefaultVNI       = 1

	DefaultWireGuardPort   = 51820
	DefaultWireGuardPortV6 = 51821
)

// backendOptions lists, per backend type, the option keys it takes besides Type.
var backendOptions = map[string][]string{
	TypeAlloc:     {},
	TypeUDP:       {"Port", "Offload", "KernelPath"},
	TypeVXLAN:     {"VNI", "Port", "GBP", "Learning", "DirectRouting", "MTU"},
	TypeHostGW:    {},
	TypeIPIP:      {"DirectRouting", "MTU"},
	TypeMacvlan:   {"Mode", "Master", "MTU"},
	TypeIPvlan:    {"Mode", "Master", "MTU"},
	TypeBGP:       bgpOptions,
	TypeWireGuard: {"PSK", "ListenPort", "ListenPortV6", "Mode", "PersistentKeepaliveInterval", "MTU", "Implementation"},
}

var modes = map[string][]string{
	TypeMacvlan:   {"bridge", "private", "vepa", "passthru"},
	TypeIPvlan:    {"l2", "l3", "l3s"},
	TypeWireGuard: {"separate", "auto", "ipv4", "ipv6"},
}

// WireGuard implementations (Backend.Implementation).
const (
	WireGuardKernel    = "kernel"
	WireGuardUserspace = "userspace"
)

// KnownBackends lists the backend types in a stable order.
func KnownBackends() []string {
	return []string{TypeUDP, TypeVXLAN, TypeHostGW, TypeIPIP, TypeBGP, TypeWireGuard, TypeMacvlan, TypeIPvlan, TypeAlloc}
}

// Backend is the backend section of a config: its type and options, with
// defaults applied. Options that a type does not take stay at their zero value.
type Backend struct {
	Type string

	// Port is the UDP port of udp (default 8285) and vxlan (default 8472),
	// and the TCP port bgp listens on and connects to (default 179).
	Port int
	// Offload turns on TUN and UDP segmentation offloads for udp (default true).
	Offload bool
	// KernelPath lets udp move packets to and from peers in the kernel
	// (two eBPF programs, same wire format) where the kernel can (default
	// true); false, or Offload false, keeps every packet in userspace.
	KernelPath bool
	// VNI is the VXLAN network identifier (default 1).
	VNI int
	// GBP turns on VXLAN group-based policy; Learning lets the VXLAN device
	// learn FDB entries itself.
	GBP, Learning bool
	// DirectRouting routes to peers on the same L2 segment directly, as
	// host-gw does, and tunnels only to the others (vxlan, ipip).
	DirectRouting bool
	// MTU overrides the MTU twill derives from the underlay.
	MTU int
	// Mode is the macvlan (bridge, private, vepa, passthru) or ipvlan (l2,
	// l3, l3s) mode, or wireguard's address family mode (separate, auto,
	// ipv4, ipv6; default separate); Master the host interface pods attach
	// to.
	Mode, Master string
	// BGP holds the bgp backend's options; nil for the other types (a
	// pointer keeps Backend comparable).
	BGP *BGP

	// PSK is wireguard's optional preshared key, base64 of 32 bytes.
	PSK string
	// ListenPort and ListenPortV6 are wireguard's UDP ports (default 51820
	// and 51821).
	ListenPort, ListenPortV6 int
	// PersistentKeepaliveInterval is wireguard's keepalive in seconds (0:
	// none), for nodes behind NAT.
	PersistentKeepaliveInterval int
	// Implementation forces wireguard's implementation, kernel or
	// userspace; empty chooses kernel where the module exists.
	Implementation string
}

// IsSublink reports whether b is a sublink backend (macvlan, ipvlan): pods
// sit on the underlay as sub-interfaces of its master rather than on an
// overlay the backend carries.
func (b Backend) IsSublink() bool { return b.Type == TypeMacvlan || b.Type == TypeIPvlan }

// parseBackend reads the Backend object; every option that is wrong is an
// error of its own.
func parseBackend(data json.RawMessage) (Backend, []error) {
	var raw map[string]json.RawMessage
	if err := strictUnmarshal(data, &raw); err != nil || raw == nil {
		return Backend{}, []error{fieldErr("Backend", data, "must be a JSON object such as {\"Type\": \"vxlan\"}")}
	}
	b := Backend{Type: DefaultBackend}
	if v, ok := raw["Type"]; ok {
		if err := json.Unmarshal(v, &b.Type); err != nil {
			return Backend{}, []error{fieldErr("Backend.Type", v, "must be a string, one of %s", strings.Join(KnownBackends(), ", "))}
		}
		delete(raw, "Type")
	}
	known, ok := backendOptions[b.Type]
	if !ok {
		hint := ""
		if lower := strings.ToLower(b.Type); backendOptions[lower] != nil {
			hint = fmt.Sprintf(" (did you mean %q?)", lower)
		}
		return Backend{}, []error{fieldErr("Backend.Type", quoted(b.Type), "unknown backend type%s; known types are %s", hint, strings.Join(KnownBackends(), ", "))}
	}
	var errs []error
	if err := checkKeys("Backend.", raw, known); err != nil {
		errs = append(errs, err)
	}

	switch b.Type {
	case TypeUDP:
		b.Port, b.Offload, b.KernelPath = DefaultUDPPort, true, true
	case TypeVXLAN:
		b.Port, b.VNI = DefaultVXLANPort, DefaultVNI
	case TypeMacvlan:
		b.Mode = "bridge"
	case TypeIPvlan:
		b.Mode = "l2"
	case TypeBGP:
		b.Port, b.BGP = DefaultBGPPort, defaultBGP()
	case TypeWireGuard:
		b.Mode, b.ListenPort, b.ListenPortV6 = "separate", DefaultWireGuardPort, DefaultWireGuardPortV6
	}
	fields := b.fields()
	type intOption struct {
		lo, hi     int
		what, note string
	}
	ints := map[string]intOption{
		"Port":                        {1, 65535, "a port number", ""},
		"ListenPort":                  {1, 65535, "a port number", ""},
		"ListenPortV6":                {1, 65535, "a port number", ""},
		"PersistentKeepaliveInterval": {0, 65535, "seconds", " (0: no keepalive)"},
		"VNI":                         {0, 1<<24 - 1, "a VXLAN network identifier", ""},
		"MTU":                         {68, 65535, "an MTU", ""},
	}
	for _, key := range known {
		v, ok := raw[key]
		if !ok {
			continue
		}
		field := "Backend." + key
		if b.Type == TypeBGP && key != "Port" && key != "MTU" {
			errs = append(errs, parseBGPOption(&b, key, v)...)
			continue
		}
		var err error
		if o, ok := ints[key]; ok {
			if intIn(v, fields[key].(*int), o.lo, o.hi) != nil {
				err = fieldErr(field, v, "must be %s %d..%d%s", o.what, o.lo, o.hi, o.note)
			}
			errs = appendErr(errs, err)
			continue
		}
		switch key {
		case "PSK":
			if json.Unmarshal(v, &b.PSK) != nil || !isKey(b.PSK) {
				err = fieldErr(field, v, "must be a WireGuard key: base64 of 32 bytes (wg genpsk)")
			}
		case "Implementation":
			impls := []string{WireGuardKernel, WireGuardUserspace}
			if json.Unmarshal(v, &b.Implementation) != nil || !slices.Contains(impls, b.Implementation) {
				err = fieldErr(field, v, "must be %s", strings.Join(impls, " or "))
			}
		case "Offload", "KernelPath", "GBP", "Learning", "DirectRouting":
			if json.Unmarshal(v, fields[key].(*bool)) != nil {
				err = fieldErr(field, v, "must be true or false")
			}
		case "Mode":
			if json.Unmarshal(v, &b.Mode) != nil || !slices.Contains(modes[b.Type], b.Mode) {
				err = fieldErr(field, v, "unknown %s mode; known modes are %s", b.Type, strings.Join(modes[b.Type], ", "))
			}
		case "Master":
			if json.Unmarshal(v, &b.Master) != nil || b.Master == "" || len(b.Master) > 15 || strings.ContainsAny(b.Master, "/ \t\n") {
				err = fieldErr(field, v, "must be a network interface name")
			}
		}
		errs = appendErr(errs, err)
	}
	if len(errs) > 0 {
		return Backend{}, errs
	}
	return b, nil
}

func appendErr(errs []error, err error) []error {
	if err != nil {
		return append(errs, err)
	}
	return errs
}

// validateAgainst checks what depends on the rest of the config.
func (b Backend) validateAgainst(c *Config) error {
	if b.IsSublink() && c.EnableIPv4 && c.SubnetLen > 29 {
		return &FieldError{Field: "SubnetLen", Value: fmt.Sprint(c.SubnetLen),
			Reason: fmt.Sprintf("too small for %s: each node's slice needs at least a /29", b.Type)}
	}
	if b.Type == TypeWireGuard {
		return b.validateWireGuard(c)
	}
	return nil
}

// validateWireGuard checks wireguard's Mode and ports against the
// families the network enables: Mode ipv6 reaches every peer at its
// PublicIPv6, which nodes publish only with EnableIPv6; Mode separate
// with both families has two devices, each listening on a port of its
// own.
func (b Backend) validateWireGuard(c *Config) error {
	if b.Mode == "ipv6" && !c.EnableIPv6 {
		return &FieldError{Field: "Backend.Mode", Value: `"ipv6"`,
			Reason: "reaches the peers at their PublicIPv6 and needs EnableIPv6 (use separate, auto or ipv4 for an IPv4-only network)"}
	}
	if b.Mode == "separate" && c.EnableIPv4 && c.EnableIPv6 && b.ListenPortV6 == b.ListenPort {
		return &FieldError{Field: "Backend.ListenPortV6", Value: fmt.Sprint(b.ListenPortV6),
			Reason: "is Backend.ListenPort too: in Mode separate twill-wg listens on ListenPort and twill-wg-v6 on ListenPortV6, which must differ"}
	}
	return nil
}

// fields maps each option key to the field of b that holds it (bgp's
// options live in b.BGP and are not here): what parseBackend fills and
// MarshalJSON writes, named once.
func (b *Backend) fields() map[string]any {
	return map[string]any{
		"Port": &b.Port, "VNI": &b.VNI, "MTU": &b.MTU, "ListenPort": &b.ListenPort, "ListenPortV6": &b.ListenPortV6,
		"PersistentKeepaliveInterval": &b.PersistentKeepaliveInterval,
		"Offload":                     &b.Offload, "KernelPath": &b.KernelPath, "GBP": &b.GBP, "Learning": &b.Learning, "DirectRouting": &b.DirectRouting,
		"Mode": &b.Mode, "Master": &b.Master, "PSK": &b.PSK, "Implementation": &b.Implementation,
	}
}

// MarshalJSON writes the backend with the options its type takes; an
// option that is unset (an MTU of 0, an empty string but the mode) is
// left out.
func (b Backend) MarshalJSON() ([]byte, error) {
	m := map[string]any{"Type": b.Type}
	b.BGP.marshal(m)
	fields := b.fields()
	for _, key := range backendOptions[b.Type] {
		switch f := fields[key].(type) {
		case *int:
			if key != "MTU" || *f != 0 {
				m[key] = *f
			}
		case *bool:
			m[key] = *f
		case *string:
			if key == "Mode" || *f != "" {
				m[key] = *f
			}
		}
	}
	return json.Marshal(m)
}

func intIn(v json.RawMessage, dst *int, lo, hi int) error {
	var n int
	if err := strictUnmarshal(v, &n); err != nil {
		return err
	}
	if n < lo || n > hi {
		return fmt.Errorf("out of range")
	}
	*dst = n
	return nil
}

// isKey reports whether s is a WireGuard key: standard base64 of 32 bytes.
func isKey(s string) bool {
	k, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(k) == 32
}

func quoted(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}
