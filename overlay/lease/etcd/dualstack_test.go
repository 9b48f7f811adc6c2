package etcd_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

// TestLeaseBytesGolden: the keys and values twill writes for an IPv4, a
// dual-stack and an IPv6-only node are byte for byte those of
// testdata/twill-leases.golden, written by hand from flannel's format.
func TestLeaseBytesGolden(t *testing.T) {
	reg := newRegistry(t)
	ctx := leasetest.Context(t)
	v4 := leasetest.MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	dual := leasetest.MustConfig(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	v6 := leasetest.MustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	p4, p6 := netip.MustParsePrefix, netip.MustParsePrefix
	for _, req := range []lease.Request{
		{Config: v4, Previous: p4("10.244.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.11"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:11"}`)}},
		{Config: dual, Previous: p4("10.244.2.0/24"), PreviousIPv6: p6("fd00:10:244:2::/64"), Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.56.12"), PublicIPv6: netip.MustParseAddr("fd00:56::12"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:12"}`), BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:06:12"}`)}},
		{Config: v6, PreviousIPv6: p6("fd00:10:244:3::/64"), Attrs: lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00:56::13"), BackendType: "host-gw"}},
	} {
		req.TTL = time.Minute
		if _, err := lease.Acquire(ctx, reg, req); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := reg.Client().Get(ctx, reg.Prefix()+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	for _, kv := range resp.Kvs {
		got.WriteString(strings.TrimPrefix(string(kv.Key), reg.Prefix()+"/subnets/") + "\n" + string(kv.Value) + "\n")
	}
	golden, err := os.ReadFile("testdata/twill-leases.golden")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, line := range strings.SplitAfter(string(golden), "\n") {
		if !strings.HasPrefix(line, "#") {
			want.WriteString(line)
		}
	}
	if got.String() != want.String() {
		t.Errorf("etcd holds\n%s\nwant (testdata/twill-leases.golden)\n%s", got.String(), want.String())
	}
}

// TestFlannelDualStackLease: leases as a dual-stack and an IPv6-only flannel
// node write them (PublicIPv6 set, BackendV6Data, BackendData left out) are
// read with both halves, and a twill node racing for the same subnets gets
// others.
func TestFlannelDualStackLease(t *testing.T) {
	reg := newRegistry(t)
	ctx := leasetest.Context(t)
	cli := reg.Client()
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	written := map[string]string{
		"10.244.7.0-24&fd00:10:244:7::-64": `{"PublicIP":"192.168.56.17","PublicIPv6":"fd00:56::17","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f6"}}`,
		"0.0.0.0-0&fd00:10:244:9::-64":     `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:56::19","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f9"}}`,
	}
	for k, v := range written {
		if _, err := cli.Put(ctx, reg.Prefix()+"/subnets/"+k, v, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) != 2 {
		t.Fatalf("list: %v %v", leases, err)
	}
	v6only, dual := leases[0], leases[1]
	if dual.Subnet.String() != "10.244.7.0/24" || dual.IPv6Subnet.String() != "fd00:10:244:7::/64" ||
		dual.Attrs.PublicIP.String() != "192.168.56.17" || dual.Attrs.PublicIPv6.String() != "fd00:56::17" ||
		dual.Attrs.Backend() != "vxlan" || string(dual.Attrs.BackendV6Data) != `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f6"}` || dual.Reservation {
		t.Errorf("flannel's dual-stack lease read as %+v", dual)
	}
	if v6only.Subnet.IsValid() || v6only.IPv6Subnet.String() != "fd00:10:244:9::/64" || v6only.Attrs.PublicIP.IsValid() ||
		v6only.Attrs.PublicIPv6.String() != "fd00:56::19" || v6only.Attrs.BackendData != nil || v6only.Attrs.NodeName() != "fd00:56::19" {
		t.Errorf("flannel's IPv6-only lease read as %+v", v6only)
	}
	cfg := leasetest.MustConfig(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	mine, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: leasetest.DualStackAttrs("192.168.56.11", "fd00:56::11"), TTL: time.Minute,
		Previous: dual.Subnet, PreviousIPv6: v6only.IPv6Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if mine.Subnets().Shares(dual.Subnets()) || mine.Subnets().Shares(v6only.Subnets()) {
		t.Errorf("twill took a flannel node's subnet: %s", mine.Subnets())
	}
	// Twill's lease is at the key of both its halves, with a TTL.
	resp, err := cli.Get(ctx, reg.Prefix()+"/subnets/"+mine.Subnets().Key())
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("twill's lease not at %s: %v", mine.Subnets().Key(), err)
	}
}
