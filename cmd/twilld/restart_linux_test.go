package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestUDPRestartInNamespaces runs twilld with the udp backend in two node
// namespaces, pings from pod 1 to pod 2 every 10 ms while node 1's twilld
// is stopped (SIGTERM, then SIGKILL), left down for 2 s and started again,
// and wants every ping answered where the kernel path runs on both ends.
// Then node 1's config changes to vxlan: the vxlan twilld removes what udp
// left (the persistent twill0, the pinned programs, the tc filters), and
// `twilld --cleanup` on node 2 removes its udp data path.
func TestUDPRestartInNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld and twillctl and starts processes; skipped with -short")
	}
	backendtest.NeedRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun: ", err)
	}
	kernelPath := kernelpath.Supported() == nil
	// `ip netns exec` gives twilld a fresh /sys: it pins in this process's
	// bpffs, which outlives it, as the host's /sys/fs/bpf does.
	t.Setenv("TWILL_BPFFS", fmt.Sprintf("/proc/%d/root%s", os.Getpid(), kernelpath.BPFFS))
	dir := t.TempDir()
	bin := binaries.ForTest(t)
	twilld, twillctl := filepath.Join(bin, "twilld"), filepath.Join(bin, "twillctl")
	el := newEtcdLab(t, twillctl, dir, "udp")
	lab, url := el.Lab, el.URL
	config := func(backend string) string { return netConfigFile(t, dir, backend) }
	udpConfig := config("udp")
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	twilldOn := func(n *backendtest.Node, netConfig string) proc {
		t.Helper()
		sf := filepath.Join(dir, n.Name+".env")
		if _, err := os.Stat(sf); err != nil {
			err := subnetfile.Write(sf, subnetfile.File{Network: netip.MustParsePrefix("10.244.0.0/16"),
				Subnet: netip.PrefixFrom(n.Subnet.Addr().Next(), 24), MTU: 1472})
			if err != nil {
				t.Fatal(err)
			}
		}
		return start(t, n.Name, n.Name, twilld, "msg=ready",
			"--etcd-endpoints", url, "--etcd-prefix", "/twill-test", "--net-config", netConfig,
			"--iface", "eth0", "--subnet-file", sf, "--node-name", n.Name, "--ip-masq")
	}
	for _, n := range lab.Nodes { // should the test end before --cleanup
		dir := pinDir(t, n)
		t.Cleanup(func() {
			if err := kernelpath.RemovePins(dir); err != nil {
				t.Errorf("remove the pins of %s: %v", n.Name, err)
			}
		})
	}
	p1 := twilldOn(n1, udpConfig)
	p2 := twilldOn(n2, udpConfig)
	backendtest.Eventually(t, 20*time.Second, func() string {
		if got := n1.Ping(t, n2.PodIP, 1); got != 1 {
			return fmt.Sprintf("no reply from %s yet; node1 routes:\n%s", n2.PodIP, n1.IP(t, "route"))
		}
		return ""
	})

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		pings := backendtest.StartPings(t, n1, n2.PodIP, 500)
		time.Sleep(500 * time.Millisecond)
		if err := syscall.Kill(p1.pid, sig); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		p1.wait(t)
		if got := n1.IP(t, "route", "show", "proto", "126"); !strings.Contains(got, "dev twill0") {
			t.Errorf("after %v: the cluster route to twill0 went with twilld: %q", sig, got)
		}
		time.Sleep(2*time.Second - time.Since(stopped))
		restarted := time.Now()
		p1 = twilldOn(n1, udpConfig)
		ready := time.Since(restarted)
		r := pings.Wait()
		t.Logf("%v: %d of %d pings lost (%d in a row), longest gap between replies %v; twilld ready %v after its start",
			sig, r.Lost(), r.Sent, r.LongestLoss, r.Gap.Round(time.Millisecond), ready.Round(time.Millisecond))
		if kernelPath && r.Lost() != 0 {
			t.Errorf("%v: %d pings lost on the kernel path, want 0", sig, r.Lost())
		}
		if r.Gap > 3*time.Second {
			t.Errorf("%v: no reply for %v, more than the time no twilld ran", sig, r.Gap)
		}
	}

	// udp -> vxlan on node 1: nothing of udp's may stay.
	pins := pinDir(t, n1)
	if _, err := os.Stat(pins); kernelPath && err != nil {
		t.Errorf("the udp kernel path pinned nothing in %s: %v", pins, err)
	}
	if err := syscall.Kill(p1.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p1.wait(t)
	vxlanConfig := config("vxlan")
	p1 = twilldOn(n1, vxlanConfig)
	noUDP := func(n *backendtest.Node, pins, when string) {
		t.Helper()
		if got := n.IP(t, "-o", "link", "show"); strings.Contains(got, "twill0") {
			t.Errorf("%s: twill0 is still there:\n%s", when, got)
		}
		if _, err := os.Stat(pins); err == nil {
			t.Errorf("%s: %s is still there", when, pins)
		}
		for _, hook := range []string{"ingress", "egress"} {
			if f := backendtest.Run(t, "tc", "-n", n.Name, "filter", "show", "dev", "eth0", hook); strings.Contains(f, "twill") {
				t.Errorf("%s: a twill filter is left on eth0 %s: %s", when, hook, f)
			}
		}
	}
	noUDP(n1, pins, "vxlan after udp")
	if got := n1.IP(t, "-o", "link", "show"); !strings.Contains(got, "twill.1") {
		t.Errorf("the vxlan twilld made no twill.1:\n%s", got)
	}
	if err := syscall.Kill(p1.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p1.wait(t)
	backendtest.Run(t, "ip", "netns", "exec", n1.Name, twilld, "--cleanup", "--net-config", vxlanConfig, "--iface", "eth0",
		"--subnet-file", filepath.Join(dir, "unused.env"))

	// --cleanup on node 2 (udp) after its twilld stopped.
	pins2 := pinDir(t, n2)
	if err := syscall.Kill(p2.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p2.wait(t)
	if got := n2.IP(t, "-o", "link", "show"); !strings.Contains(got, "twill0") {
		t.Errorf("a stopped udp twilld must leave twill0:\n%s", got)
	}
	backendtest.Run(t, "ip", "netns", "exec", n2.Name, twilld, "--cleanup", "--net-config", udpConfig, "--iface", "eth0",
		"--subnet-file", filepath.Join(dir, "unused.env"))
	noUDP(n2, pins2, "udp --cleanup")
	if got := n2.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) != "" {
		t.Errorf("routes left after --cleanup: %q", got)
	}
}

// pinDir is where the udp kernel path of node n pins its programs and maps.
func pinDir(t *testing.T, n *backendtest.Node) string {
	t.Helper()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dir, err := kernelpath.PinDir(h)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
