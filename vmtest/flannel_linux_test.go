package vmtest

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"

	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestFlannelConflist: a flannel node's pods get what flannel's CNI plugin
// hands the bridge plugin, from flannel's subnet file as flanneld writes it.
func TestFlannelConflist(t *testing.T) {
	f, err := subnetfile.Parse([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.48.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:38::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := flannelConflist(f, "/data")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"cniVersion": "1.0.0", "name": "cbr0", "plugins": []any{map[string]any{
		"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
		"ipMasq": false, "mtu": 1450.0,
		"ipam": map[string]any{"type": "host-local", "dataDir": "/data",
			"ranges": []any{[]any{map[string]any{"subnet": "10.244.48.0/24"}}, []any{map[string]any{"subnet": "fd00:10:244:38::/64"}}},
			"routes": []any{map[string]any{"dst": "10.244.0.0/16"}, map[string]any{"dst": "fd00:10:244::/56"}}},
	}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("conflist:\n%s\nwant\n%v", b, want)
	}
	// Run by hand (in a VM), the bridge plugin gets the one plugin with
	// the list's name and version.
	one, err := flannelNetConf(f, "/data")
	if err != nil {
		t.Fatal(err)
	}
	var gotOne map[string]any
	if err := json.Unmarshal(one, &gotOne); err != nil {
		t.Fatal(err)
	}
	wantOne := want["plugins"].([]any)[0].(map[string]any)
	wantOne["cniVersion"], wantOne["name"] = "1.0.0", "cbr0"
	if !reflect.DeepEqual(gotOne, wantOne) {
		t.Errorf("net conf:\n%s\nwant\n%v", one, wantOne)
	}
	if _, err := flannelConflist(subnetfile.File{MTU: 1450}, "/data"); err == nil {
		t.Error("a subnet file without a subnet gave a conflist")
	}
}

// TestFlannelArgs: flanneld gets the lab's etcd and prefix, the node's
// addresses and subnet file, and --ip-masq.
func TestFlannelArgs(t *testing.T) {
	st := &state{Spec: Spec{EtcdPrefix: "/coreos.com/network"}, EtcdURL: "http://192.168.56.1:2379"}
	n := nodeState{IP: netip.MustParseAddr("192.168.56.13"), IP6: netip.MustParseAddr("fd00:56::13"), SubnetFile: "/run/x/subnet.env"}
	want := []string{"--ip-masq", "--etcd-endpoints", "http://192.168.56.1:2379", "--etcd-prefix", "/coreos.com/network",
		"--iface", "eth0", "--public-ip", "192.168.56.13", "--subnet-file", "/run/x/subnet.env", "--public-ipv6", "fd00:56::13"}
	if got := flannelArgs(st, n); !reflect.DeepEqual(got, want) {
		t.Errorf("flannelArgs = %q, want %q", got, want)
	}
}
