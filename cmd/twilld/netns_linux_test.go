package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestKernelBackendsInNamespaces runs twilld processes with a kernel
// backend inside two node namespaces (etcd runs in the switch namespace,
// at 192.168.56.1), checks that their pods reach each other, then stops
// node 1's twilld and checks that `twilld --cleanup` removes its device,
// routes and nftables table.
func TestKernelBackendsInNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld and twillctl and starts processes; skipped with -short")
	}
	backendtest.NeedRoot(t)
	dir := t.TempDir()
	bin := binaries.ForTest(t)
	twilld, twillctl := filepath.Join(bin, "twilld"), filepath.Join(bin, "twillctl")

	for _, tc := range []struct {
		backend string
		device  string
	}{
		{"vxlan", "twill.1"},
		{"host-gw", ""},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			el := newEtcdLab(t, twillctl, dir, tc.backend)
			lab, url := el.Lab, el.URL
			netConfig := netConfigFile(t, dir, tc.backend)
			var procs []proc
			for _, n := range lab.Nodes {
				// The subnet file makes each node ask for the subnet its cni0 holds.
				sf := filepath.Join(dir, tc.backend+"-"+n.Name+".env")
				err := subnetfile.Write(sf, subnetfile.File{Network: netip.MustParsePrefix("10.244.0.0/16"),
					Subnet: netip.PrefixFrom(n.Subnet.Addr().Next(), 24), MTU: 1450})
				if err != nil {
					t.Fatal(err)
				}
				procs = append(procs, start(t, n.Name, n.Name, twilld, "msg=ready",
					"--etcd-endpoints", url, "--etcd-prefix", "/twill-test", "--net-config", netConfig,
					"--iface", "eth0", "--subnet-file", sf, "--node-name", n.Name, "--ip-masq"))
			}
			n1, n2 := lab.Nodes[0], lab.Nodes[1]
			backendtest.Eventually(t, 20*time.Second, func() string {
				if got := n1.Ping(t, n2.PodIP, 1); got != 1 {
					return fmt.Sprintf("no reply from %s yet; node1 routes:\n%s", n2.PodIP, n1.IP(t, "route"))
				}
				return ""
			})
			if got := n2.Ping(t, n1.PodIP, 3); got != 3 {
				t.Fatalf("pod2 -> pod1: %d of 3 replies", got)
			}

			// Stop node 1's twilld; its data path stays; --cleanup removes it.
			if err := syscall.Kill(procs[0].pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			procs[0].wait(t)
			if got := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) == "" {
				t.Fatalf("a stopped twilld must leave its routes in place")
			}
			backendtest.Run(t, "ip", "netns", "exec", n1.Name, twilld, "--cleanup", "--net-config", netConfig, "--iface", "eth0",
				"--subnet-file", filepath.Join(dir, "unused.env"))
			if got := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) != "" {
				t.Errorf("routes left after --cleanup: %q", got)
			}
			if tc.device != "" {
				if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, tc.device) {
					t.Errorf("device %s left after --cleanup:\n%s", tc.device, got)
				}
			}
			if got := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "tables"); strings.Contains(got, "twill") {
				t.Errorf("nftables table left after --cleanup: %q", got)
			}
			if got := n1.IP(t, "-o", "addr", "show", "dev", "eth0"); !strings.Contains(got, "192.168.56.11/24") {
				t.Errorf("--cleanup touched eth0: %q", got)
			}
		})
	}
}

// proc is a process the test started; done closes when it exited.
type proc struct {
	pid  int
	done chan struct{}
	// log is what the process printed so far.
	log *syncBuffer
}

// start runs bin in namespace ns and waits until its output shows ready.
// It is stopped (by its PID) when the test ends.
// etcdLab is a two-node backendtest lab with an etcd in its switch
// namespace (192.168.56.1:2379), for twilld processes in the nodes.
type etcdLab struct {
	*backendtest.Lab
	URL string
}

// newEtcdLab builds the lab and starts its etcd (data under dir, named
// after tag) with twillctl.
func newEtcdLab(t testing.TB, twillctl, dir, tag string) etcdLab {
	t.Helper()
	return newEtcdLabOf(t, 2, twillctl, dir, tag)
}

// newEtcdLabOf is newEtcdLab with n nodes.
func newEtcdLabOf(t testing.TB, n int, twillctl, dir, tag string) etcdLab {
	t.Helper()
	lab := backendtest.New(t, "twilld", n)
	backendtest.Run(t, "ip", "-n", lab.Switch, "addr", "add", "192.168.56.1/24", "dev", "br0")
	url := "http://192.168.56.1:2379"
	start(t, "etcd", lab.Switch, twillctl, "etcd ready", "etcd", "--data-dir", filepath.Join(dir, tag+"-etcd"),
		"--listen-client-urls", url, "--listen-peer-urls", "http://127.0.0.1:2380")
	return etcdLab{Lab: lab, URL: url}
}

// netConfigFile writes the network config of a 10.244.0.0/16 network on
// backend into dir and returns its path.
func netConfigFile(t testing.TB, dir, backend string) string {
	t.Helper()
	f := filepath.Join(dir, backend+".json")
	if err := os.WriteFile(f, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"`+backend+`"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func start(t testing.TB, name, ns, bin, ready string, args ...string) proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		pw.Close()
		close(done)
	}()
	log := &syncBuffer{}
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			log.Write([]byte(sc.Text() + "\n"))
			if !once && strings.Contains(sc.Text(), ready) {
				once = true
				close(found)
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, log.String())
		}
	})
	select {
	case <-found:
	case <-done:
		t.Fatalf("%s exited before it was ready:\n%s", name, log.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready after 20s:\n%s", name, log.String())
	}
	return proc{cmd.Process.Pid, done, log}
}

func (p proc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("process %d did not stop", p.pid)
	}
}

// TestSublinkBadConfigRefused runs twilld in a node namespace with
// sublink (macvlan) configs it must refuse before taking a lease: a master that does
// not exist and a pod range outside the master's subnet. It exits with an
// error naming the field, the value and what the node has.
func TestSublinkBadConfigRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld and starts it; skipped with -short")
	}
	backendtest.NeedRoot(t)
	dir := t.TempDir()
	twilld := filepath.Join(binaries.ForTest(t), "twilld")
	lab := backendtest.New(t, "twilld", 1)
	n := lab.Nodes[0]
	for i, tc := range []struct{ config, want string }{
		{`{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan","Master":"nope0"}}`,
			`master interface "nope0" (Backend.Master) does not exist on this node`},
		{`{"Network":"10.99.0.0/24","SubnetLen":28,"Backend":{"Type":"ipvlan","Mode":"l2"}}`,
			"Network 10.99.0.0/24 is not inside the subnet of master interface eth0 (subnet 192.168.56.0/24)"},
		{`{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan","Mode":"l3"}}`,
			`Backend.Mode`},
	} {
		conf := filepath.Join(dir, fmt.Sprintf("net%d.json", i))
		if err := os.WriteFile(conf, []byte(tc.config), 0o644); err != nil {
			t.Fatal(err)
		}
		sf := filepath.Join(dir, fmt.Sprintf("subnet%d.env", i))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name, twilld, "--net-config", conf, "--iface", "eth0",
			"--etcd-endpoints", "http://192.168.56.1:2379", "--subnet-file", sf).CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut {
			t.Fatalf("%s: twilld did not exit with an error (%v):\n%s", tc.config, err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: output does not say %q:\n%s", tc.config, tc.want, out)
		}
		if _, err := os.Stat(sf); err == nil {
			t.Errorf("%s: a subnet file was written for a refused config", tc.config)
		}
	}
}
