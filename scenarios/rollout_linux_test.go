package scenarios

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/vmtest"
)

// TestRollout is the rollout test (make rollout-test, part of make test):
// the Ansible roles against real VMs.
//
//  1. bad settings (an invalid CIDR, an unknown backend) stop site.yml
//     before any host is contacted, with a message naming the variable;
//  2. the qemu driver boots 3 VMs (TCG, never KVM) from the Debian system
//     image of scripts/rollout-image.sh (built once, cached under
//     build/.rollout), on the bridge of the lab's own hub namespace;
//  3. ansible-playbook site.yml (inventories/qemu-lab), run from the hub,
//     sets up a 3-member etcd with TLS and twill on all three over SSH;
//  4. the basic scenario (basic-vxlan.yaml) plays on the VMs, with pods
//     made by the CNI plugin the role installed: routes match the leases,
//     every pod reaches every pod, 64 MiB arrive with the same SHA-256,
//     the vxlan MTU holds, and traffic to the hub is masqueraded;
//  5. a second run of site.yml must report changed=0 on every host;
//  6. a rebuilt twilld (another main.version) rolls out one node at a
//     time: every node runs it afterwards, is ready, keeps its lease, and
//     pods still reach each other.
//
// It logs the time of each step. Opt in with TWILL_ROLLOUT=1; opted in, a
// machine without the tools fails the test (make rollout-test installs
// them), it is never skipped.
func TestRollout(t *testing.T) {
	if os.Getenv("TWILL_ROLLOUT") != "1" {
		t.Skip("the rollout test boots 3 VMs and runs Ansible (minutes): run it with make rollout-test, or TWILL_ROLLOUT=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the rollout test needs root: it makes a namespace with a bridge and tap devices")
	}
	for _, tool := range []string{"ansible-playbook", "qemu-system-x86_64", "qemu-img", "ssh", "debootstrap", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make rollout-test installs it): %v", tool, err)
		}
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	began := time.Now()
	last := began
	step := func(what string) {
		now := time.Now()
		t.Logf("== [%4.0f s, previous step %4.0f s] %s", now.Sub(began).Seconds(), now.Sub(last).Seconds(), what)
		last = now
	}

	step("system image (cached in build/.rollout)")
	img := runCmd(t, ctx, repo, nil, filepath.Join(repo, "scripts/rollout-image.sh"), filepath.Join(repo, "build/.rollout"))
	img = strings.TrimSpace(lastLine(img))

	step("binaries v1, and v2 with another twilld (the rollout's new binary)")
	work := t.TempDir()
	v1, v2 := filepath.Join(work, "bin-v1"), filepath.Join(work, "bin-v2")
	buildTwill(t, ctx, repo, v1, "rollout-v1", "./cmd/twilld", "./cmd/twillctl", "./cmd/twill-cni")
	buildTwill(t, ctx, repo, v2, "rollout-v2", "./cmd/twilld")
	for _, b := range []string{"twillctl", "twill-cni"} {
		if err := os.Link(filepath.Join(v1, b), filepath.Join(v2, b)); err != nil {
			t.Fatal(err)
		}
	}

	pki := filepath.Join(work, "pki")
	// Ansible keeps a shared SSH connection to each VM (ControlPersist in
	// ansible.cfg); their sockets go into the lab's directory, where Down
	// finds and ends them (before the lab exists, nothing is contacted).
	controlDir := filepath.Join(work, "cp")
	playbook := func(ns, log, bin string, extra ...string) error {
		argv := []string{"ansible-playbook", "-i", filepath.Join(repo, "ansible/inventories/qemu-lab"),
			filepath.Join(repo, "ansible/site.yml"), "--private-key", filepath.Join(img, "id_ed25519"),
			"-e", "etcd_pki_dir=" + pki, "-e", "twill_etcd_pki_dir=" + pki, "-e", "twill_binary_dir=" + bin}
		argv = append(argv, extra...)
		if ns != "" {
			argv = append([]string{"ip", "netns", "exec", ns}, argv...)
		}
		// The log is written as the playbook goes, for a look while it runs.
		f, err := os.Create(filepath.Join(work, log))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "ANSIBLE_CONFIG="+filepath.Join(repo, "ansible/ansible.cfg"), "ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0",
			"ANSIBLE_SSH_CONTROL_PATH_DIR="+controlDir)
		w := &stampWriter{w: f, start: time.Now()}
		cmd.Stdout, cmd.Stderr = w, w
		return cmd.Run()
	}
	readLog := func(log string) string {
		b, err := os.ReadFile(filepath.Join(work, log))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	recap := func(log string) string {
		out := readLog(log)
		if i := strings.Index(out, "PLAY RECAP"); i >= 0 {
			return out[i:]
		}
		return "(no recap)"
	}

	step("bad settings stop the playbook before any host is contacted")
	for _, bad := range []string{"twill_network=10.244.0.1/16", "twill_network=127.0.0.0/8", "twill_backend=geneve"} {
		variable, _, _ := strings.Cut(bad, "=")
		// No VM runs yet: a playbook that went on to a host would find it
		// unreachable.
		err := playbook("", "bad.log", v1, "-e", bad)
		out := readLog("bad.log")
		if err == nil {
			t.Fatalf("site.yml accepted %s:\n%s", bad, out)
		}
		msg := regexp.MustCompile(`"msg": "([^"]*` + variable + `[^"]*)"`).FindStringSubmatch(out)
		if msg == nil {
			t.Fatalf("the message for %s does not name %s:\n%s", bad, variable, out)
		}
		if strings.Contains(out, "UNREACHABLE") || strings.Contains(out, "PLAY [Set up etcd]") {
			t.Fatalf("with %s the playbook went on to the hosts:\n%s", bad, out)
		}
		t.Logf("refused %s: %.160s", bad, msg[1])
	}

	step("boot 3 VMs with the qemu driver (system image, TCG)")
	lab := fmt.Sprintf("ro%d", os.Getpid()%10000)
	c, err := vmtest.Up(ctx, vmtest.Spec{Name: lab, Driver: "qemu", Nodes: 3, Backend: "vxlan", Bin: v1,
		SystemImage: img, ConsoleDir: filepath.Join(work, "consoles")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	keep := func() {
		if t.Failed() {
			t.Logf("consoles and playbook logs are kept in %s", work)
			if dst := os.Getenv("TWILL_ROLLOUT_KEEP"); dst != "" {
				_ = exec.Command("cp", "-a", work, dst).Run()
			}
		}
	}
	t.Cleanup(func() {
		keep()
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := vmtest.Down(dctx, lab); err != nil {
			t.Errorf("tear down lab %s: %v", lab, err)
		}
	})
	hub := c.HubNetNS()
	controlDir = filepath.Join(c.Dir(), "ansible-cp") // Down ends these (vmtest's closeSSHMasters)

	step("site.yml: etcd with TLS and twill on 3 VMs")
	if err := playbook(hub, "first.log", v1); err != nil {
		t.Fatalf("site.yml: %v\n%s", err, readLog("first.log"))
	}
	t.Log(recap("first.log"))

	remote, err := c.Remote(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remote.Close() })
	before, err := remote.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 3 {
		t.Fatalf("want 3 leases, have %s", describeLeases(before))
	}
	t.Logf("leases: %s", describeLeases(before))

	step("the basic scenario on the VMs (pods by the role's CNI plugin)")
	basic, err := Load("basic-vxlan.yaml")
	if err != nil {
		t.Fatal(err)
	}
	playOn(t, ctx, remote, v1, basic)

	step("site.yml again: nothing may change")
	if err := playbook(hub, "second.log", v1); err != nil {
		t.Fatalf("second site.yml: %v\n%s", err, readLog("second.log"))
	}
	second := recap("second.log")
	t.Log(second)
	if regexp.MustCompile(`(?m)^[ \d.]*node\d.*changed=[1-9]`).MatchString(second) {
		t.Fatalf("the second run changed something:\n%s", strings.Join(changedTasks(readLog("second.log")), "\n"))
	}

	step("roll out twilld rollout-v2, one node at a time")
	if err := playbook(hub, "upgrade.log", v2); err != nil {
		t.Fatalf("the upgrade: %v\n%s", err, readLog("upgrade.log"))
	}
	t.Log(recap("upgrade.log"))
	// One node at a time: each node's restart is followed by its readiness
	// check before the next node's restart.
	order := regexp.MustCompile(`TASK \[twill : (Start twilld, or restart it|Wait until the node is ready)[^\n]*\n[^\n]*?((changed|ok): \[node\d\])`).
		FindAllStringSubmatch(readLog("upgrade.log"), -1)
	var seen []string
	for _, m := range order {
		seen = append(seen, m[2])
	}
	want := []string{"changed: [node1]", "ok: [node1]", "changed: [node2]", "ok: [node2]", "changed: [node3]", "ok: [node3]"}
	if !slices.Equal(seen, want) {
		t.Fatalf("the upgrade did not restart and check the nodes one at a time: %q, want %q", seen, want)
	}
	t.Logf("restart / ready order: %s", strings.Join(seen, " "))
	for _, n := range remote.Nodes() {
		out, err := remote.Exec(ctx, n.Name, "twilld", "--version")
		if err != nil || strings.TrimSpace(string(out)) != "twilld rollout-v2" {
			t.Fatalf("%s runs %q after the upgrade (%v)", n.Name, out, err)
		}
		if !n.Running {
			t.Fatalf("twilld is not active on %s", n.Name)
		}
	}
	after, err := remote.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leases: %s", describeLeases(after))
	if describeLeases(sortLeases(before)) != describeLeases(sortLeases(after)) {
		t.Fatalf("leases changed in the upgrade: before %s, after %s", describeLeases(before), describeLeases(after))
	}
	again, err := Parse([]byte("name: after-upgrade\ncluster: {nodes: 3, backend: vxlan, podsPerNode: 2}\nsteps:\n  - routes\n  - ping-all\n"))
	if err != nil {
		t.Fatal(err)
	}
	playOn(t, ctx, remote, v2, again)
	step("done: the rollout test passed")
}

// playOn plays a scenario on a Remote cluster and fails the test if it
// does not pass.
func playOn(t *testing.T, ctx context.Context, c *vmtest.Remote, bin string, s *Scenario) {
	t.Helper()
	var out strings.Builder
	r := &Runner{Driver: "qemu-system", Cluster: c, Bin: bin, Out: &out}
	rep, err := r.Run(ctx, s)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Steps) != len(s.Steps) {
		t.Fatalf("report: passed %v, %d of %d steps", rep.Passed, len(rep.Steps), len(s.Steps))
	}
}

