package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestIPv6OnlyUplinkByRegex runs twilld on an IPv6-only vxlan network
// with nothing but --iface-regex to find the uplink: in each node a
// decoy veth with an IPv4 address alone (up4), matched by name, is passed
// over for eth0, matched by its IPv6 address; the node publishes that
// address and no IPv4 one, and the pods reach each other over IPv6. A
// regex that matches only the decoy stops twilld before it leases,
// naming the flag, the value and what is missing.
func TestIPv6OnlyUplinkByRegex(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twilld and twillctl and starts processes; skipped with -short")
	}
	backendtest.NeedRoot(t)
	dir := t.TempDir()
	bin := binaries.ForTest(t)
	twilld, twillctl := filepath.Join(bin, "twilld"), filepath.Join(bin, "twillctl")
	el := newEtcdLab(t, twillctl, dir, "v6regex")
	lab, url := el.Lab, el.URL
	lab.AddIPv6(t, true)
	conf := filepath.Join(dir, "v6only.json")
	if err := os.WriteFile(conf, []byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, n := range lab.Nodes {
		backendtest.Run(t, "ip", "-n", n.Name, "link", "add", "up4", "type", "veth", "peer", "name", "up4p")
		backendtest.Run(t, "ip", "-n", n.Name, "addr", "add", fmt.Sprintf("192.168.60.%d/24", 11+i), "dev", "up4")
		backendtest.Run(t, "ip", "-n", n.Name, "link", "set", "up4", "up")
	}
	args := func(n *backendtest.Node, regex ...string) []string {
		a := []string{"--etcd-endpoints", url, "--etcd-prefix", "/twill-test", "--net-config", conf,
			"--subnet-file", filepath.Join(dir, n.Name+".env"), "--node-name", n.Name, "--listen", "off"}
		for _, r := range regex {
			a = append(a, "--iface-regex", r)
		}
		return a
	}

	// Only the IPv4-only decoy matches: refused, nothing leased.
	n1 := lab.Nodes[0]
	out, err := exec.Command("ip", append([]string{"netns", "exec", n1.Name, twilld}, args(n1, "^up4$")...)...).CombinedOutput()
	want := `--iface-regex "^up4$" matches no interface with a global IPv6 address, which the IPv6-only network fd00:10:244::/56 needs`
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("twilld --iface-regex ^up4$ on an IPv6-only network: %v\n%s\nwant it to say %q", err, out, want)
	}
	if got := leases(t, lab.Switch, twillctl, url); strings.Contains(got, "fd00:10:244") {
		t.Fatalf("a refused twilld leased:\n%s", got)
	}

	// The decoy matches by name first; eth0 by its IPv6 address wins.
	for _, n := range lab.Nodes {
		// The subnet file makes each node ask for the subnet its cni0 holds.
		err := subnetfile.Write(filepath.Join(dir, n.Name+".env"), subnetfile.File{IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"),
			IPv6Subnet: netip.PrefixFrom(n.Subnet6.Addr().Next(), 64), MTU: 1430})
		if err != nil {
			t.Fatal(err)
		}
		start(t, n.Name, n.Name, twilld, "msg=ready", args(n, "^up4$|^fd00:56::")...)
	}
	got := leases(t, lab.Switch, twillctl, url)
	t.Logf("twillctl leases:\n%s", got)
	for _, n := range lab.Nodes {
		if !strings.Contains(got, n.PublicIPv6.String()) {
			t.Errorf("%s's lease does not publish %s:\n%s", n.Name, n.PublicIPv6, got)
		}
		if strings.Contains(got, n.PublicIP.String()) || strings.Contains(got, "192.168.60.") {
			t.Errorf("an IPv6-only node published an IPv4 address:\n%s", got)
		}
		if dev := n.IP(t, "-d", "link", "show", "twill-v6.1"); !strings.Contains(dev, "local "+n.PublicIPv6.String()+" dev eth0") {
			t.Errorf("%s: the IPv6 VXLAN device is not on eth0 at %s:\n%s", n.Name, n.PublicIPv6, dev)
		}
	}
	n2 := lab.Nodes[1]
	backendtest.Eventually(t, 20*time.Second, func() string {
		if got := n1.Ping(t, n2.PodIP6, 1); got != 1 {
			return fmt.Sprintf("no reply from %s yet; node1 routes:\n%s", n2.PodIP6, n1.IP(t, "-6", "route"))
		}
		return ""
	})
	if got := n2.Ping(t, n1.PodIP6, 3); got != 3 {
		t.Fatalf("pod2 -> pod1 over IPv6: %d of 3 replies", got)
	}
}

// leases is what twillctl leases says of the lab's etcd.
func leases(t *testing.T, ns, twillctl, url string) string {
	t.Helper()
	return backendtest.Run(t, "ip", "netns", "exec", ns, twillctl, "leases", "--etcd-endpoints", url, "--etcd-prefix", "/twill-test")
}
