package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
)

// TestReserveAndLeasesBothFamilies runs config put, reserve, leases and
// unreserve against a real (embedded) etcd: a dual-stack reservation holds
// both halves, the table shows them, bad reservations are refused naming
// what is wrong, and an IPv6-only network takes an IPv6 reservation.
func TestReserveAndLeasesBothFamilies(t *testing.T) {
	srv, err := embedded.Start(embedded.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	run := func(prefix string, fn func(context.Context, []string, io.Writer) error, args ...string) (string, error) {
		var out bytes.Buffer
		err := fn(ctx, append([]string{"--etcd-endpoints", srv.ClientURL(), "--etcd-prefix", prefix}, args...), &out)
		return out.String(), err
	}
	put := func(prefix, config string) {
		t.Helper()
		path := filepath.Join(dir, strings.ReplaceAll(prefix, "/", "_")+".json")
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := run(prefix, runConfigPut, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Log(strings.TrimSpace(out))
	}
	reserve := func(prefix string, args ...string) (string, error) {
		return run(prefix, runReserve, args...)
	}
	leases := func(prefix string) string {
		t.Helper()
		out, err := run(prefix, runLeases)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	put("/dual", `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	out, err := reserve("/dual", "10.244.5.0/24", "fd00:10:244:5::/64", "192.168.56.15", "fd00:56::15")
	if err != nil || !strings.Contains(out, "reserved 10.244.5.0/24 fd00:10:244:5::/64 for 192.168.56.15") {
		t.Fatalf("reserve: %q %v", out, err)
	}
	table := leases("/dual")
	if !strings.Contains(table, "IPV6 SUBNET") || !strings.Contains(table, "10.244.5.0/24  fd00:10:244:5::/64  192.168.56.15  fd00:56::15") ||
		!strings.Contains(table, "reserved") {
		t.Errorf("leases:\n%s", table)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"10.244.6.0/24", "192.168.56.16"}, "IPV6-SUBNET missing: the network fd00:10:244::/56 needs a /64 IPv6 subnet"},
		{[]string{"10.244.6.0/24", "fd00:10:244:10::/60", "192.168.56.16"}, "IPV6-SUBNET fd00:10:244:10::/60: not a /64 subnet of the network fd00:10:244::/56"},
		{[]string{"fd00:10:244:6::/64", "10.244.6.0/24", "fd00:56::16"}, "PUBLIC-IP missing"},
		{[]string{"10.244.6.0/24", "fd00:10:244:6::1/64", "192.168.56.16"}, `SUBNET "fd00:10:244:6::1/64": has host bits set`},
		{[]string{"10.244.6.0/24", "10.244.7.0/24", "192.168.56.16"}, "a second IPv4 subnet"},
		{[]string{"10.244.6.0/24", "fd00:10:244:5::/64", "192.168.56.16"}, "subnet already leased"},
		{[]string{"10.244.6.0/24", "nonsense"}, `"nonsense": neither a subnet nor a public address`},
	} {
		if _, err := reserve("/dual", bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("reserve %v: %v, want an error saying %q", bad.args, err, bad.want)
		}
	}
	out, err = run("/dual", runUnreserve, "fd00:10:244:5::/64")
	if err != nil || !strings.Contains(out, "removed the reservation of 10.244.5.0/24 fd00:10:244:5::/64") {
		t.Errorf("unreserve by the IPv6 half: %q %v", out, err)
	}

	put("/v6", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	if _, err := reserve("/v6", "fd00:10:244:9::/64", "192.168.56.19"); err == nil || !strings.Contains(err.Error(), "PUBLIC-IPV6 missing") {
		t.Errorf("IPv6-only reservation without a public IPv6 address: %v", err)
	}
	if _, err := reserve("/v6", "10.244.9.0/24", "fd00:10:244:9::/64", "fd00:56::19"); err == nil || !strings.Contains(err.Error(), "SUBNET 10.244.9.0/24: the network has no IPv4 half") {
		t.Errorf("IPv4 subnet on an IPv6-only network: %v", err)
	}
	if out, err := reserve("/v6", "fd00:10:244:9::/64", "fd00:56::19"); err != nil || !strings.Contains(out, "reserved fd00:10:244:9::/64 for fd00:56::19") {
		t.Fatalf("IPv6-only reserve: %q %v", out, err)
	}
	if table := leases("/v6"); !strings.Contains(table, "-       fd00:10:244:9::/64  -          fd00:56::19") {
		t.Errorf("IPv6-only leases:\n%s", table)
	}

	put("/v4", `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	if _, err := reserve("/v4", "10.244.5.0/24", "192.168.56.15"); err != nil {
		t.Fatal(err)
	}
	if table := leases("/v4"); !strings.HasPrefix(table, "SUBNET         PUBLIC IP      NODE           BACKEND  EXPIRES\n10.244.5.0/24  192.168.56.15  192.168.56.15  vxlan    reserved\n") {
		t.Errorf("IPv4 leases table changed:\n%s", table)
	}
}
