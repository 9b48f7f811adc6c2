package cni_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/overlay/subnetfile"
)

func dualStackFile(v4, v6 string) subnetfile.File {
	f := subnetfile.File{MTU: 1450, IPMasq: true}
	if v4 != "" {
		f.Network, f.Subnet = netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix(v4)
	}
	if v6 != "" {
		f.IPv6Network, f.IPv6Subnet = netip.MustParsePrefix("fd00:10:244::/56"), netip.MustParsePrefix(v6)
	}
	return f
}

// podAddrs are a result's addresses, IPv4 first as the plugin gives them.
func podAddrs(t *testing.T, r *types100.Result, want int) []netip.Prefix {
	t.Helper()
	if len(r.IPs) != want {
		t.Fatalf("result has %d IPs, want %d: %+v", len(r.IPs), want, r)
	}
	var out []netip.Prefix
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		ones, _ := ip.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	return out
}

// hasDefaultRoute reports whether the pod at podPath has a default route
// via gw on eth0.
func hasDefaultRoute(t *testing.T, podPath string, gw string) bool {
	t.Helper()
	nl := handle(t, podPath)
	eth0, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	routes, err := nl.RouteList(eth0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(routes, func(rt netlink.Route) bool {
		ones := 0
		if rt.Dst != nil {
			ones, _ = rt.Dst.Mask.Size()
		}
		return ones == 0 && rt.Gw.String() == gw
	})
}

// TestDualStackPods: on a dual-stack node each pod gets an address of each
// family and a default route of each, the bridge holds both gateways, pods
// ping each other and the gateway over IPv6 and IPv4, CHECK names a missing
// IPv6 route, DEL frees both addresses and GC frees those of attachments
// the runtime no longer knows.
func TestDualStackPods(t *testing.T) {
	n := newNode(t, "")
	n.writeSubnetFile(dualStackFile("10.244.3.1/24", "fd00:10:244:3::1/64"))
	a, b := nstest.New(t, "da").Path, nstest.New(t, "db").Path
	ctx := context.Background()

	ra := n.add("pod-a", a)
	pa := podAddrs(t, ra, 2)
	if !netip.MustParsePrefix("10.244.3.0/24").Contains(pa[0].Addr()) || pa[0].Bits() != 24 ||
		!netip.MustParsePrefix("fd00:10:244:3::/64").Contains(pa[1].Addr()) || pa[1].Bits() != 64 || pa[1].Addr().String() == "fd00:10:244:3::1" {
		t.Fatalf("pod addresses %v, want one in each subnet, not the gateway", pa)
	}
	if ra.IPs[1].Gateway.String() != "fd00:10:244:3::1" || *ra.IPs[1].Interface != 2 || ra.IPs[0].Gateway.String() != "10.244.3.1" {
		t.Errorf("ip configs %+v %+v", ra.IPs[0], ra.IPs[1])
	}
	if len(ra.Routes) != 2 || ra.Routes[0].Dst.String() != "0.0.0.0/0" || ra.Routes[1].Dst.String() != "::/0" || ra.Routes[1].GW.String() != "fd00:10:244:3::1" {
		t.Errorf("routes %v, want a default route of each family", ra.Routes)
	}
	rb := n.add("pod-b", b)
	pb := podAddrs(t, rb, 2)

	nodeNL, podNL := handle(t, n.ns), handle(t, a)
	if !hasAddr(t, nodeNL, "cni0", "10.244.3.1/24") || !hasAddr(t, nodeNL, "cni0", "fd00:10:244:3::1/64") {
		t.Error("cni0 does not hold both gateways")
	}
	if !hasAddr(t, podNL, "eth0", pa[1].String()) || !hasDefaultRoute(t, a, "fd00:10:244:3::1") || !hasDefaultRoute(t, a, "10.244.3.1") {
		t.Errorf("pod a lacks %s or a default route", pa[1])
	}
	for _, p := range []struct {
		from string
		to   netip.Addr
	}{{a, pb[1].Addr()}, {b, pa[1].Addr()}, {a, netip.MustParseAddr("fd00:10:244:3::1")}, {a, pb[0].Addr()}} {
		if err := ping(p.from, p.to); err != nil {
			t.Errorf("ping -> %s: %v", p.to, err)
		}
	}
	if got := allocations(t, n); len(got) != 4 {
		t.Errorf("allocations %v, want 4", got)
	}

	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-a", a)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	eth0, _ := podNL.LinkByName("eth0")
	if err := podNL.RouteDel(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: net.ParseIP("fd00:10:244:3::1")}); err != nil {
		t.Fatal(err)
	}
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-a", a)); err == nil || !strings.Contains(err.Error(), "route to ::/0 via fd00:10:244:3::1 is missing") {
		t.Errorf("CHECK without the IPv6 default route: %v", err)
	}
	gw6, _ := netlink.ParseAddr("fd00:10:244:3::1/64")
	br, _ := nodeNL.LinkByName("cni0")
	if err := nodeNL.AddrDel(br, gw6); err != nil {
		t.Fatal(err)
	}
	if err := n.runtime.CheckNetworkList(ctx, n.list, n.rt("pod-b", b)); err == nil || !strings.Contains(err.Error(), "bridge cni0 lacks its gateway address fd00:10:244:3::1/64") {
		t.Errorf("CHECK without the IPv6 gateway: %v", err)
	}
	// The next ADD puts it back; ADD again keeps the pod's addresses.
	if again := podAddrs(t, n.add("pod-a", a), 2); !slices.Equal(again, pa) {
		t.Errorf("second ADD got %v, want %v", again, pa)
	}
	if !hasAddr(t, nodeNL, "cni0", "fd00:10:244:3::1/64") {
		t.Error("ADD did not restore the IPv6 gateway")
	}

	n.del("pod-a", a)
	if got := allocations(t, n); !slices.Contains(got, pb[0].Addr().String()) || !slices.Contains(got, pb[1].Addr().String()) || len(got) != 2 {
		t.Errorf("allocations after DEL of pod-a: %v, want pod-b's two", got)
	}
	if err := ping(b, pa[1].Addr()); err == nil {
		t.Errorf("ping %s succeeded after DEL of pod-a", pa[1].Addr())
	}
	if err := n.runtime.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("allocations after GC with nothing valid: %v", got)
	}
}

