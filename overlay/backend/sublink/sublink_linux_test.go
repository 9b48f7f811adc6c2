package sublink_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/sublink"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

func config(t *testing.T, js string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// pod makes a namespace with a macvlan (bridge) child of the node's eth0 at
// addr/24, as the CNI plugin attaches pods, and returns its name.
func pod(t *testing.T, n *backendtest.Node, name string, addr netip.Addr) string {
	t.Helper()
	ns := n.Name + "-" + name
	backendtest.Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	n.IP(t, "link", "add", "link", "eth0", "name", "tmp"+name, "type", "macvlan", "mode", "bridge")
	n.IP(t, "link", "set", "tmp"+name, "netns", ns)
	backendtest.Run(t, "ip", "-n", ns, "link", "set", "tmp"+name, "name", "eth0")
	backendtest.Run(t, "ip", "-n", ns, "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", "eth0")
	backendtest.Run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	backendtest.Run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

func ping(netns string, dst netip.Addr) error {
	out, err := exec.Command("ip", "netns", "exec", netns, "ping", "-n", "-c", "1", "-W", "1", dst.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, netns, err, out)
	}
	return nil
}

// TestMacvlanHostReachesOwnPods shows why twill.host exists: before the
// lease the node cannot reach its own pod through eth0 (the kernel does not
// pass traffic between a macvlan parent and its children); once the backend
// has its lease, twill.host carries the slice's first address and the node
// reaches the pod. A peer node and its pod reach the pod directly. The
// backend puts twill.host back when it is deleted, and Cleanup removes it.
func TestMacvlanHostReachesOwnPods(t *testing.T) {
	lab := backendtest.New(t, "sublink", 2)
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	n1.IP(t, "route", "add", "default", "via", "192.168.56.1")
	cfg := config(t, `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan"}}`)
	slice := netip.MustParsePrefix("192.168.56.144/28")
	podIP := netip.MustParseAddr("192.168.56.146")
	podNS := pod(t, n1, "m1", podIP)
	peerPodNS := pod(t, n2, "m2", netip.MustParseAddr("192.168.56.162"))

	if err := ping(n1.Name, podIP); err == nil {
		t.Fatalf("the node reached its own macvlan pod without twill.host; the test proves nothing")
	}

	b, err := sublink.New(n1.BackendNode(cfg), logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prep, err := b.Prepare(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if prep.MTU != 1500 || prep.Sublink == nil || prep.Sublink.Master != "eth0" || prep.Sublink.Mode != "bridge" ||
		prep.Sublink.Subnet.String() != "192.168.56.0/24" || prep.Sublink.Gateway.String() != "192.168.56.1" {
		t.Fatalf("prepared %+v sublink %+v", prep, prep.Sublink)
	}
	own := lease.Lease{Subnet: slice, Attrs: lease.Attrs{PublicIP: n1.PublicIP, BackendType: "macvlan"}, Expiration: time.Now().Add(time.Hour)}
	if err := b.SetLease(ctx, own); err != nil {
		t.Fatal(err)
	}
	peer := lease.Lease{Subnet: netip.MustParsePrefix("192.168.56.160/28"), Attrs: lease.Attrs{PublicIP: n2.PublicIP, BackendType: "macvlan"}}
	if err := b.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: peer}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()

	out := n1.IP(t, "-d", "addr", "show", "dev", sublink.HostDevice)
	if !strings.Contains(out, "macvlan mode bridge") || !strings.Contains(out, "inet 192.168.56.145/28") {
		t.Fatalf("twill.host:\n%s", out)
	}
	if route := n1.IP(t, "route", "show", slice.String()); !strings.Contains(route, "dev twill.host") {
		t.Fatalf("route to the slice: %q", route)
	}
	if err := ping(n1.Name, podIP); err != nil {
		t.Fatalf("node to its own pod: %v", err)
	}
	if err := ping(podNS, n1.PublicIP); err != nil {
		t.Fatalf("pod to its own node: %v", err)
	}
	if err := ping(peerPodNS, podIP); err != nil {
		t.Fatalf("pod on the peer to the pod: %v", err)
	}
	if err := ping(n2.Name, podIP); err != nil {
		t.Fatalf("peer node to the pod: %v", err)
	}
	if routes := n1.IP(t, "route", "show", "proto", "126"); strings.TrimSpace(routes) != "" {
		t.Errorf("macvlan routes nothing between nodes, but the node has twill routes:\n%s", routes)
	}
	if st := b.Status(); st.Mode != "bridge" {
		t.Errorf("status mode %q", st.Mode)
	}

	// Deleted by hand, twill.host comes back.
	n1.IP(t, "link", "del", sublink.HostDevice)
	backendtest.Eventually(t, 15*time.Second, func() string {
		if err := ping(n1.Name, podIP); err != nil {
			return "after deleting twill.host: " + err.Error()
		}
		return ""
	})

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "-n", n1.Name, "link", "show", sublink.HostDevice).CombinedOutput(); err == nil {
		t.Fatalf("twill.host is still there after Cleanup:\n%s", out)
	}
}

// TestPrepareRefusesBadConfig: a master that does not exist, a pod range
// outside the master's subnet and an MTU above the master's are refused
// with errors that name what is wrong.
func TestPrepareRefusesBadConfig(t *testing.T) {
	lab := backendtest.New(t, "sublink", 1)
	n := lab.Nodes[0]
	for _, tt := range []struct{ cfg, want string }{
		{`{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan","Master":"nope0"}}`,
			`master interface "nope0" (Backend.Master) does not exist on this node`},
		{`{"Network":"10.99.0.0/24","SubnetLen":28,"Backend":{"Type":"macvlan"}}`,
			"Network 10.99.0.0/24 is not inside the subnet of master interface eth0 (subnet 192.168.56.0/24)"},
		{`{"Network":"192.168.0.0/16","SubnetLen":28,"Backend":{"Type":"macvlan"}}`,
			"Network 192.168.0.0/16 is not inside the subnet of master interface eth0 (subnet 192.168.56.0/24)"},
		{`{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"ipvlan","Mode":"l3","MTU":9000}}`,
			"Backend.MTU 9000 is more than the MTU 1500 of master eth0"},
	} {
		b, err := sublink.New(n.BackendNode(config(t, tt.cfg)), logger(t))
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.Prepare(context.Background())
		b.Close()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Prepare = %v, want an error containing %q", tt.cfg, err, tt.want)
		}
	}
	// No master named and no public interface.
	node := n.BackendNode(config(t, `{"Network":"192.168.56.128/25","SubnetLen":28,"Backend":{"Type":"macvlan"}}`))
	node.Iface = ""
	b, err := sublink.New(node, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Prepare(context.Background()); err == nil || !strings.Contains(err.Error(), "no master interface") {
		t.Errorf("no master: %v", err)
	}
}
