package bgprouter

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func lab() Config {
	return Config{ID: netip.MustParseAddr("192.168.56.1"), ASN: 64512, Neighbors: []Neighbor{
		{Name: "n1", Addr: netip.MustParseAddr("192.168.56.18"), ASN: 64512, NextHop: netip.MustParseAddr("192.168.56.17")},
		{Name: "n2", Addr: netip.MustParseAddr("192.168.56.34"), ASN: 65002, NextHop: netip.MustParseAddr("192.168.56.33")},
	}}
}

// TestBIRDParses: BIRD 2 itself accepts the config (bird -p parses it
// and exits).
func TestBIRDParses(t *testing.T) {
	if _, err := exec.LookPath("bird"); err != nil {
		t.Skip("needs BIRD 2 (Debian package bird2)")
	}
	conf := filepath.Join(t.TempDir(), "bird.conf")
	c := lab()
	c.DirectInterfaces = "r*"
	c.Extra = "protocol static s1 { ipv4; route 10.200.0.0/24 blackhole; }\n"
	if err := os.WriteFile(conf, []byte(c.BIRD()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bird", "-p", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("bird -p: %v: %s\n%s", err, out, c.BIRD())
	}
}

// TestFRRParses: FRR's vtysh accepts the config (--dryrun reads it and
// reports errors without a daemon).
func TestFRRParses(t *testing.T) {
	if _, err := exec.LookPath("vtysh"); err != nil {
		t.Skip("needs FRR (Debian package frr)")
	}
	conf := filepath.Join(t.TempDir(), "frr.conf")
	if err := os.WriteFile(conf, []byte(lab().FRR()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("vtysh", "--dryrun", "-f", conf).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("vtysh --dryrun: %v: %s\n%s", err, out, lab().FRR())
	}
}

func TestEstablished(t *testing.T) {
	bird := `BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     12:00:00.000
n1         BGP        ---        up     12:00:01.000  Established
n2         BGP        ---        start  12:00:01.000  Active        Socket: Connection refused
`
	if got := BIRDEstablished(bird); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("BIRDEstablished = %v, want [n1]", got)
	}
	frr := `IPv4 Unicast Summary (VRF default):
BGP router identifier 192.168.56.1, local AS number 64512 vrf-id 0

Neighbor        V         AS   MsgRcvd   MsgSent   TblVer  InQ OutQ  Up/Down State/PfxRcd   PfxSnt Desc
192.168.56.18   4      64512        10        12        0    0    0 00:00:09            1        2 N/A
192.168.56.34   4      65002         0         0        0    0    0    never       Active        0 N/A
`
	if got := FRREstablished(frr); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.168.56.18")}) {
		t.Errorf("FRREstablished = %v, want [192.168.56.18]", got)
	}
}
