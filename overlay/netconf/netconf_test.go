package netconf

import (
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
)

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		subnetLen int
		min, max  string
		count     int
		backend   Backend
	}{
		{"big network", `{"Network":"10.244.0.0/16"}`, 24, "10.244.1.0", "10.244.255.0", 255,
			Backend{Type: "udp", Port: 8285, Offload: true, KernelPath: true}},
		{"a /22 gets prefix+2", `{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}`, 24, "10.244.1.0", "10.244.3.0", 3,
			Backend{Type: "vxlan", Port: 8472, VNI: 1}},
		{"smaller than /22", `{"Network":"10.244.0.0/23","Backend":{"Type":"host-gw"}}`, 25, "10.244.0.128", "10.244.1.128", 3,
			Backend{Type: "host-gw"}},
		{"a /21 keeps 24", `{"Network":"10.244.0.0/21","Backend":{"Type":"alloc"}}`, 24, "10.244.1.0", "10.244.7.0", 7,
			Backend{Type: "alloc"}},
		{"explicit range", `{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true}}`,
			24, "10.244.1.0", "10.244.16.0", 16, Backend{Type: "vxlan", Port: 4789, VNI: 4096, DirectRouting: true}},
		{"flannel keys", `{"EnableIPv4":true,"EnableIPv6":false,"EnableNFTables":true,"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000,"Offload":false}}`,
			24, "10.244.1.0", "10.244.255.0", 255, Backend{Type: "udp", Port: 9000, KernelPath: true}},
		{"udp without the kernel path", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","KernelPath":false}}`,
			24, "10.244.1.0", "10.244.255.0", 255, Backend{Type: "udp", Port: 8285, Offload: true}},
		{"macvlan", `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan","Master":"eth1"}}`, 28, "192.168.56.144", "192.168.56.240", 7,
			Backend{Type: "macvlan", Mode: "bridge", Master: "eth1"}},
		{"ipvlan l3", `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"ipvlan","Mode":"l3"}}`, 28, "192.168.56.144", "192.168.56.240", 7,
			Backend{Type: "ipvlan", Mode: "l3"}},
		{"wireguard defaults", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}`, 24, "10.244.1.0", "10.244.255.0", 255,
			Backend{Type: "wireguard", Mode: "separate", ListenPort: 51820, ListenPortV6: 51821}},
		{"wireguard flannel options", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","ListenPort":51000,"ListenPortV6":51001,"Mode":"auto","PersistentKeepaliveInterval":25,"MTU":1400,"Implementation":"userspace"}}`,
			24, "10.244.1.0", "10.244.255.0", 255, Backend{Type: "wireguard", Mode: "auto", PSK: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", ListenPort: 51000, ListenPortV6: 51001,
				PersistentKeepaliveInterval: 25, MTU: 1400, Implementation: "userspace"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if c.SubnetLen != tt.subnetLen || c.SubnetMin.String() != tt.min || c.SubnetMax.String() != tt.max {
				t.Errorf("got SubnetLen %d, range %s..%s; want %d, %s..%s", c.SubnetLen, c.SubnetMin, c.SubnetMax, tt.subnetLen, tt.min, tt.max)
			}
			if c.SubnetCount() != tt.count {
				t.Errorf("SubnetCount = %d, want %d", c.SubnetCount(), tt.count)
			}
			if c.Backend != tt.backend {
				t.Errorf("Backend = %+v, want %+v", c.Backend, tt.backend)
			}
			// The last leasable subnet is SubnetMax, and it is leasable.
			last := c.Subnet(c.SubnetCount() - 1)
			if last.Addr() != c.SubnetMax || !c.Leasable(last) {
				t.Errorf("Subnet(last) = %s, leasable %v", last, c.Leasable(last))
			}
			checkRoundTrip(t, c)
		})
	}
}

func TestParseRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name, in, field, value, reason string
	}{
		{"invalid CIDR", `{"Network":"10.244.0.0/33"}`, "Network", `"10.244.0.0/33"`, "not a valid CIDR"},
		{"CIDR garbage", `{"Network":"ten.net"}`, "Network", `"ten.net"`, "not a valid CIDR"},
		{"CIDR not a string", `{"Network":42}`, "Network", `42`, "CIDR string"},
		{"missing network", `{"SubnetLen":24}`, "Network", ``, "missing"},
		{"IPv6 network", `{"Network":"fd00::/48"}`, "Network", `"fd00::/48"`, "IPv4"},
		{"host bits", `{"Network":"10.244.1.0/16"}`, "Network", `"10.244.1.0/16"`, `did you mean "10.244.0.0/16"`},
		{"SubnetLen equal to prefix", `{"Network":"10.244.0.0/16","SubnetLen":16}`, "SubnetLen", `16`, "longer than the network's prefix /16"},
		{"SubnetLen shorter than prefix", `{"Network":"10.244.0.0/16","SubnetLen":8}`, "SubnetLen", `8`, "longer than"},
		{"SubnetLen over 30", `{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen", `31`, "at most 30"},
		{"SubnetLen not integer", `{"Network":"10.244.0.0/16","SubnetLen":"24"}`, "SubnetLen", `"24"`, "integer"},
		{"SubnetMin outside", `{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}`, "SubnetMin", `"10.245.0.0"`, "outside the network 10.244.0.0/16"},
		{"SubnetMax outside", `{"Network":"10.244.0.0/16","SubnetMax":"192.168.0.0"}`, "SubnetMax", `"192.168.0.0"`, "outside the network"},
		{"SubnetMin unaligned", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7"}`, "SubnetMin", `"10.244.1.7"`, "first address of a /24"},
		{"SubnetMax invalid", `{"Network":"10.244.0.0/16","SubnetMax":"10.244.300.0"}`, "SubnetMax", `"10.244.300.0"`, "not a valid IPv4"},
		{"reversed range", `{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}`, "SubnetMin", `10.244.9.0`, "after SubnetMax 10.244.2.0"},
		{"unknown backend", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguards"}}`, "Backend.Type", `"wireguards"`, "known types are udp, vxlan, host-gw, ipip, bgp, wireguard, macvlan, ipvlan, alloc"},
		{"wireguard PSK short", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"c2hvcnQ="}}`, "Backend.PSK", `"c2hvcnQ="`, "base64 of 32 bytes"},
		{"wireguard PSK not base64", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"not base64!"}}`, "Backend.PSK", `"not base64!"`, "base64 of 32 bytes"},
		{"wireguard port", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":65536}}`, "Backend.ListenPort", `65536`, "1..65535"},
		{"wireguard port v6", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPortV6":0}}`, "Backend.ListenPortV6", `0`, "1..65535"},
		{"wireguard mode", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"both"}}`, "Backend.Mode", `"both"`, "separate, auto, ipv4, ipv6"},
		{"wireguard mode ipv6 without IPv6", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"ipv6"}}`, "Backend.Mode", `"ipv6"`, "needs EnableIPv6"},
		{"wireguard ListenPortV6 is ListenPort", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","ListenPort":51820,"ListenPortV6":51820}}`, "Backend.ListenPortV6", `51820`, "must differ"},
		{"wireguard ListenPortV6 out of range", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","ListenPortV6":70000}}`, "Backend.ListenPortV6", `70000`, "1..65535"},
		{"wireguard mode unknown dual stack", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","Mode":"dual"}}`, "Backend.Mode", `"dual"`, "separate, auto, ipv4, ipv6"},
		{"wireguard keepalive", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":-1}}`, "Backend.PersistentKeepaliveInterval", `-1`, "0..65535"},
		{"wireguard implementation", `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Implementation":"go"}}`, "Backend.Implementation", `"go"`, "kernel or userspace"},
		{"backend case", `{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN"}}`, "Backend.Type", `"VXLAN"`, `did you mean "vxlan"`},
		{"unknown top-level key", `{"Network":"10.244.0.0/16","Subnetlen":24}`, "Subnetlen", `24`, `did you mean "SubnetLen"`},
		{"unknown key", `{"Network":"10.244.0.0/16","Foo":1}`, "Foo", `1`, "unknown key"},
		{"unknown backend option", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNl":2}}`, "Backend.VNl", `2`, "unknown key"},
		{"option of another backend", `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","Port":1}}`, "Backend.Port", `1`, "takes no options"},
		{"bad port", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}`, "Backend.Port", `70000`, "1..65535"},
		{"bad VNI", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}`, "Backend.VNI", `16777216`, "0..16777215"},
		{"bad MTU", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":20}}`, "Backend.MTU", `20`, "68..65535"},
		{"bad mode", `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan","Mode":"l2"}}`, "Backend.Mode", `"l2"`, "bridge, private, vepa, passthru"},
		{"bad master", `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"ipvlan","Master":"a/b"}}`, "Backend.Master", `"a/b"`, "interface name"},
		{"bool option not bool", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":"yes"}}`, "Backend.GBP", `"yes"`, "true or false"},
		{"KernelPath not bool", `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","KernelPath":1}}`, "Backend.KernelPath", `1`, "true or false"},
		{"backend not object", `{"Network":"10.244.0.0/16","Backend":"vxlan"}`, "Backend", `"vxlan"`, "JSON object"},
		{"IPv6 enabled without a network", `{"Network":"10.244.0.0/16","EnableIPv6":true}`, "EnableIPv6", `true`, `needs IPv6Network, the IPv6 cluster network, e.g. "fd00:10:244::/56"`},
		{"no family", `{"Network":"10.244.0.0/16","EnableIPv4":false}`, "EnableIPv4", `false`, "enables no address family"},
		{"no family at all", `{"EnableIPv4":false,"EnableIPv6":false,"IPv6Network":"fd00::/48"}`, "EnableIPv4", `false`, "enables no address family"},
		{"IPv6 host bits", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::1/56"}`, "IPv6Network", `"fd00:10:244::1/56"`, `has host bits set; did you mean "fd00:10:244::/56"`},
		{"IPv6SubnetLen 127", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}`, "IPv6SubnetLen", `127`, "at most 126"},
		{"IPv6SubnetLen equal to prefix", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":48}`, "IPv6SubnetLen", `48`, "longer than the network's prefix /48"},
		{"IPv6 network too small", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}`, "IPv6Network", `"fd00::/125"`, "too small: the prefix must be at most /124"},
		{"IPv4 in IPv6Network", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.245.0.0/16"}`, "IPv6Network", `"10.245.0.0/16"`, "must be an IPv6 network"},
		{"IPv4 in IPv6SubnetMin", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"10.244.1.0"}`, "IPv6SubnetMin", `"10.244.1.0"`, "not a valid IPv6 address"},
		{"IPv6 in SubnetMax", `{"Network":"10.244.0.0/16","SubnetMax":"fd00::","EnableIPv6":true,"IPv6Network":"fd00::/48"}`, "SubnetMax", `"fd00::"`, "not a valid IPv4 address"},
		{"IPv6SubnetMin outside", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}`, "IPv6SubnetMin", `"fd01::"`, "outside the network fd00::/48"},
		{"IPv6SubnetMax unaligned", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:5::1"}`, "IPv6SubnetMax", `"fd00:0:0:5::1"`, "first address of a /64"},
		{"IPv6 range reversed", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:2::"}`, "IPv6SubnetMin", `fd00:0:0:9::`, "after IPv6SubnetMax fd00:0:0:2::"},
		{"IPv6 link-local", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fe80::/64"}`, "IPv6Network", `"fe80::/64"`, "link-local (fe80::/10)"},
		{"IPv6 multicast", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"ff05::/64"}`, "IPv6Network", `"ff05::/64"`, "multicast"},
		{"IPv4-mapped", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"::ffff:10.0.0.0/104"}`, "IPv6Network", `"::ffff:10.0.0.0/104"`, "IPv4-mapped"},
		{"the whole IPv6 space", `{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"::/0"}`, "IPv6Network", `"::/0"`, "overlaps"},
		{"IPv6 field of a disabled family still checked", `{"Network":"10.244.0.0/16","IPv6Network":"fd00::1/48"}`, "IPv6Network", `"fd00::1/48"`, "host bits"},
		{"EnableIPv6 not bool", `{"Network":"10.244.0.0/16","EnableIPv6":1}`, "EnableIPv6", `1`, "true or false"},
		{"the whole IPv4 space", `{"Network":"0.0.0.0/0"}`, "Network", `"0.0.0.0/0"`, "overlaps the \"this network\" (0.0.0.0/8) range"},
		{"loopback", `{"Network":"127.0.0.0/8"}`, "Network", `"127.0.0.0/8"`, "loopback"},
		{"inside loopback", `{"Network":"127.10.0.0/16"}`, "Network", `"127.10.0.0/16"`, "loopback"},
		{"multicast", `{"Network":"224.0.0.0/4"}`, "Network", `"224.0.0.0/4"`, "multicast"},
		{"link-local", `{"Network":"169.254.0.0/16"}`, "Network", `"169.254.0.0/16"`, "link-local"},
		{"reserved", `{"Network":"240.0.0.0/8"}`, "Network", `"240.0.0.0/8"`, "reserved"},
		{"covers a special range", `{"Network":"0.0.0.0/1"}`, "Network", `"0.0.0.0/1"`, "overlaps"},
		{"underlay slice too small", `{"Network":"192.168.56.128/25","SubnetLen":30,"Backend":{"Type":"macvlan"}}`, "SubnetLen", `30`, "at least a /29"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse(%s) = %v, want a *FieldError", tt.in, err)
			}
			if fe.Field != tt.field || fe.Value != tt.value {
				t.Errorf("field %q value %q; want field %q value %q (%v)", fe.Field, fe.Value, tt.field, tt.value, err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not say %q", err, tt.reason)
			}
			if !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), tt.value) {
				t.Errorf("error %q does not name the field %q and the value %q", err, tt.field, tt.value)
			}
		})
	}
}

// TestParseReportsEveryWrongField: an operator with five mistakes hears of
// all five in one run.
func TestParseReportsEveryWrongField(t *testing.T) {
	in := `{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0","SubnetMax":"10.244.1.7","Foo":1,"Bar":2,"EnableIPv6":"yes",
		"Backend":{"Type":"vxlan","VNI":-1,"Port":0,"GBP":"on","VNl":2}}`
	_, err := Parse([]byte(in))
	if err == nil {
		t.Fatal("Parse accepted a config with nine wrong fields")
	}
	for _, want := range []string{
		"SubnetMin = \"10.245.0.0\": is outside", "SubnetMax = \"10.244.1.7\": is not the first address",
		"Foo = 1: unknown key", "Bar = 2: unknown key", "EnableIPv6 = \"yes\": must be true or false",
		"Backend.VNI = -1", "Backend.Port = 0", "Backend.GBP = \"on\"", "Backend.VNl = 2: unknown key",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "network config:"); n != 9 {
		t.Errorf("%d errors reported, want 9:\n%v", n, err)
	}
	// A wrong Network is reported with the backend's errors; what depends on
	// the network is not checked against it.
	_, err = Parse([]byte(`{"Network":"127.0.0.0/8","SubnetMin":"10.0.0.0","Backend":{"Type":"udp","Port":"x"}}`))
	if err == nil || !strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), "Backend.Port") || strings.Contains(err.Error(), "SubnetMin") {
		t.Errorf("Parse = %v; want the Network and Backend.Port errors only", err)
	}
}

