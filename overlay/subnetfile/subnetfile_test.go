package subnetfile

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "twill", "subnet.env")
	f := File{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.1/24"), MTU: 1450, IPMasq: true}
	if err := Write(path, f); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	got, err := Read(path)
	if err != nil || got != f {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if got.NodeSubnet().String() != "10.244.3.0/24" || got.Gateway().String() != "10.244.3.1" {
		t.Errorf("NodeSubnet %s Gateway %s", got.NodeSubnet(), got.Gateway())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	for in, want := range map[string]string{
		"TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\n":                     "TWILL_IPMASQ is missing",
		"TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=15\nTWILL_IPMASQ=true\n":    "TWILL_MTU=15",
		"TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.245.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n":  "outside TWILL_NETWORK",
		"TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=bogus\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n":          "TWILL_SUBNET=bogus",
		"TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=maybe\n": "TWILL_IPMASQ=maybe",
		"garbage line\n": "not KEY=VALUE",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want it to say %q", in, err, want)
		}
	}
}

func TestUnderlayKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	f := File{
		Network: netip.MustParsePrefix("192.168.56.128/25"), Subnet: netip.MustParsePrefix("192.168.56.145/28"), MTU: 1500,
		Backend: "macvlan",
		Sublink: Sublink{Master: "eth0", Mode: "bridge", Subnet: netip.MustParsePrefix("192.168.56.0/24"),
			Gateway: netip.MustParseAddr("192.168.56.1")},
	}
	if err := Write(path, f); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "TWILL_NETWORK=192.168.56.128/25\nTWILL_SUBNET=192.168.56.145/28\nTWILL_MTU=1500\nTWILL_IPMASQ=false\n" +
		"TWILL_BACKEND=macvlan\nTWILL_UNDERLAY_MASTER=eth0\nTWILL_UNDERLAY_MODE=bridge\nTWILL_UNDERLAY_SUBNET=192.168.56.0/24\nTWILL_UNDERLAY_GATEWAY=192.168.56.1\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	got, err := Read(path)
	if err != nil || got != f || !got.IsSublink() {
		t.Fatalf("read back %+v, %v", got, err)
	}

	// No gateway: the key is left out and reads back as none.
	f.Sublink.Gateway = netip.Addr{}
	got, err = Parse(f.Marshal())
	if err != nil || got != f || strings.Contains(string(f.Marshal()), "GATEWAY") {
		t.Fatalf("without a gateway: %+v, %v", got, err)
	}

	// A file from before TWILL_BACKEND is an overlay file.
	old, err := Parse([]byte("TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n"))
	if err != nil || old.IsSublink() || old.Backend != "" {
		t.Fatalf("old file: %+v, %v", old, err)
	}
}

func TestUnderlayKeysChecked(t *testing.T) {
	base := "TWILL_NETWORK=192.168.56.128/25\nTWILL_SUBNET=192.168.56.145/28\nTWILL_MTU=1500\nTWILL_IPMASQ=false\nTWILL_BACKEND=ipvlan\n"
	for in, want := range map[string]string{
		base: "TWILL_UNDERLAY_MASTER is missing",
		base + "TWILL_UNDERLAY_MASTER=eth0\nTWILL_UNDERLAY_MODE=l2\nTWILL_UNDERLAY_SUBNET=10.0.0.0/24\n":                               "TWILL_NETWORK=192.168.56.128/25 is outside TWILL_UNDERLAY_SUBNET=10.0.0.0/24",
		base + "TWILL_UNDERLAY_MASTER=eth0\nTWILL_UNDERLAY_MODE=l2\nTWILL_UNDERLAY_SUBNET=192.168.56.0/24\nTWILL_UNDERLAY_GATEWAY=x\n": "TWILL_UNDERLAY_GATEWAY=x",
		base + "TWILL_UNDERLAY_MASTER=a/b\nTWILL_UNDERLAY_MODE=l2\nTWILL_UNDERLAY_SUBNET=192.168.56.0/24\n":                            "TWILL_UNDERLAY_MASTER=a/b",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want it to say %q", in, err, want)
		}
	}
}

func TestDualStackAndIPv6Only(t *testing.T) {
	dual := File{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.1/24"),
		IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:3::1/64"), MTU: 1450, IPMasq: true}
	v6only := dual
	v6only.Network, v6only.Subnet = netip.Prefix{}, netip.Prefix{}
	for _, tt := range []struct {
		f    File
		want string
	}{
		{dual, "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_NETWORK=fd00:10:244::/56\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n"},
		{v6only, "TWILL_IPV6_NETWORK=fd00:10:244::/56\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n"},
	} {
		path := filepath.Join(t.TempDir(), "subnet.env")
		if err := Write(path, tt.f); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(path)
		if string(data) != tt.want {
			t.Errorf("file:\n%s\nwant:\n%s", data, tt.want)
		}
		got, err := Read(path)
		if err != nil || got != tt.f {
			t.Errorf("read back %+v, %v", got, err)
		}
		if got.IPv6NodeSubnet().String() != "fd00:10:244:3::/64" || got.IPv6Gateway().String() != "fd00:10:244:3::1" || len(got.Subnets()) != 1+boolInt(tt.f.Subnet.IsValid()) {
			t.Errorf("IPv6NodeSubnet %s IPv6Gateway %s Subnets %v", got.IPv6NodeSubnet(), got.IPv6Gateway(), got.Subnets())
		}
	}
	if v6only.NodeSubnet().IsValid() || v6only.Gateway().IsValid() {
		t.Errorf("IPv6-only file has an IPv4 subnet %s", v6only.NodeSubnet())
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestFlannelFile reads the files flannel writes (pkg/subnet
// WriteSubnetFile), dual stack and IPv6 only.
func TestFlannelFile(t *testing.T) {
	for in, want := range map[string]File{
		"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n": {
			Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.1/24"),
			IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::1/64"), MTU: 1450, IPMasq: true},
		"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n": {
			IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::1/64"), MTU: 1500},
	} {
		got, err := Parse([]byte(in))
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

func TestIPv6KeysChecked(t *testing.T) {
	tail := "TWILL_MTU=1450\nTWILL_IPMASQ=true\n"
	for in, want := range map[string]string{
		"TWILL_IPV6_NETWORK=fd00:10:244::/56\nTWILL_IPV6_SUBNET=fd00:10:245::1/64\n" + tail:  "TWILL_IPV6_SUBNET=fd00:10:245::1/64 is outside TWILL_IPV6_NETWORK=fd00:10:244::/56",
		"TWILL_IPV6_NETWORK=10.244.0.0/16\nTWILL_IPV6_SUBNET=10.244.1.1/24\n" + tail:         "TWILL_IPV6_NETWORK=10.244.0.0/16: not an IPv6 network CIDR",
		"TWILL_IPV6_NETWORK=fd00:10:244::1/56\nTWILL_IPV6_SUBNET=fd00:10:244::1/64\n" + tail: "TWILL_IPV6_NETWORK=fd00:10:244::1/56: not an IPv6 network CIDR",
		"TWILL_IPV6_NETWORK=fd00:10:244::/56\n" + tail:                                       "TWILL_IPV6_SUBNET is missing",
		"TWILL_IPV6_SUBNET=fd00:10:244::1/64\n" + tail:                                       "TWILL_NETWORK is missing",
		"TWILL_NETWORK=fd00::/16\nTWILL_SUBNET=fd00::1/24\n" + tail:                          "TWILL_NETWORK=fd00::/16: not an IPv4 network CIDR",
		tail: "TWILL_NETWORK is missing",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want it to say %q", in, err, want)
		}
	}
}
