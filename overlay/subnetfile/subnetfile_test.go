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
