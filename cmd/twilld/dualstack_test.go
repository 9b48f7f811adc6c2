package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDualStackNodes: two twilld processes on a dual-stack network each
// lease an IPv4 and an IPv6 subnet under one flannel key, publish the
// --public-ipv6 address, and write both to their subnet files.
func TestDualStackNodes(t *testing.T) {
	c := newCluster(t)
	reg := c.registry()
	ctx := context.Background()
	if err := reg.PutNetworkConfig(ctx, []byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for i := range 2 {
		nodes = append(nodes, c.start(fmt.Sprintf("d%d", i+1), fmt.Sprintf("127.0.0.%d", 31+i), "--public-ipv6", fmt.Sprintf("fd00:56::%d", 31+i)))
	}
	v6 := map[string]bool{}
	for _, n := range nodes {
		f := n.waitReady(t)
		if !f.NodeSubnet().IsValid() || f.IPv6Network.String() != "fd00:10:244::/56" || f.IPv6NodeSubnet().Bits() != 64 || f.IPv6Gateway() != f.IPv6NodeSubnet().Addr().Next() {
			t.Errorf("%s subnet file %+v", n.name, f)
		}
		if v6[f.IPv6NodeSubnet().String()] {
			t.Errorf("%s got the IPv6 subnet %s twice", n.name, f.IPv6NodeSubnet())
		}
		v6[f.IPv6NodeSubnet().String()] = true
		key := reg.Prefix() + "/subnets/" + f.NodeSubnet().Addr().String() + "-24&" + f.IPv6NodeSubnet().Addr().String() + "-64"
		resp, err := reg.Client().Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: no lease at %s (%v)", n.name, key, err)
		}
		if v := string(resp.Kvs[0].Value); !strings.HasPrefix(v, `{"PublicIP":"`+n.ip+`","PublicIPv6":"fd00:56::`) {
			t.Errorf("%s: lease value %s", n.name, v)
		}
	}
	resp, err := reg.Client().Get(ctx, reg.Prefix()+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 2 {
		t.Errorf("etcd holds %d leases, want 2", resp.Count)
	}
	for _, n := range nodes {
		n.stop(t)
	}
}
