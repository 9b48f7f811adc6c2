package lease

import (
	"encoding/json"
	"net/netip"
	"regexp"
	"testing"
)

// flannelKey is the pattern flannel reads subnet keys with
// (pkg/subnet/subnet.go): every key twill writes must match it.
var flannelKey = regexp.MustCompile(`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`)

func TestSubnetKeys(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fc00::/64")
	for _, tt := range []struct {
		s   Subnets
		key string
	}{
		{Subnets{V4: v4}, "10.244.1.0-24"},
		{Subnets{V4: v4, V6: v6}, "10.244.1.0-24&fc00::-64"},
		{Subnets{V6: v6}, "0.0.0.0-0&fc00::-64"},
		{Subnets{V4: netip.MustParsePrefix("10.244.128.0/17"), V6: netip.MustParsePrefix("fd00:10:244:ab00::/56")}, "10.244.128.0-17&fd00:10:244:ab00::-56"},
	} {
		if got := tt.s.Key(); got != tt.key {
			t.Errorf("%v.Key() = %q, want %q", tt.s, got, tt.key)
		}
		back, err := ParseSubnetKey(tt.key)
		if err != nil || back != tt.s {
			t.Errorf("ParseSubnetKey(%q) = %v, %v; want %v", tt.key, back, err, tt.s)
		}
		m := flannelKey.FindStringSubmatch("/coreos.com/network/subnets/" + tt.key)
		if m == nil {
			t.Errorf("flannel's pattern does not match %q", tt.key)
			continue
		}
		if tt.s.V6.IsValid() && (m[3] != tt.s.V6.Addr().String() || m[4] != "64" && m[4] != "56") {
			t.Errorf("flannel reads %q as %q", tt.key, m)
		}
	}
	if SubnetKey(v4) != "10.244.1.0-24" {
		t.Errorf("SubnetKey = %q", SubnetKey(v4))
	}
	for _, bad := range []string{"10.244.1.1-24", "10.244.1.0-33", "10.244.1.0", "10.244.1.0-x", "10.244.1.0-024",
		"fc00::-64", "10.244.1.0-24&fc00::1-64", "10.244.1.0-24&10.0.0.0-8", "10.244.1.0-24&fc00::-129", "10.244.1.0-24&fc00::", "0.0.0.0-0&", "::ffff:10.0.0.0-104"} {
		if s, err := ParseSubnetKey(bad); err == nil {
			t.Errorf("ParseSubnetKey(%q) = %v, want an error", bad, s)
		}
	}
}

func TestAttrsJSON(t *testing.T) {
	v4 := netip.MustParseAddr("192.168.56.11")
	v6 := netip.MustParseAddr("fd00:56::11")
	data := json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:11"}`)
	data6 := json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:06:11"}`)
	for _, tt := range []struct {
		a    Attrs
		want string
	}{
		// IPv4 only: the bytes twill wrote before dual stack.
		{Attrs{PublicIP: v4, BackendType: "vxlan", BackendData: data}, `{"PublicIP":"192.168.56.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:11"}}`},
		{Attrs{PublicIP: v4, BackendType: "host-gw", Twill: &NodeInfo{Node: "n1"}}, `{"PublicIP":"192.168.56.11","BackendType":"host-gw","BackendData":null,"Twill":{"Node":"n1"}}`},
		{Attrs{PublicIP: v4, PublicIPv6: v6, BackendType: "vxlan", BackendData: data, BackendV6Data: data6},
			`{"PublicIP":"192.168.56.11","PublicIPv6":"fd00:56::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:11"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:06:11"}}`},
		{Attrs{PublicIPv6: v6, BackendType: "host-gw"}, `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:56::11","BackendType":"host-gw","BackendData":null}`},
	} {
		out, err := json.Marshal(tt.a)
		if err != nil || string(out) != tt.want {
			t.Errorf("Marshal = %s, %v\nwant      %s", out, err, tt.want)
		}
		var back Attrs
		if err := json.Unmarshal(out, &back); err != nil || !back.Equal(tt.a) {
			t.Errorf("Unmarshal(%s) = %+v, %v", out, back, err)
		}
	}
	// flannel writes "PublicIPv6":null for a node without one.
	var a Attrs
	if err := json.Unmarshal([]byte(`{"PublicIP":"192.168.77.10","PublicIPv6":null,"BackendV6Data":null}`), &a); err != nil || a.PublicIPv6.IsValid() || a.PublicIP != netip.MustParseAddr("192.168.77.10") {
		t.Errorf("flannel's null PublicIPv6 read as %+v, %v", a, err)
	}
	if !(Attrs{PublicIPv6: v6}).SameNode(Attrs{PublicIPv6: v6, BackendType: "x"}) || (Attrs{}).SameNode(Attrs{}) ||
		(Attrs{PublicIP: v4, PublicIPv6: v6}).SameNode(Attrs{PublicIPv6: v6}) {
		t.Error("SameNode")
	}
}
