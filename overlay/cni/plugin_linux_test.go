package cni_test

// These tests run the real plugin binary (from internal/binaries, linked
// as "twill" into a temporary directory) through libcni, as a runtime does,
// with the plugin process started from a thread that has entered a "node"
// network namespace the test made. Nothing touches the host's own namespace: every link, address and
// route lives in namespaces named twt-cni-<pid>-<n>, deleted at cleanup.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/cni"
	"github.com/twillnet/twill/overlay/subnetfile"
)

var (
	pluginDir   string // holds the built plugin, named "twill"
	pluginBuild error
)

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "twill-cni-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			pluginDir = dir
			// libcni finds the plugin by its type, "twill".
			bin, err := binaries.Dir(context.Background())
			if err == nil {
				err = os.Symlink(filepath.Join(bin, "twill-cni"), filepath.Join(dir, "twill"))
			}
			if err != nil {
				pluginBuild = fmt.Errorf("twill-cni: %w", err)
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	nstest.NeedRoot(t, "creates network namespaces, a bridge and veths")
	if pluginBuild != nil {
		t.Fatal(pluginBuild)
	}
}

// nodeExec starts plugins inside the node namespace.
type nodeExec struct {
	*invoke.DefaultExec
	nsPath string
}

func (e nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var out []byte
	var perr error
	if err := namespace.DoPath(e.nsPath, func() error {
		out, perr = e.DefaultExec.ExecPlugin(ctx, pluginPath, stdin, environ)
		return nil
	}); err != nil {
		return nil, err
	}
	return out, perr
}

// node is one node namespace with its twill files and a libcni runtime.
type node struct {
	t        *testing.T
	ns       string
	dir      string
	subnet   string // path of the subnet file
	dataDir  string
	runtime  *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	confJSON string
}

const conflistTmpl = `{
  "cniVersion": "1.1.0",
  "name": "twill",
  "plugins": [{"type": "twill", "subnetFile": %q, "dataDir": %q}]
}`

func newNode(t *testing.T, subnet string) *node {
	t.Helper()
	needRoot(t)
	n := &node{t: t, ns: nstest.New(t, "node").Path, dir: t.TempDir()}
	n.subnet = filepath.Join(n.dir, "run", "subnet.env")
	n.dataDir = filepath.Join(n.dir, "data")
	if subnet != "" {
		n.writeSubnet(subnet, 1450)
	}
	exe := nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, nsPath: n.ns}
	n.runtime = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(n.dir, "cache"), exe)
	n.confJSON = fmt.Sprintf(conflistTmpl, n.subnet, n.dataDir)
	list, err := libcni.ConfListFromBytes([]byte(n.confJSON))
	if err != nil {
		t.Fatalf("parse conflist: %v", err)
	}
	n.list = list

	// Make sure a process started through nodeExec really runs in the node
	// namespace before letting the plugin create anything.
	var out []byte
	err = namespace.DoPath(n.ns, func() error {
		var err error
		out, err = exec.Command("stat", "-L", "-c", "%i", "/proc/self/ns/net").Output()
		return err
	})
	if err != nil {
		t.Fatalf("stat netns from a child: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.ns, &st); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != strconv.FormatUint(st.Ino, 10) {
		t.Fatalf("child process runs in netns inode %s, not the node's %d", out, st.Ino)
	}
	return n
}

func (n *node) writeSubnet(subnet string, mtu int) {
	n.t.Helper()
	n.writeSubnetFile(subnetfile.File{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix(subnet),
		MTU:     mtu,
		IPMasq:  true,
	})
}

func (n *node) writeSubnetFile(f subnetfile.File) {
	n.t.Helper()
	if err := subnetfile.Write(n.subnet, f); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) rt(id, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: "eth0"}
}

