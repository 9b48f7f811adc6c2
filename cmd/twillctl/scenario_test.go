package main

import (
	"context"
	"io"
	"os"
	"os/exec"
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

// Reports go where git does not track them: the attached lab's directory,
// build/ in a checkout, else the temp dir.
func TestDefaultReportDir(t *testing.T) {
	repo := filepath.Join("..", "..")
	for _, tt := range []struct {
		dir    string
		attach bool
		lab    string
		want   string
	}{
		{repo, true, "twill", "/run/twill-lab/twill/reports"},
		{repo, false, "", filepath.Join(repo, "build", "scenario-reports")},
		{repo, false, "x", filepath.Join(repo, "build", "scenario-reports")},
		{t.TempDir(), false, "", filepath.Join(os.TempDir(), "twill-scenario-reports")},
	} {
		if got := defaultReportDir(tt.dir, tt.attach, tt.lab); got != tt.want {
			t.Errorf("defaultReportDir(%s, %v, %q) = %s, want %s", tt.dir, tt.attach, tt.lab, got, tt.want)
		}
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("needs git to check what it ignores")
	}
	for _, p := range []string{"build/scenario-reports/basic-vxlan.json", "scenario-reports/basic-vxlan.json"} {
		if out, err := exec.Command("git", "-C", repo, "check-ignore", "-q", p).CombinedOutput(); err != nil {
			t.Errorf("git does not ignore %s: %v %s", p, err, out)
		}
	}
}
