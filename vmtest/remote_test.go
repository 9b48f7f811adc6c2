package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestPluginConf(t *testing.T) {
	// The conflist the Ansible role installs (templates/10-twill.conflist.j2
	// with the defaults).
	list := `{"cniVersion": "1.1.0", "name": "twill", "plugins": [{"type": "twill", "subnetFile": "/run/twill/subnet.env",
		"bridge": "cni0", "dataDir": "/var/lib/cni/twill", "isGateway": true, "hairpinMode": true}]}`
	conf, plugin, err := pluginConf([]byte(list))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(conf, &got); err != nil {
		t.Fatal(err)
	}
	if plugin != "twill" || got["name"] != "twill" || got["cniVersion"] != "1.1.0" || got["subnetFile"] != "/run/twill/subnet.env" || got["type"] != "twill" {
		t.Errorf("pluginConf = %s, %q", conf, plugin)
	}
	for _, tt := range []struct{ in, want string }{
		{`{"plugins": []}`, "0 plugins"},
		{`{"plugins": [{"type": "../bin/sh"}]}`, "plugin type"},
		{`{"plugins": [{"type": "twill"}, {"type": "portmap"}]}`, "2 plugins"},
		{`not json`, "read the conflist"},
	} {
		if _, _, err := pluginConf([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("pluginConf(%s) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestRemoteBinary(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/x/bin/twillctl": "/usr/local/bin/twillctl",
		"twilld":              "/usr/local/bin/twilld",
		"bin/twill-cni":       "/opt/cni/bin/twill",
		"ping":                "ping",
	} {
		if got := remoteBinary(in); got != want {
			t.Errorf("remoteBinary(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewRemoteRefuses(t *testing.T) {
	dir := t.TempDir()
	good := RemoteNode{Name: "n1", Host: "node1", UnderlayIP: netip.MustParseAddr("192.168.56.11")}
	for _, tt := range []struct {
		spec RemoteSpec
		want string
	}{
		{RemoteSpec{SSH: []string{"ssh"}, Dir: dir}, "no nodes"},
		{RemoteSpec{Nodes: []RemoteNode{good}, Dir: dir}, "no ssh command"},
		{RemoteSpec{Nodes: []RemoteNode{good, good}, SSH: []string{"ssh"}, Dir: dir}, "node n1 twice"},
		{RemoteSpec{Nodes: []RemoteNode{{Name: "n1", Host: "node1"}}, SSH: []string{"ssh"}, Dir: dir}, "want a name, a host and an underlay address"},
		{RemoteSpec{Nodes: []RemoteNode{good}, SSH: []string{"ssh"}}, "no directory"},
	} {
		if _, err := NewRemote(tt.spec, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewRemote(%+v) = %v, want an error containing %q", tt.spec, err, tt.want)
		}
	}
}

// A Remote cluster reached over its nodes' underlay cannot cut that
// underlay: it says so, as unsupported, without contacting the node.
func TestRemoteUnsupportedUnderlay(t *testing.T) {
	dir := t.TempDir()
	r, err := NewRemote(RemoteSpec{Name: "t", SSHOnUnderlay: true, SSH: []string{filepath.Join(dir, "no-ssh")}, Dir: dir,
		Nodes: []RemoteNode{{Name: "n1", Host: "node1", UnderlayIP: netip.MustParseAddr("192.168.56.11")}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetUnderlay(context.Background(), "n1", false); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("SetUnderlay = %v, want ErrUnsupported", err)
	}
	if _, _, ok := r.Outside(); ok {
		t.Error("a cluster without Outside has an outside host")
	}
}
