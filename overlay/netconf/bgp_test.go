package netconf

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestBGPDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"bgp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &BGP{ASN: 64512, NodeMesh: true, IPIP: "Never", HoldTime: 90, ConnectRetry: 5, RestartTime: 120}
	if c.Backend.Port != 179 || !reflect.DeepEqual(c.Backend.BGP, want) {
		t.Errorf("Backend = %+v, BGP %+v; want port 179, %+v", c.Backend, c.Backend.BGP, want)
	}
}

func TestBGPOptionsRoundTrip(t *testing.T) {
	in := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","ASN":4200000000,"NodeMesh":false,"IPIP":"CrossSubnet","Port":1179,"HoldTime":9,"ConnectRetry":1,"RestartTime":60,
		"Peers":[{"Address":"192.168.56.1","ASN":65000,"Password":"s3cret"},{"Address":"fd00::1","ASN":65001}]}}`
	c, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := &BGP{ASN: 4200000000, IPIP: "CrossSubnet", HoldTime: 9, ConnectRetry: 1, RestartTime: 60, Peers: []BGPPeer{
		{Address: netip.MustParseAddr("192.168.56.1"), ASN: 65000, Password: "s3cret"},
		{Address: netip.MustParseAddr("fd00::1"), ASN: 65001},
	}}
	if c.Backend.Port != 1179 || !reflect.DeepEqual(c.Backend.BGP, want) {
		t.Fatalf("BGP = %+v, want %+v", c.Backend.BGP, want)
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out)
	if err != nil {
		t.Fatalf("parse %s: %v", out, err)
	}
	if !reflect.DeepEqual(c2.Backend, c.Backend) {
		t.Errorf("round trip: %+v, want %+v", c2.Backend.BGP, c.Backend.BGP)
	}
}

// Every wrong bgp option is refused with its field and value named, all
// in one error.
func TestBGPBadInput(t *testing.T) {
	tests := []struct {
		backend string
		want    []string // field: value fragments, one per error
	}{
		{`{"Type":"bgp","ASN":0}`, []string{"Backend.ASN", "0"}},
		{`{"Type":"bgp","ASN":4294967296}`, []string{"Backend.ASN", "4294967296"}},
		{`{"Type":"bgp","ASN":"64512"}`, []string{"Backend.ASN", `"64512"`}},
		{`{"Type":"bgp","IPIP":"Sometimes"}`, []string{"Backend.IPIP", `"Sometimes"`}},
		{`{"Type":"bgp","Peers":[{"Address":"router1","ASN":65000}]}`, []string{"Backend.Peers[0].Address", `"router1"`}},
		{`{"Type":"bgp","Peers":[{"Address":"192.168.56.1","ASN":65000},{"Address":"192.168.56.1","ASN":65001}]}`, []string{"Backend.Peers[1].Address", `"192.168.56.1"`, "duplicate"}},
		{`{"Type":"bgp","Peers":[{"Address":"192.168.56.1","ASN":0}]}`, []string{"Backend.Peers[0].ASN", "0"}},
		{`{"Type":"bgp","Peers":[{"Address":"192.168.56.1"}]}`, []string{"Backend.Peers[0].ASN", "missing"}},
		{`{"Type":"bgp","Peers":[{"Address":"192.168.56.1","ASN":1,"Asn":2}]}`, []string{"Backend.Peers[0].Asn"}},
		{`{"Type":"bgp","HoldTime":1}`, []string{"Backend.HoldTime", "1"}},
		{`{"Type":"bgp","Port":0}`, []string{"Backend.Port", "0"}},
		{`{"Type":"bgp","VNI":1}`, []string{"Backend.VNI", "unknown key"}},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			_, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":` + tt.backend + `}`))
			if err == nil {
				t.Fatal("accepted")
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is no FieldError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	// Several at once: each is reported.
	_, err := Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","ASN":0,"IPIP":"x","Peers":[{"Address":"nope","ASN":1}]}}`))
	for _, w := range []string{"Backend.ASN", "Backend.IPIP", "Backend.Peers[0].Address"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v does not name %s", err, w)
		}
	}
}