// buildTwill builds twill's commands into dir with main.version set, and
// without symbols (fewer bytes to copy into the VMs).
func buildTwill(t *testing.T, ctx context.Context, repo, dir, version string, pkgs ...string) {
	t.Helper()
	argv := append([]string{"go", "build", "-ldflags", "-s -w -X main.version=" + version, "-o", dir + "/"}, pkgs...)
	runCmd(t, ctx, repo, []string{"CGO_ENABLED=0"}, argv...)
}

// runCmd runs a command in dir and returns its stdout; it fails the test with
// its output.
func runCmd(t *testing.T, ctx context.Context, dir string, env []string, argv ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(argv, " "), err, out, stderr.String())
	}
	return string(out)
}

// changedTasks lists the "changed" lines of a playbook's log, each with
// its task.
func changedTasks(log string) []string {
	var task string
	var out []string
	for _, line := range strings.Split(log, "\n") {
		line = strings.TrimLeft(line, " .0123456789") // the time stamp
		switch {
		case strings.HasPrefix(line, "TASK ["):
			task = strings.TrimRight(line, " *")
		case strings.HasPrefix(line, "changed: "):
			out = append(out, task+" "+line)
		}
	}
	return out
}

// stampWriter writes lines with the seconds since start in front, so that
// a playbook's log shows where its time went.
type stampWriter struct {
	w     io.Writer
	start time.Time
	mid   bool // within a line
}

func (s *stampWriter) Write(p []byte) (int, error) {
	var b []byte
	for _, c := range p {
		if !s.mid {
			b = fmt.Appendf(b, "%6.1f ", time.Since(s.start).Seconds())
		}
		b = append(b, c)
		s.mid = c != '\n'
	}
	if _, err := s.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

func sortLeases(ls []lease.Lease) []lease.Lease {
	ls = slices.Clone(ls)
	slices.SortFunc(ls, func(a, b lease.Lease) int { return strings.Compare(a.Subnet.String(), b.Subnet.String()) })
	return ls
}
