package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestBGPFlags(t *testing.T) {
	env := map[string]string{"TWILLD_BGP_PEER": "192.168.56.1:65000,192.168.56.2:65001"}
	a, err := parseArgs([]string{"--bgp-asn", "65010"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if a.bgp.ASN != 65010 || len(a.bgp.Peers) != 2 || a.bgp.Peers[1].Address != netip.MustParseAddr("192.168.56.2") || a.bgp.Peers[1].ASN != 65001 {
		t.Errorf("bgp = %+v", a.bgp)
	}
	for _, bad := range []struct {
		argv []string
		want string
	}{
		{[]string{"--bgp-asn", "0"}, `--bgp-asn="0"`},
		{[]string{"--bgp-asn", "4294967296"}, `--bgp-asn="4294967296"`},
		{[]string{"--bgp-peer", "router1:65000"}, `"router1" is not`},
		{[]string{"--bgp-peer", "192.168.56.1"}, `--bgp-peer="192.168.56.1": want ADDRESS:ASN`},
		{[]string{"--bgp-peer", "192.168.56.1:0"}, `"0" must be an AS number`},
		{[]string{"--bgp-peer", "192.168.56.1:1", "--bgp-peer", "192.168.56.1:2"}, "duplicate peer 192.168.56.1"},
		{[]string{"--bgp-route-reflector", "rr1"}, `--bgp-route-reflector="rr1"`},
	} {
		_, err := parseArgs(bad.argv, func(string) string { return "" }, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseArgs(%v) = %v, want an error with %s", bad.argv, err, bad.want)
		}
	}
}
