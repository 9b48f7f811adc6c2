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

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestWireGuardInNamespaces runs two twillds with the wireguard backend in
// node namespaces (userspace WireGuard where the kernel has none): pods
// talk, each node's key is kept in its --state-dir, a restarted twilld
// comes back with the same key and pods talk again, and --cleanup removes
// the device, the routes and the nftables table but keeps the key.
func TestWireGuardInNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld and twillctl and starts processes; skipped with -short")
	}
	backendtest.NeedRoot(t)
	dir := t.TempDir()
	bin := binaries.ForTest(t)
	twilld, twillctl := filepath.Join(bin, "twilld"), filepath.Join(bin, "twillctl")
	el := newEtcdLab(t, twillctl, dir, "wireguard")
	lab, url := el.Lab, el.URL
	netConfig := netConfigFile(t, dir, "wireguard")
	args := func(n *backendtest.Node) []string {
		sf := filepath.Join(dir, n.Name+".env")
		return []string{"--etcd-endpoints", url, "--etcd-prefix", "/twill-test", "--net-config", netConfig,
			"--iface", "eth0", "--subnet-file", sf, "--node-name", n.Name, "--state-dir", filepath.Join(dir, n.Name+"-state"), "--listen", "off"}
	}
	var procs []proc
	for _, n := range lab.Nodes {
		sf := filepath.Join(dir, n.Name+".env")
		if err := subnetfile.Write(sf, subnetfile.File{Network: netip.MustParsePrefix("10.244.0.0/16"),
			Subnet: netip.PrefixFrom(n.Subnet.Addr().Next(), 24), MTU: 1440}); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, start(t, n.Name, n.Name, twilld, "msg=ready", args(n)...))
	}
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	pings := func(what string) {
		t.Helper()
		// Each node greets the peers it learns, so the node that learned
		// last handshakes at once: within WireGuard's 5 s rekey timeout,
		// which a node waiting for a retry would take.
		start := time.Now()
		backendtest.Eventually(t, 4*time.Second, func() string {
			if got := n1.Ping(t, n2.PodIP, 1); got != 1 {
				return fmt.Sprintf("%s: no reply from %s yet; node1 routes:\n%s", what, n2.PodIP, n1.IP(t, "route"))
			}
			return ""
		})
		t.Logf("%s: first reply after %v", what, time.Since(start).Round(time.Millisecond))
		if got := n2.Ping(t, n1.PodIP, 3); got != 3 {
			t.Fatalf("%s: pod2 -> pod1: %d of 3 replies", what, got)
		}
	}
	pings("first start")
	keyFile := filepath.Join(dir, n1.Name+"-state", "wireguard.key")
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if link := n1.IP(t, "-d", "link", "show", "twill-wg"); !strings.Contains(link, "mtu 1440") {
		t.Errorf("twill-wg: %s", link)
	}

	// A restart keeps the key: the peer needs no new lease event.
	if err := syscall.Kill(procs[0].pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	procs[0].wait(t)
	procs[0] = start(t, n1.Name+"-again", n1.Name, twilld, "msg=ready", args(n1)...)
	pings("after a restart")
	if again, _ := os.ReadFile(keyFile); string(again) != string(key) {
		t.Errorf("the key changed over a restart: %q, was %q", again, key)
	}

	// A new key (the state file deleted, twilld restarted): node 2 swaps
	// the old key for the new one in the one lease event that brings it,
	// keeps no peer with the old key, and pods talk again.
	if err := syscall.Kill(procs[0].pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	procs[0].wait(t)
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	seen := len(procs[1].log.String())
	procs[0] = start(t, n1.Name+"-newkey", n1.Name, twilld, "msg=ready", args(n1)...)
	pings("after a new key")
	newKey, err := os.ReadFile(keyFile)
	if err != nil || string(newKey) == string(key) {
		t.Fatalf("after deleting the key file: %q, %v; want a new key", newKey, err)
	}
	oldPub, newPub := publicKey(t, key), publicKey(t, newKey)
	var swaps []string
	for line := range strings.Lines(procs[1].log.String()[seen:]) {
		if strings.Contains(line, "msg=\"peers ") {
			swaps = append(swaps, strings.TrimSpace(line))
		}
	}
	// One sync: the old key removed, then the new one configured (the
	// lease event that published it); nothing configures the old key.
	if len(swaps) != 2 || !strings.Contains(swaps[0], "peers removed") || !strings.Contains(swaps[0], oldPub) ||
		!strings.Contains(swaps[1], "peers configured") || !strings.Contains(swaps[1], newPub) || strings.Contains(swaps[1], oldPub) {
		t.Errorf("node 2 on node 1's new key %s (old %s): want the old removed and the new configured in one sync; logged:\n%s", newPub, oldPub, strings.Join(swaps, "\n"))
	}

	if err := syscall.Kill(procs[0].pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	procs[0].wait(t)
	backendtest.Run(t, "ip", "netns", "exec", n1.Name, twilld, "--cleanup", "--net-config", netConfig, "--iface", "eth0",
		"--subnet-file", filepath.Join(dir, "unused.env"), "--state-dir", filepath.Join(dir, n1.Name+"-state"))
	if got := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(got) != "" {
		t.Errorf("routes left after --cleanup: %q", got)
	}
	if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, "twill-wg") {
		t.Errorf("twill-wg left after --cleanup:\n%s", got)
	}
	if got := backendtest.Run(t, "ip", "netns", "exec", n1.Name, "nft", "list", "tables"); strings.Contains(got, "twill") {
		t.Errorf("nftables table left after --cleanup: %q", got)
	}
	if _, err := os.Stat(keyFile); err != nil {
		t.Errorf("--cleanup removed the key: %v", err)
	}
}

// publicKey is the public key of the private key file's text, in base64.
func publicKey(t *testing.T, file []byte) string {
	t.Helper()
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(file)))
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}