func (n *node) add(id, podNS string) *types100.Result {
	n.t.Helper()
	res, err := n.runtime.AddNetworkList(context.Background(), n.list, n.rt(id, podNS))
	if err != nil {
		n.t.Fatalf("ADD %s: %v", id, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		n.t.Fatalf("ADD %s: result: %v", id, err)
	}
	return r
}

func (n *node) del(id, podNS string) {
	n.t.Helper()
	if err := n.runtime.DelNetworkList(context.Background(), n.list, n.rt(id, podNS)); err != nil {
		n.t.Fatalf("DEL %s: %v", id, err)
	}
}

// handle is a netlink handle in the namespace at path.
func handle(t *testing.T, path string) netlinksafe.Handle {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlinksafe.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

func allocations(t *testing.T, n *node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.dataDir, "twill"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// vethsOn lists the veths whose master is the bridge in the node namespace.
func vethsOn(t *testing.T, nl netlinksafe.Handle, bridge string) []string {
	t.Helper()
	br, err := nl.LinkByName(bridge)
	if err != nil {
		t.Fatalf("bridge %s: %v", bridge, err)
	}
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && l.Type() == "veth" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

func hasAddr(t *testing.T, nl netlinksafe.Handle, link, want string) bool {
	t.Helper()
	l, err := nl.LinkByName(link)
	if err != nil {
		t.Fatalf("link %s: %v", link, err)
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == want {
			return true
		}
	}
	return false
}

// ping sends ICMP echo requests (ICMPv6 to an IPv6 address) from inside
// the namespace at path to dst and reports whether a reply came back.
func ping(path string, dst netip.Addr) error {
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var echo, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		echo, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	return namespace.DoPath(path, func() error {
		c, err := icmp.ListenPacket(network, listen)
		if err != nil {
			return fmt.Errorf("icmp socket: %w", err)
		}
		defer c.Close()
		id := os.Getpid() & 0xffff
		buf := make([]byte, 1500)
		for seq := 1; seq <= 3; seq++ {
			msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("twill-cni")}}
			b, _ := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
			if _, err := c.WriteTo(b, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
				return fmt.Errorf("send echo to %s: %w", dst, err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				nr, from, err := c.ReadFrom(buf)
				if err != nil {
					break // timeout: try the next sequence number
				}
				m, err := icmp.ParseMessage(proto, buf[:nr])
				if err != nil || m.Type != reply {
					continue
				}
				if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == dst.String() {
					return nil
				}
			}
		}
		return fmt.Errorf("no echo reply from %s", dst)
	})
}

func podAddr(t *testing.T, r *types100.Result) netip.Prefix {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %+v", len(r.IPs), r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	ones, _ := r.IPs[0].Address.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func TestAddCheckDelGC(t *testing.T) {
	n := newNode(t, "10.244.1.1/24")
	pod := nstest.New(t, "pod").Path
	ctx := context.Background()

	r := n.add("pod-a", pod)

	// The result: three interfaces, the pod's in its sandbox, one address
	// on it with the gateway, a default route, no DNS.
	if len(r.Interfaces) != 3 {
		t.Fatalf("interfaces = %d, want 3 (bridge, veth, eth0): %+v", len(r.Interfaces), r.Interfaces)
	}
	if r.Interfaces[0].Name != "cni0" || r.Interfaces[2].Name != "eth0" || r.Interfaces[2].Sandbox != pod {
		t.Errorf("interfaces = %+v %+v %+v", *r.Interfaces[0], *r.Interfaces[1], *r.Interfaces[2])
	}
	for i, ifc := range r.Interfaces {
		if _, err := net.ParseMAC(ifc.Mac); err != nil {
			t.Errorf("interface %d (%s) MAC %q: %v", i, ifc.Name, ifc.Mac, err)
		}
	}
	addr := podAddr(t, r)
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(addr.Addr()) || addr.Bits() != 24 || addr.Addr() == netip.MustParseAddr("10.244.1.1") {
		t.Errorf("pod address = %s, want a host in 10.244.1.0/24 other than the gateway", addr)
	}
	if r.IPs[0].Interface == nil || *r.IPs[0].Interface != 2 || r.IPs[0].Gateway.String() != "10.244.1.1" {
		t.Errorf("ip config = %+v", r.IPs[0])
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.244.1.1" {
		t.Errorf("routes = %v", r.Routes)
	}
	if !r.DNS.IsEmpty() {
		t.Errorf("dns = %+v, want empty", r.DNS)
	}

	// The kernel.
	nodeNL, podNL := handle(t, n.ns), handle(t, pod)
	eth0, err := podNL.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in pod: %v", err)
	}
	if eth0.Attrs().MTU != 1450 || eth0.Attrs().HardwareAddr.String() != r.Interfaces[2].Mac {
		t.Errorf("pod eth0 mtu %d mac %s, want 1450 %s", eth0.Attrs().MTU, eth0.Attrs().HardwareAddr, r.Interfaces[2].Mac)
	}
	if !hasAddr(t, podNL, "eth0", addr.String()) {
		t.Errorf("pod eth0 lacks %s", addr)
	}
	routes, err := podNL.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(rt netlink.Route) bool {
		return (rt.Dst == nil || rt.Dst.String() == "0.0.0.0/0") && rt.Gw.String() == "10.244.1.1"
	}) {
		t.Errorf("pod has no default route via 10.244.1.1: %v", routes)
	}
	br, err := nodeNL.LinkByName("cni0")
	if err != nil {
		t.Fatalf("cni0 in node: %v", err)
	}
	if br.Type() != "bridge" || br.Attrs().MTU != 1450 || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("cni0 type %s mtu %d flags %v", br.Type(), br.Attrs().MTU, br.Attrs().Flags)
	}
	if !hasAddr(t, nodeNL, "cni0", "10.244.1.1/24") {
		t.Error("cni0 lacks 10.244.1.1/24")
	}
	veth := cni.VethName(cni.Attachment{ContainerID: "pod-a", IfName: "eth0"})
	if got := vethsOn(t, nodeNL, "cni0"); !slices.Equal(got, []string{veth}) || r.Interfaces[1].Name != veth {
		t.Errorf("veths on cni0 = %v, result says %s, want [%s]", got, r.Interfaces[1].Name, veth)
	}
	if hl, err := nodeNL.LinkByName(veth); err != nil {
		t.Errorf("veth %s: %v", veth, err)
	} else if pi, err := nodeNL.LinkGetProtinfo(hl); err != nil || !pi.Hairpin {
		t.Errorf("veth %s hairpin = %v (%v), want on", veth, pi.Hairpin, err)
	}
	if got := allocations(t, n); !slices.Equal(got, []string{addr.Addr().String()}) {
		t.Errorf("allocation files = %v, want [%s]", got, addr.Addr())
	}
	if err := ping(pod, netip.MustParseAddr("10.244.1.1")); err != nil {
		t.Errorf("ping pod -> gateway: %v", err)
	}

	// CHECK passes, then names what is missing once a route is gone.
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-a", pod)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := podNL.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.244.1.1")}); err != nil {
		t.Fatal(err)
	}
	err = n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-a", pod))
	if err == nil || !strings.Contains(err.Error(), "route to 0.0.0.0/0 via 10.244.1.1 is missing") {
		t.Errorf("CHECK without the default route: err = %v", err)
	}

	// ADD again for the same attachment: same address.
	r2 := n.add("pod-a", pod)
	if got := podAddr(t, r2); got != addr {
		t.Errorf("second ADD got %s, want %s", got, addr)
	}
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-a", pod)); err != nil {
		t.Errorf("CHECK after second ADD: %v", err)
	}

	// DEL removes the veth (and with it eth0) and the allocation; DEL again,
	// DEL of an unknown container and DEL with a gone namespace succeed.
	n.del("pod-a", pod)
	if got := vethsOn(t, nodeNL, "cni0"); len(got) != 0 {
		t.Errorf("veths on cni0 after DEL: %v", got)
	}
	if _, err := podNL.LinkByName("eth0"); err == nil {
		t.Error("eth0 still in pod after DEL")
	}
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("allocation files after DEL: %v", got)
	}
	n.del("pod-a", pod)
	n.del("never-added", pod)
	n.del("gone-ns", "/run/netns/twt-cni-does-not-exist")

	// GC with nothing valid on an empty node succeeds.
	if err := n.runtime.GCNetworkList(ctx, n.list, &libcni.GCArgs{}); err != nil {
		t.Errorf("GC: %v", err)
	}
}

