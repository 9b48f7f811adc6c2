package daemon_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/daemon"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// TestDualStackNode: on a dual-stack network the node leases a subnet of
// each family, publishes its public IPv6 address, writes both to its subnet
// file, hands peers' dual-stack leases to the backend, and a restart keeps
// both halves.
func TestDualStackNode(t *testing.T) {
	reg := newRegistry(t)
	ctx := context.Background()
	if err := reg.PutNetworkConfig(ctx, []byte(`{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.8.0",`+
		`"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Fatal(err)
	}
	peer := lease.Subnets{V4: netip.MustParsePrefix("10.244.7.0/24"), V6: netip.MustParsePrefix("fd00:10:244:7::/64")}
	pa := peerAttrs("192.168.56.12")
	pa.PublicIPv6 = netip.MustParseAddr("fd00:56::12")
	if _, err := reg.Create(ctx, peer, pa, time.Hour); err != nil {
		t.Fatal(err)
	}
	var subnetFile string
	run := func() lease.Lease {
		n := newNode(t, reg, func(c *daemon.Config) {
			c.PublicIPv6 = netip.MustParseAddr("fd00:56::11")
			if subnetFile != "" {
				c.SubnetFile = subnetFile
			}
		})
		subnetFile = n.cfg.SubnetFile
		n.start()
		own := n.waitReady().Lease
		waitFor(t, "the peer's lease handed to the backend", func() bool { return n.be.peerEvent(lease.Added, peer.V4) })
		_, evs, _ := n.be.record()
		if evs[0].Lease.IPv6Subnet != peer.V6 || evs[0].Lease.Attrs.PublicIPv6 != pa.PublicIPv6 {
			t.Errorf("peer event %+v, want its IPv6 half", evs[0].Lease)
		}
		n.stop()
		n.result()
		return own
	}
	own := run()
	if !own.Subnet.IsValid() || !own.IPv6Subnet.IsValid() || own.Attrs.PublicIPv6.String() != "fd00:56::11" || own.Attrs.PublicIP != publicIP {
		t.Fatalf("own lease %s %+v, want both halves and both public addresses", own.Subnets(), own.Attrs)
	}
	f, err := subnetfile.Read(subnetFile)
	if err != nil {
		t.Fatal(err)
	}
	if f.NodeSubnet() != own.Subnet || f.IPv6NodeSubnet() != own.IPv6Subnet || f.IPv6Network.String() != "fd00:10:244::/56" ||
		f.IPv6Gateway() != own.IPv6Subnet.Addr().Next() {
		t.Errorf("subnet file %+v for lease %s", f, own.Subnets())
	}
	// Gone from the store, the lease comes back from the subnet file; still
	// there, from the public IP.
	again := run()
	if again.Subnets() != own.Subnets() {
		t.Errorf("restart got %s, want %s", again.Subnets(), own.Subnets())
	}
	for _, l := range mustList(t, reg) {
		if l.Attrs.SameNode(own.Attrs) {
			if err := reg.Delete(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
	}
	if back := run(); back.Subnets() != own.Subnets() {
		t.Errorf("after the lease was deleted, the subnet file gave %s, want %s", back.Subnets(), own.Subnets())
	}
}

func mustList(t *testing.T, reg lease.Registry) []lease.Lease {
	t.Helper()
	ls, _, err := reg.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// TestIPv6OnlyNode: on an IPv6-only network a node with no public IPv4
// address leases an IPv6 subnet, writes an IPv6-only subnet file, and
// tells IPv6-only peers apart (their leases have no IPv4 half). Without a
// public IPv6 address it refuses to start, naming the flag.
func TestIPv6OnlyNode(t *testing.T) {
	reg := newRegistry(t)
	ctx := context.Background()
	if err := reg.PutNetworkConfig(ctx, []byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Fatal(err)
	}
	peers := []lease.Subnets{{V6: netip.MustParsePrefix("fd00:10:244:7::/64")}, {V6: netip.MustParsePrefix("fd00:10:244:8::/64")}}
	for i, p := range peers {
		if _, err := reg.Create(ctx, p, lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00:56::" + string(rune('a'+i))), BackendType: "alloc"}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	v6uplink := func() (backend.Node, error) { return backend.Node{Iface: "twill-none0", IfaceMTU: 1500}, nil }
	n := newNode(t, reg, func(c *daemon.Config) { c.FindUplink = v6uplink; c.PublicIPv6 = netip.MustParseAddr("fd00:56::11") })
	n.start()
	snap := n.waitReady()
	own := snap.Lease
	if own.Subnet.IsValid() || !own.IPv6Subnet.IsValid() || own.Attrs.PublicIP.IsValid() {
		t.Fatalf("own lease %s %+v", own.Subnets(), own.Attrs)
	}
	if c := snap.Checks[0]; c.Name != "lease-held" || !c.OK || !strings.HasPrefix(c.Detail, own.IPv6Subnet.String()+" until ") {
		t.Errorf("check %+v, want the IPv6 lease held", c)
	}
	waitFor(t, "both peers handed to the backend", func() bool {
		_, evs, _ := n.be.record()
		return len(evs) == 2 && evs[0].Lease.IPv6Subnet != evs[1].Lease.IPv6Subnet
	})
	data, err := os.ReadFile(n.cfg.SubnetFile)
	want := "TWILL_IPV6_NETWORK=fd00:10:244::/56\nTWILL_IPV6_SUBNET=" + own.IPv6Subnet.Addr().Next().String() + "/64\nTWILL_MTU=1400\nTWILL_IPMASQ=false\n"
	if err != nil || string(data) != want {
		t.Errorf("subnet file %q (%v), want %q", data, err, want)
	}

	bare := newNode(t, reg, func(c *daemon.Config) { c.FindUplink = v6uplink })
	bare.start()
	if err := bare.result(); err == nil || !strings.Contains(err.Error(), "--public-ipv6") {
		t.Errorf("an IPv6-only node without a public IPv6 address: %v, want an error naming --public-ipv6", err)
	}
}

// TestIPv4NetworkNeedsAnIPv4Uplink: an uplink without an IPv4 address
// (found on an IPv6-only host) does not do for an IPv4 network.
func TestIPv4NetworkNeedsAnIPv4Uplink(t *testing.T) {
	n := newNode(t, newRegistry(t), func(c *daemon.Config) {
		c.FindUplink = func() (backend.Node, error) { return backend.Node{Iface: "v6up0", IfaceMTU: 1500}, nil }
	})
	n.start()
	if err := n.result(); err == nil || !strings.Contains(err.Error(), `the uplink "v6up0" has no IPv4 address: set --public-ip or --iface`) {
		t.Errorf("Run = %v, want it to say the uplink has no IPv4 address", err)
	}
	if ls := mustList(t, n.reg); len(ls) != 0 {
		t.Errorf("leases %v after a refused start", ls)
	}
}

// TestBadIfaceRegexRefusedAtOnce: the uplink is chosen only after the
// network config is read, but a regular expression that does not compile
// is refused by New, before the daemon waits for anything.
func TestBadIfaceRegexRefusedAtOnce(t *testing.T) {
	cfg := daemon.Config{Registry: newRegistry(t), NewBackend: func(backend.Node, *slog.Logger) (backend.Backend, error) { return nil, nil },
		SubnetFile: filepath.Join(t.TempDir(), "subnet.env"), SubnetLeaseTTL: time.Hour, RenewMargin: time.Minute,
		IfaceRegex: []string{"^eth", "eth[0-"}}
	_, err := daemon.New(cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), `--iface-regex "eth[0-": error parsing regexp`) || strings.Contains(err.Error(), `"^eth"`) {
		t.Errorf("New = %v, want it to name the bad --iface-regex alone", err)
	}
}
