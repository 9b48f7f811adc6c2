package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/netconf"
)

func TestWireGuardImplementationFlag(t *testing.T) {
	a, err := parseArgs(nil, func(k string) string {
		return map[string]string{"TWILLD_WIREGUARD_IMPLEMENTATION": "userspace"}[k]
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Implementation":"kernel"}}`))
	if err != nil {
		t.Fatal(err)
	}
	node := a.wireguard.apply(backend.Node{Network: cfg})
	if node.Network.Backend.Implementation != "userspace" || cfg.Backend.Implementation != "kernel" {
		t.Errorf("override: node's %q, the shared config's %q; want userspace, kernel (untouched)", node.Network.Backend.Implementation, cfg.Backend.Implementation)
	}
	vx, _ := netconf.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if got := a.wireguard.apply(backend.Node{Network: vx}).Network; got != vx {
		t.Error("the override copied a vxlan node's config")
	}
	_, err = parseArgs([]string{"--wireguard-implementation", "kernal"}, func(string) string { return "" }, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), `--wireguard-implementation="kernal": want kernel or userspace`) {
		t.Errorf("a wrong implementation: %v", err)
	}
}
