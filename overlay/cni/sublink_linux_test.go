package cni_test

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

func ipIn(t *testing.T, nsPath string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", filepath.Base(nsPath)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", filepath.Base(nsPath), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// underlayNode is a node namespace whose eth0 (192.168.56.11/24, default
// route via .1) is a veth to a "world" namespace holding 192.168.56.1, and a
// subnet file for macvlan (or ipvlan) with the slice 192.168.56.144/28.
func underlayNode(t *testing.T, backendType, mode, master string, gateway netip.Addr) (*node, string) {
	t.Helper()
	n := newNode(t, "")
	world := nstest.New(t, "world").Path
	ipIn(t, world, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", filepath.Base(n.ns))
	ipIn(t, world, "addr", "add", "192.168.56.1/24", "dev", "eth0")
	ipIn(t, world, "link", "set", "eth0", "up")
	ipIn(t, n.ns, "addr", "add", "192.168.56.11/24", "dev", "eth0")
	ipIn(t, n.ns, "link", "set", "eth0", "up")
	ipIn(t, n.ns, "route", "add", "default", "via", "192.168.56.1")
	err := subnetfile.Write(n.subnet, subnetfile.File{
		Network: netip.MustParsePrefix("192.168.56.128/25"),
		Subnet:  netip.MustParsePrefix("192.168.56.145/28"),
		MTU:     1500,
		Backend: backendType,
		Sublink: subnetfile.Sublink{Master: master, Mode: mode, Subnet: netip.MustParsePrefix("192.168.56.0/24"),
			Gateway: gateway},
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, world
}

// TestUnderlayAddCheckDel attaches two pods with macvlan (bridge): each gets
// a macvlan of the node's eth0 named eth0 in its namespace, an address of
// the node's slice with the underlay's /24, the master's MTU and a default
// route via the master's gateway. The world on the segment reaches the pods
// directly and the pods reach each other; CHECK passes and then notices a
// changed MTU; DEL removes the interface and frees the address.
func TestUnderlayAddCheckDel(t *testing.T) {
	// No gateway in the subnet file: the plugin takes the master's default route.
	n, world := underlayNode(t, "macvlan", "bridge", "eth0", netip.Addr{})
	pod1, pod2 := nstest.New(t, "pod").Path, nstest.New(t, "pod").Path
	r1 := n.add("c1", pod1)
	r2 := n.add("c2", pod2)
	slice := netip.MustParsePrefix("192.168.56.144/28")
	a1, a2 := podAddr(t, r1), podAddr(t, r2)
	for _, a := range []netip.Prefix{a1, a2} {
		if a.Bits() != 24 || !slice.Contains(a.Addr()) || a.Addr() == netip.MustParseAddr("192.168.56.145") || a.Addr() == slice.Addr() {
			t.Fatalf("pod address %s: want an address of %s other than its first two, with the underlay's /24", a, slice)
		}
	}
	if a1 == a2 {
		t.Fatalf("both pods got %s", a1)
	}
	if len(r1.Interfaces) != 1 || r1.Interfaces[0].Name != "eth0" || r1.Interfaces[0].Sandbox != pod1 || r1.Interfaces[0].Mtu != 1500 {
		t.Fatalf("interfaces %+v", r1.Interfaces[0])
	}
	if gw := r1.IPs[0].Gateway.String(); gw != "192.168.56.1" {
		t.Fatalf("gateway %s, want the master's default gateway 192.168.56.1", gw)
	}
	nl := handle(t, pod1)
	l, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if mv, ok := l.(*netlink.Macvlan); !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || l.Attrs().MTU != 1500 {
		t.Fatalf("pod eth0 is a %s %+v", l.Type(), l)
	}
	if route := ipIn(t, pod1, "route", "show", "default"); !strings.Contains(route, "via 192.168.56.1 dev eth0") {
		t.Fatalf("pod default route: %q", route)
	}
	// The node has no veth and no bridge: the pod is on the underlay.
	if links := ipIn(t, n.ns, "-br", "link"); strings.Contains(links, "cni0") || strings.Contains(links, "tw") {
		t.Fatalf("node links:\n%s", links)
	}

	if err := ping(world, a1.Addr()); err != nil {
		t.Fatalf("world to pod: %v", err)
	}
	if err := ping(pod2, a1.Addr()); err != nil {
		t.Fatalf("pod to pod: %v", err)
	}
	if err := ping(pod1, netip.MustParseAddr("192.168.56.1")); err != nil {
		t.Fatalf("pod to the gateway: %v", err)
	}

	ctx := context.Background()
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("c1", pod1)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	ipIn(t, pod1, "link", "set", "eth0", "mtu", "1400")
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("c1", pod1)); err == nil || !strings.Contains(err.Error(), "MTU 1400, not 1500") {
		t.Fatalf("CHECK after an MTU change = %v", err)
	}

	n.del("c1", pod1)
	if _, err := nl.LinkByName("eth0"); err == nil {
		t.Fatal("eth0 still in the pod after DEL")
	}
	if got := allocations(t, n); len(got) != 1 || got[0] != a2.Addr().String() {
		t.Fatalf("allocations after DEL: %v", got)
	}
	n.del("c1", pod1) // twice is fine
	n.del("c2", "")   // without a namespace (gone) too
	if got := allocations(t, n); len(got) != 0 {
		t.Fatalf("allocations after DEL: %v", got)
	}
}

// TestUnderlayGatewayFromSubnetFile: the subnet file's gateway wins over the
// master's default route.
func TestUnderlayGatewayFromSubnetFile(t *testing.T) {
	n, _ := underlayNode(t, "macvlan", "bridge", "eth0", netip.MustParseAddr("192.168.56.2"))
	pod := nstest.New(t, "pod").Path
	r := n.add("c1", pod)
	if gw := r.IPs[0].Gateway.String(); gw != "192.168.56.2" {
		t.Fatalf("gateway %s, want 192.168.56.2 from the subnet file", gw)
	}
}

// TestUnderlayMissingMaster: ADD fails naming the master, and leaves no
// allocation and no interface behind.
func TestUnderlayMissingMaster(t *testing.T) {
	n, _ := underlayNode(t, "macvlan", "bridge", "nope0", netip.Addr{})
	pod := nstest.New(t, "pod").Path
	_, err := n.runtime.AddNetworkList(context.Background(), n.list, n.rt("c1", pod))
	if err == nil || !strings.Contains(err.Error(), "nope0") {
		t.Fatalf("ADD with a missing master = %v", err)
	}
	if got := allocations(t, n); len(got) != 0 {
		t.Fatalf("allocations left: %v", got)
	}
	if links := ipIn(t, pod, "-br", "link"); strings.Count(strings.TrimSpace(links), "\n") != 0 {
		t.Fatalf("pod links:\n%s", links)
	}
}

// TestUnderlayIPvlan attaches a pod with ipvlan where the kernel has it.
func TestUnderlayIPvlan(t *testing.T) {
	n, world := underlayNode(t, "ipvlan", "l2", "eth0", netip.Addr{})
	probe := nstest.New(t, "probe").Path
	if out, err := exec.Command("ip", "-n", filepath.Base(n.ns), "link", "add", "link", "eth0", "name", "probe", "netns", filepath.Base(probe), "type", "ipvlan", "mode", "l2").CombinedOutput(); err != nil {
		t.Skipf("needs ipvlan in the kernel (this host's has none): %s", out)
	}
	pod := nstest.New(t, "pod").Path
	r := n.add("c1", pod)
	if err := ping(world, podAddr(t, r).Addr()); err != nil {
		t.Fatalf("world to ipvlan pod: %v", err)
	}
	if err := n.runtime.CheckNetworkList(context.Background(), n.list, n.rt("c1", pod)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
}