// TestIPv6OnlyPods: on an IPv6-only node pods get an IPv6 address and route
// only, and reach each other and the gateway.
func TestIPv6OnlyPods(t *testing.T) {
	n := newNode(t, "")
	n.writeSubnetFile(dualStackFile("", "fd00:10:244:4::1/64"))
	a, b := nstest.New(t, "va").Path, nstest.New(t, "vb").Path
	ra, rb := n.add("pod-a", a), n.add("pod-b", b)
	pa, pb := podAddrs(t, ra, 1), podAddrs(t, rb, 1)
	if !pa[0].Addr().Is6() || pa[0] == pb[0] || len(ra.Routes) != 1 || ra.Routes[0].Dst.String() != "::/0" {
		t.Fatalf("IPv6-only results %v %v routes %v", pa, pb, ra.Routes)
	}
	nodeNL := handle(t, n.ns)
	br, err := nodeNL.LinkByName("cni0")
	if err != nil {
		t.Fatal(err)
	}
	if v4, _ := nodeNL.AddrList(br, netlink.FAMILY_V4); len(v4) != 0 || !hasAddr(t, nodeNL, "cni0", "fd00:10:244:4::1/64") {
		t.Errorf("cni0 addresses: IPv4 %v, and fd00:10:244:4::1/64 %v", v4, hasAddr(t, nodeNL, "cni0", "fd00:10:244:4::1/64"))
	}
	if br.Attrs().HardwareAddr.String() != "0a:58:00:00:00:01" {
		t.Errorf("cni0 MAC %s, want 0a:58 and the IPv6 gateway's last four bytes", br.Attrs().HardwareAddr)
	}
	checkBridgeLinkLocalUsable(t, nodeNL, br)
	if err := ping(a, pb[0].Addr()); err != nil {
		t.Errorf("ping %s -> %s: %v", pa[0], pb[0], err)
	}
	if err := ping(b, netip.MustParseAddr("fd00:10:244:4::1")); err != nil {
		t.Errorf("ping gateway: %v", err)
	}
	if err := n.runtime.CheckNetworkList(context.Background(), n.list, n.rt("pod-a", a)); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	n.del("pod-a", a)
	n.del("pod-b", b)
	if got := allocations(t, n); len(got) != 0 {
		t.Errorf("allocations after DELs: %v", got)
	}
}

// checkBridgeLinkLocalUsable waits for the bridge's link-local address
// (the kernel adds it once a port is up) and fails the test if it is
// tentative: until its DAD ends the node sends no neighbour solicitation on
// the bridge for the packets it forwards, and remote pods' first packets
// to a pod are lost.
func checkBridgeLinkLocalUsable(t *testing.T, nl netlinksafe.Handle, br netlink.Link) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		addrs, err := nl.AddrList(br, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() {
				if a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("%s's link-local address %s is tentative (DAD on the bridge)", br.Attrs().Name, a.IPNet)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no link-local address 3 s after its first pod: %v", br.Attrs().Name, addrs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