func TestParseRefusesMalformedJSON(t *testing.T) {
	for _, in := range []string{``, `null`, `[]`, `{"Network":`, `{"Network":"10.244.0.0/16"} {}`} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), "network config") {
			t.Errorf("Parse(%q) = %v, want a network config error", in, err)
		}
	}
}

func TestLeasable(t *testing.T) {
	c, err := Parse([]byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.2.0","SubnetMax":"10.244.9.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		"10.244.2.0/24": true, "10.244.9.0/24": true, "10.244.1.0/24": false, "10.244.10.0/24": false,
		"10.244.3.0/25": false, "10.244.3.1/24": false, "10.245.3.0/24": false,
	} {
		if got := c.Leasable(netip.MustParsePrefix(s)); got != want {
			t.Errorf("Leasable(%s) = %v, want %v", s, got, want)
		}
	}
	if g := Gateway(netip.MustParsePrefix("10.244.7.0/24")); g.String() != "10.244.7.1" {
		t.Errorf("Gateway = %s", g)
	}
}

// TestEveryOptionHasAField: each option a backend type takes (bgp's live
// in Backend.BGP) is read into and written from a field, so none is
// parsed and then dropped by MarshalJSON.
func TestEveryOptionHasAField(t *testing.T) {
	var b Backend
	fields := b.fields()
	for typ, keys := range backendOptions {
		if typ == TypeBGP {
			continue
		}
		for _, k := range keys {
			if _, ok := fields[k]; !ok {
				t.Errorf("%s option %s has no field in Backend.fields", typ, k)
			}
		}
	}
}

