//go:build linux

package nft

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/twillnet/twill/overlay/namespace/nstest"
)

// benchPeers returns n /24 peer subnets of 10.0.0.0/8 (only rules are made
// for them; no traffic is sent).
func benchPeers(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte((i + 1) >> 8), byte(i + 1), 0}), 24)
	}
	return out
}

func benchTable(b *testing.B) *Table {
	ns := nstest.New(b, "bench").Name
	return New(slog.New(slog.NewTextHandler(io.Discard, nil)), InNetNS(nsFD(b, ns)))
}

func BenchmarkApply(b *testing.B) {
	const n = 1000
	rules := Rules{ClusterNetwork: netip.MustParsePrefix("10.0.0.0/8"), NodeSubnet: netip.MustParsePrefix("10.0.0.0/24"),
		Masquerade: true, Peers: benchPeers(n)}
	swapped := rules
	swapped.Peers = append(benchPeers(n-1), netip.MustParsePrefix("10.200.0.0/24"))

	b.Run("create-1000-peers", func(b *testing.B) {
		tbl := benchTable(b)
		for b.Loop() {
			if err := tbl.Apply(rules); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := tbl.Cleanup(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("unchanged-1000-peers", func(b *testing.B) {
		tbl := benchTable(b)
		if err := tbl.Apply(rules); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := tbl.Apply(rules); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-peer-swapped-1000-peers", func(b *testing.B) {
		tbl := benchTable(b)
		i := 0
		for b.Loop() {
			r := rules
			if i%2 == 1 {
				r = swapped
			}
			i++
			if err := tbl.Apply(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkCounters(b *testing.B) {
	const n = 1000
	tbl := benchTable(b)
	if err := tbl.Apply(Rules{ClusterNetwork: netip.MustParsePrefix("10.0.0.0/8"), Peers: benchPeers(n)}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		c, err := tbl.Counters()
		if err != nil {
			b.Fatal(err)
		}
		if len(c) != n {
			b.Fatalf("counters for %d peers, want %d", len(c), n)
		}
	}
}
