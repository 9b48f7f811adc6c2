package cni_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/cni"
	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"
)

// pinger runs ping (10 ms apart) from a namespace until stop, which returns
// how many echo requests went out and how many came back.
func pinger(t *testing.T, nsPath, dst string) (stop func() (sent, received int)) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(nsPath), "ping", "-q", "-n", "-i", "0.01", "-W", "1", dst)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ping: %v", err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return func() (int, int) {
		time.Sleep(300 * time.Millisecond) // replies to the last requests
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		done = true
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("ping printed no summary:\n%s", out.String())
		}
		sent, _ := strconv.Atoi(m[1])
		received, _ := strconv.Atoi(m[2])
		return sent, received
	}
}

func bridgeMAC(t *testing.T, n *node) string {
	t.Helper()
	l, err := handle(t, n.ns).LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr.String()
}

// addPodsWhilePinging adds 20 pods while the first pod pings the gateway,
// and fails on any lost echo or any change of the bridge's MAC.
func addPodsWhilePinging(t *testing.T, n *node, gateway string) {
	t.Helper()
	first := nstest.New(t, "p0").Path
	n.add("pod-0", first)
	mac := bridgeMAC(t, n)
	// The pod reaches the gateway first: the kernel turns a new bridge port
	// on up to a second after its carrier (linkwatch), and an ARP request
	// lost before is only sent again a second later, longer than the pinger
	// runs (1 in 5 runs lost every echo so, on main too).
	if err := ping(first, mustAddr(gateway)); err != nil {
		t.Fatalf("pod-0 cannot reach the gateway %s: %v", gateway, err)
	}
	stop := pinger(t, first, gateway)
	time.Sleep(200 * time.Millisecond)
	for i := 1; i <= 20; i++ {
		n.add(fmt.Sprintf("pod-%d", i), nstest.New(t, fmt.Sprintf("p%d", i)).Path)
		if got := bridgeMAC(t, n); got != mac {
			t.Errorf("after pod %d the bridge's MAC is %s, was %s", i, got, mac)
		}
	}
	time.Sleep(200 * time.Millisecond)
	sent, received := stop()
	if sent < 20 || received != sent {
		t.Errorf("pod-0 -> gateway %s while 20 pods were added: %d sent, %d received", gateway, sent, received)
	}
	t.Logf("pod-0 -> %s: %d of %d echoes answered while 20 pods were added; bridge MAC %s", gateway, received, sent, mac)
}

// TestBridgeMACIsFixed: the bridge the plugin makes has the gateway's
// derived MAC, which no new pod's veth changes, so the pods already there
// lose nothing while others are added.
func TestBridgeMACIsFixed(t *testing.T) {
	n := newNode(t, "10.244.4.1/24")
	addPodsWhilePinging(t, n, "10.244.4.1")
	if got, want := bridgeMAC(t, n), cni.BridgeMAC(mustAddr("10.244.4.1")).String(); got != want {
		t.Errorf("bridge MAC %s, want the derived %s", got, want)
	}
}

// TestBridgeMACOfAnOldBridgeIsFixed: a cni0 made before (by an older twill
// or by hand), whose MAC follows its ports, keeps the MAC it has from the
// first ADD on, recorded in the data directory; CHECK repairs it too.
func TestBridgeMACOfAnOldBridgeIsFixed(t *testing.T) {
	n := newNode(t, "10.244.5.1/24")
	err := namespace.DoPath(n.ns, func() error {
		return exec.Command("ip", "link", "add", "cni0", "type", "bridge").Run()
	})
	if err != nil {
		t.Fatal(err)
	}
	before := bridgeMAC(t, n)
	addPodsWhilePinging(t, n, "10.244.5.1")
	if got := bridgeMAC(t, n); got != before {
		t.Errorf("bridge MAC %s, want the one it had, %s", got, before)
	}
	rec, err := os.ReadFile(filepath.Join(n.dataDir, "twill", "bridge-mac"))
	if err != nil || strings.TrimSpace(string(rec)) != "cni0 "+before {
		t.Errorf("recorded %q (%v), want %q", rec, err, "cni0 "+before)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestCheckFixesTheBridgeMAC: CHECK finds a cni0 whose MAC follows its ports
// (replaced by hand under a running pod) and fixes it as ADD would.
func TestCheckFixesTheBridgeMAC(t *testing.T) {
	n := newNode(t, "10.244.6.1/24")
	pod := nstest.New(t, "p0").Path
	r := n.add("pod-0", pod)
	veth := r.Interfaces[1].Name
	err := namespace.DoPath(n.ns, func() error {
		for _, args := range [][]string{{"link", "del", "cni0"}, {"link", "add", "cni0", "type", "bridge"},
			{"addr", "add", "10.244.6.1/24", "dev", "cni0"}, {"link", "set", veth, "master", "cni0"}, {"link", "set", "cni0", "up"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	before := bridgeMAC(t, n)
	if err := n.runtime.CheckNetworkList(context.Background(), n.list, n.rt("pod-0", pod)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	rec, err := os.ReadFile(filepath.Join(n.dataDir, "twill", "bridge-mac"))
	if err != nil || strings.TrimSpace(string(rec)) != "cni0 "+before {
		t.Errorf("after CHECK the record is %q (%v), want %q", rec, err, "cni0 "+before)
	}
	for i := 1; i <= 10; i++ {
		n.add(fmt.Sprintf("pod-%d", i), nstest.New(t, fmt.Sprintf("p%d", i)).Path)
	}
	if got := bridgeMAC(t, n); got != before {
		t.Errorf("bridge MAC %s after 10 more pods, want %s", got, before)
	}
}