func TestTwoPodsPing(t *testing.T) {
	n := newNode(t, "10.244.2.1/24")
	a, b := nstest.New(t, "pa").Path, nstest.New(t, "pb").Path
	ra, rb := n.add("pod-a", a), n.add("pod-b", b)
	aa, ab := podAddr(t, ra).Addr(), podAddr(t, rb).Addr()
	if aa == ab {
		t.Fatalf("both pods got %s", aa)
	}
	if err := ping(a, ab); err != nil {
		t.Errorf("ping %s -> %s: %v", aa, ab, err)
	}
	if err := ping(b, aa); err != nil {
		t.Errorf("ping %s -> %s: %v", ab, aa, err)
	}
	n.del("pod-a", a)
	// With pod-a gone, pod-b cannot reach its address: the ping test can fail.
	if err := ping(b, aa); err == nil {
		t.Errorf("ping %s -> %s succeeded after DEL of pod-a", ab, aa)
	}
}

func TestParallelAdds(t *testing.T) {
	const pods = 50
	n := newNode(t, "10.244.3.1/24")
	nss := make([]string, pods)
	for i := range nss {
		nss[i] = nstest.New(t, fmt.Sprint("p", i)).Path
	}
	addrs := make([]netip.Addr, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			res, err := n.runtime.AddNetworkList(context.Background(), n.list, n.rt(fmt.Sprint("pod-", i), nss[i]))
			if err != nil {
				t.Errorf("ADD pod-%d: %v", i, err)
				return
			}
			r, err := types100.NewResultFromResult(res)
			if err != nil || len(r.IPs) != 1 {
				t.Errorf("ADD pod-%d result %v: %v", i, res, err)
				return
			}
			addrs[i], _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	distinct := map[netip.Addr]int{}
	for i, a := range addrs {
		if j, dup := distinct[a]; dup {
			t.Errorf("pod-%d and pod-%d both got %s", j, i, a)
		}
		distinct[a] = i
	}
	nodeNL := handle(t, n.ns)
	if got := vethsOn(t, nodeNL, "cni0"); len(got) != pods {
		t.Errorf("%d veths on cni0, want %d", len(got), pods)
	}
	if got := allocations(t, n); len(got) != pods {
		t.Errorf("%d allocation files, want %d", len(got), pods)
	}
	for i := range pods {
		wg.Go(func() {
			if err := n.runtime.DelNetworkList(context.Background(), n.list, n.rt(fmt.Sprint("pod-", i), nss[i])); err != nil {
				t.Errorf("DEL pod-%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if got := vethsOn(t, nodeNL, "cni0"); len(got) != 0 {
		t.Errorf("veths on cni0 after 50 DELs: %v", got)
	}
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("allocation files after 50 DELs: %v", got)
	}
}

// runPlugin runs the plugin binary by hand, in the node namespace, and
// returns the CNI error it printed.
func runPlugin(t *testing.T, n *node, env []string, stdin string) *types.Error {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var runErr error
	err := namespace.DoPath(n.ns, func() error {
		cmd := exec.Command(filepath.Join(pluginDir, "twill"))
		cmd.Env = append([]string{"CNI_PATH=" + pluginDir}, env...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr = cmd.Run()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if !errors.As(runErr, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("plugin exit: %v, want a non-zero exit; stdout %s", runErr, stdout.String())
	}
	if strings.Contains(stderr.String(), "panic") {
		t.Errorf("plugin panicked: %s", stderr.String())
	}
	var e types.Error
	if err := json.Unmarshal(stdout.Bytes(), &e); err != nil || e.Code == 0 || e.Msg == "" {
		t.Fatalf("stdout is not a CNI error (%v): %q", err, stdout.String())
	}
	return &e
}

func TestBadInput(t *testing.T) {
	n := newNode(t, "") // no subnet file
	pod := nstest.New(t, "pod").Path
	addEnv := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bad-1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod}
	plugin := func(extra string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"twill","type":"twill","subnetFile":%q,"dataDir":%q%s}`, n.subnet, n.dataDir, extra)
	}
	for _, tc := range []struct {
		name  string
		env   []string
		stdin string
		code  uint
		want  []string
	}{
		{"missing subnet file", addEnv, plugin(""), types.ErrTryAgainLater, []string{"subnet file " + n.subnet + " does not exist", "is twilld running"}},
		{"bad JSON", addEnv, `{"cniVersion":"1.1.0","name":"twill",`, types.ErrDecodingFailure, []string{"error unmarshall network config"}},
		{"unknown cniVersion", addEnv, strings.Replace(plugin(""), "1.1.0", "9.9.9", 1), types.ErrIncompatibleCNIVersion, []string{"incompatible CNI versions", `config is "9.9.9"`}},
		{"unknown field", addEnv, plugin(`,"bogus":42`), types.ErrInvalidNetworkConfig, []string{`unknown field "bogus" (value 42)`}},
		{"invalid field", addEnv, plugin(`,"isGateway":"yes"`), types.ErrInvalidNetworkConfig, []string{`field "isGateway" (value "yes")`}},
		{"missing CNI_NETNS", addEnv[:3], plugin(""), types.ErrInvalidEnvironmentVariables, []string{"CNI_NETNS", "missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := runPlugin(t, n, tc.env, tc.stdin)
			text := e.Msg + "; " + e.Details
			if e.Code != tc.code {
				t.Errorf("code %d, want %d (%s)", e.Code, tc.code, text)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("message %q lacks %q", text, w)
				}
			}
		})
	}

	// With a subnet file, a path that is no namespace is named.
	n.writeSubnet("10.244.4.1/24", 1450)
	e := runPlugin(t, n, append(addEnv[:3:3], "CNI_NETNS="+n.dir), plugin(""))
	if e.Code != types.ErrInvalidNetNS || !strings.Contains(e.Msg, n.dir) {
		t.Errorf("ADD with a directory for CNI_NETNS: %d %s", e.Code, e.Msg)
	}
	// The pod namespace must not be the node's.
	e = runPlugin(t, n, append(addEnv[:3:3], "CNI_NETNS="+n.ns), plugin(""))
	if e.Code != types.ErrInvalidNetNS || !strings.Contains(e.Msg, "plugin's own") {
		t.Errorf("ADD into the node namespace: %d %s", e.Code, e.Msg)
	}
	// A runtime refuses a broken conflist before it runs anything.
	if _, err := libcni.ConfListFromBytes([]byte(`{"name":"twill","plugins":[{"type":"twill"`)); err == nil {
		t.Error("libcni accepted a broken conflist")
	}
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("failed ADDs left allocations: %v", got)
	}
}

func TestStatusAndVersion(t *testing.T) {
	n := newNode(t, "")
	ctx := context.Background()
	err := n.runtime.GetStatusNetworkList(ctx, n.list)
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, n.subnet) {
		t.Errorf("STATUS without a subnet file: %v, want code 50 naming %s", err, n.subnet)
	}
	n.writeSubnet("10.244.5.1/24", 1450)
	if err := n.runtime.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Errorf("STATUS with a subnet file: %v", err)
	}
	info, err := n.runtime.GetVersionInfo(ctx, "twill")
	if err != nil {
		t.Fatalf("VERSION: %v", err)
	}
	if !slices.Contains(info.SupportedVersions(), "1.1.0") {
		t.Errorf("VERSION lists %v, want 1.1.0 among them", info.SupportedVersions())
	}
}

func TestGCFreesInvalidAttachments(t *testing.T) {
	n := newNode(t, "10.244.6.1/24")
	pods := []string{nstest.New(t, "g0").Path, nstest.New(t, "g1").Path, nstest.New(t, "g2").Path}
	var addrs []string
	for i, p := range pods {
		addrs = append(addrs, podAddr(t, n.add(fmt.Sprint("gc-", i), p)).Addr().String())
	}
	// A runtime that lost its cache: libcni knows no attachments, so only
	// the plugin's own GC can free anything.
	fresh := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(),
		nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, nsPath: n.ns})
	err := fresh.GCNetworkList(context.Background(), n.list, &libcni.GCArgs{
		ValidAttachments: []types.GCAttachment{{ContainerID: "gc-1", IfName: "eth0"}},
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := allocations(t, n); !slices.Equal(got, []string{addrs[1]}) {
		t.Errorf("allocations after GC = %v, want [%s]", got, addrs[1])
	}
	keep := cni.VethName(cni.Attachment{ContainerID: "gc-1", IfName: "eth0"})
	if got := vethsOn(t, handle(t, n.ns), "cni0"); !slices.Equal(got, []string{keep}) {
		t.Errorf("veths after GC = %v, want [%s]", got, keep)
	}
	if err := ping(pods[1], netip.MustParseAddr("10.244.6.1")); err != nil {
		t.Errorf("valid pod lost connectivity after GC: %v", err)
	}
}

func TestSubnetChange(t *testing.T) {
	n := newNode(t, "10.244.7.1/24")
	a, b := nstest.New(t, "sa").Path, nstest.New(t, "sb").Path
	old := podAddr(t, n.add("pod-a", a))
	n.writeSubnet("10.244.8.1/24", 1400)
	nb := podAddr(t, n.add("pod-b", b))
	if !netip.MustParsePrefix("10.244.8.0/24").Contains(nb.Addr()) {
		t.Errorf("pod after the subnet change got %s, want one in 10.244.8.0/24", nb)
	}
	nodeNL := handle(t, n.ns)
	if !hasAddr(t, nodeNL, "cni0", "10.244.8.1/24") || hasAddr(t, nodeNL, "cni0", "10.244.7.1/24") {
		t.Error("cni0 does not carry exactly the new gateway 10.244.8.1/24")
	}
	if got := allocations(t, n); !slices.Contains(got, old.Addr().String()) {
		t.Errorf("old allocation %s dropped before DEL: %v", old, got)
	}
	if err := ping(b, netip.MustParseAddr("10.244.8.1")); err != nil {
		t.Errorf("ping new gateway: %v", err)
	}
	n.del("pod-a", a)
	n.del("pod-b", b)
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("allocations after DELs: %v", got)
	}
}