func TestParseIPv6(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		subnetLen int
		min, max  string
		count     int
	}{
		{"a /56 gets /64s", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}`, 64, "fd00:10:244:1::", "fd00:10:244:ff::", 255},
		{"a /62 keeps 64", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/62"}`, 64, "fd00:0:0:1::", "fd00:0:0:3::", 3},
		{"smaller than /62 gets prefix+2", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/63"}`, 65, "fd00::8000:0:0:0", "fd00:0:0:1:8000::", 3},
		{"the smallest network", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/124"}`, 126, "fd00::4", "fd00::c", 3},
		{"IPv6SubnetLen 126", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/120","IPv6SubnetLen":126}`, 126, "fd00::4", "fd00::fc", 63},
		{"explicit range", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:10:244:10::","IPv6SubnetMax":"fd00:10:244:1f::"}`,
			64, "fd00:10:244:10::", "fd00:10:244:1f::", 16},
		{"2^32 subnets", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":80}`, 80, "fd00::1:0:0:0", "fd00:0:0:ffff:ffff::", 1<<32 - 1},
		{"2^56 subnets", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/8"}`, 64, "fd00:0:0:1::", "fdff:ffff:ffff:ffff::", 1<<56 - 1},
		{"more subnets than an int counts", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/8","IPv6SubnetLen":120}`, 120, "fd00::100", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ff00", math.MaxInt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			r := c.IPv6()
			if !c.EnableIPv6 || r.SubnetLen != tt.subnetLen || r.SubnetMin.String() != tt.min || r.SubnetMax.String() != tt.max {
				t.Errorf("got IPv6SubnetLen %d, range %s..%s; want %d, %s..%s", r.SubnetLen, r.SubnetMin, r.SubnetMax, tt.subnetLen, tt.min, tt.max)
			}
			if r.Count() != tt.count {
				t.Errorf("Count = %d, want %d", r.Count(), tt.count)
			}
			first, last := r.Subnet(0), r.Subnet(min(r.Count(), 1<<40)-1)
			if first.Addr() != r.SubnetMin || !r.Leasable(first) || (r.Count() < 1<<40 && last.Addr() != r.SubnetMax) || !r.Leasable(last) {
				t.Errorf("Subnet(0) = %s, Subnet(last) = %s (leasable %v %v)", first, last, r.Leasable(first), r.Leasable(last))
			}
			if r.Leasable(netip.PrefixFrom(r.Network.Addr(), r.SubnetLen)) || r.Leasable(netip.PrefixFrom(r.SubnetMin, r.SubnetLen+1)) {
				t.Errorf("the network's first subnet or a subnet of the wrong length is leasable")
			}
			if c.EnableIPv4 != c.IPv4().Enabled() || (!c.EnableIPv4 && c.Network.IsValid()) {
				t.Errorf("EnableIPv4 %v but IPv4 range %+v", c.EnableIPv4, c.IPv4())
			}
			checkRoundTrip(t, c)
		})
	}
}

// checkRoundTrip: what MarshalJSON writes parses to the same config.
func checkRoundTrip(t *testing.T, c *Config) {
	t.Helper()
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out)
	if err != nil {
		t.Fatalf("re-parse %s: %v", out, err)
	}
	if *c2 != *c {
		t.Errorf("round trip changed the config:\n%+v\n%+v", c, c2)
	}
}

// TestMarshalFamilies: an IPv4 config writes the bytes it wrote
// before dual stack; an IPv6-only one says so.
func TestMarshalFamilies(t *testing.T) {
	for in, want := range map[string]string{
		`{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`: `{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.255.0","Backend":{"Type":"host-gw"}}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`: `{"EnableIPv6":true,"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.255.0",` +
			`"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:10:244:1::","IPv6SubnetMax":"fd00:10:244:ff::","Backend":{"Type":"host-gw"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00::/62","Backend":{"Type":"host-gw"}}`: `{"EnableIPv4":false,"EnableIPv6":true,` +
			`"IPv6Network":"fd00::/62","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:0:0:1::","IPv6SubnetMax":"fd00:0:0:3::","Backend":{"Type":"host-gw"}}`,
	} {
		c, err := Parse([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(c)
		if string(out) != want {
			t.Errorf("%s\nwrites %s\nwant   %s", in, out, want)
		}
	}
}

// TestWireGuardModes: what the wireguard Mode refusals leave alone: one
// port for both families where there is one device (auto, ipv4, ipv6) or
// one family (separate without IPv6), and Mode ipv6 with EnableIPv6.
func TestWireGuardModes(t *testing.T) {
	for _, in := range []string{
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","Mode":"auto","ListenPort":51820,"ListenPortV6":51820}}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","Mode":"ipv6","ListenPortV6":51820}}`,
		`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"separate","ListenPortV6":51820}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard","ListenPortV6":51820}}`,
	} {
		if _, err := Parse([]byte(in)); err != nil {
			t.Errorf("Parse(%s): %v", in, err)
		}
	}
}
