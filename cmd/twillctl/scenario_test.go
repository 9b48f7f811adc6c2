package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// scenario run refuses what it cannot do before it brings anything up or
// contacts anything.
func TestScenarioRunArgs(t *testing.T) {
	empty := t.TempDir() // no Vagrantfile
	basic := filepath.Join("..", "..", "scenarios", "basic-vxlan.yaml")
	if _, err := os.Stat(basic); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "want one or more scenario files"},
		{[]string{"--attach", basic}, "--attach needs --lab NAME"},
		{[]string{"--driver", "lxc", basic}, "--driver lxc: want one of netns, qemu, vagrant"},
		{[]string{"--driver", "vagrant", "--lab", "x", basic}, "--driver vagrant plays on the running Vagrant cluster"},
		{[]string{"--driver", "vagrant", "--keep", basic}, "--attach, --keep and --lab do not apply"},
		{[]string{"--driver", "vagrant", "--vagrant-dir", empty, basic}, "vagrant driver: no Vagrantfile in " + empty},
		{[]string{"--driver", "vagrant", "--vagrant-dir", empty, "no-such.yaml"}, "no-such.yaml"},
	} {
		err := runScenario(context.Background(), tt.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("scenario run %q = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}
