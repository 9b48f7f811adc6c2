package cni

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func alloc(t *testing.T, s *Store, subnet string, owner Attachment) netip.Addr {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	unlock, err := s.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	a, err := s.Allocate(p.Masked(), p.Addr(), owner)
	if err != nil {
		t.Fatalf("allocate for %s in %s: %v", owner, subnet, err)
	}
	return a
}

func TestStoreAllocateReleaseIdempotent(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "twill")
	if err != nil {
		t.Fatal(err)
	}
	a := Attachment{"c1", "eth0"}
	b := Attachment{"c2", "eth0"}
	a1 := alloc(t, s, "10.244.1.1/24", a)
	if a1 != netip.MustParseAddr("10.244.1.2") {
		t.Errorf("first address = %s, want 10.244.1.2 (gateway .1 excluded)", a1)
	}
	if again := alloc(t, s, "10.244.1.1/24", a); again != a1 {
		t.Errorf("second ADD for %s got %s, want %s", a, again, a1)
	}
	b1 := alloc(t, s, "10.244.1.1/24", b)
	if b1 == a1 {
		t.Fatalf("two owners share %s", a1)
	}
	owner, held, err := s.Owner(a1)
	if err != nil || !held || owner != a {
		t.Errorf("Owner(%s) = %v %v %v, want %v", a1, owner, held, err, a)
	}
	freed, err := s.Release(a)
	if err != nil || len(freed) != 1 || freed[0] != a1 {
		t.Errorf("Release(%s) = %v %v, want [%s]", a, freed, err, a1)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), a1.String())); !os.IsNotExist(err) {
		t.Errorf("allocation file for %s still there after release: %v", a1, err)
	}
	if freed, err := s.Release(Attachment{"unknown", "eth0"}); err != nil || len(freed) != 0 {
		t.Errorf("Release(unknown) = %v %v", freed, err)
	}
	// A new owner does not get the address just freed: allocation goes on
	// from the last one handed out.
	if c := alloc(t, s, "10.244.1.1/24", Attachment{"c3", "eth0"}); c == a1 || c == b1 {
		t.Errorf("new owner got %s, recently used", c)
	}
}

func TestStoreNewSubnetDoesNotReuseOld(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "twill")
	if err != nil {
		t.Fatal(err)
	}
	a := Attachment{"c1", "eth0"}
	old := alloc(t, s, "10.244.1.1/24", a)
	got := alloc(t, s, "10.244.7.1/24", a)
	if !netip.MustParsePrefix("10.244.7.0/24").Contains(got) {
		t.Errorf("after the subnet changed, %s got %s (old address %s)", a, got, old)
	}
	if _, held, _ := s.Owner(old); !held {
		t.Errorf("old-subnet allocation %s was dropped; it must stay until DEL or GC", old)
	}
	freed, _ := s.Release(a)
	if len(freed) != 2 {
		t.Errorf("Release freed %v, want both subnets' addresses", freed)
	}
}

func TestStoreExhaustion(t *testing.T) {
	s, err := OpenStore(t.TempDir(), "twill")
	if err != nil {
		t.Fatal(err)
	}
	// A /29 has 8 addresses: network, gateway, broadcast excluded leaves 5.
	seen := map[netip.Addr]bool{}
	for i := range 5 {
		seen[alloc(t, s, "10.244.1.1/29", Attachment{fmt.Sprint("c", i), "eth0"})] = true
	}
	if len(seen) != 5 {
		t.Fatalf("5 owners got %d distinct addresses", len(seen))
	}
	for _, bad := range []string{"10.244.1.0", "10.244.1.1", "10.244.1.7"} {
		if seen[netip.MustParseAddr(bad)] {
			t.Errorf("handed out %s", bad)
		}
	}
	unlock, _ := s.Lock()
	_, err = s.Allocate(netip.MustParsePrefix("10.244.1.0/29"), netip.MustParseAddr("10.244.1.1"), Attachment{"c9", "eth0"})
	unlock()
	if err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Errorf("allocation in a full subnet: err = %v, want no free address", err)
	}
}

// Separate Store values (as separate plugin processes have) allocating at
// once never share an address.
func TestStoreParallel(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	got := map[netip.Addr]Attachment{}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			s, err := OpenStore(dir, "twill")
			if err != nil {
				t.Error(err)
				return
			}
			owner := Attachment{fmt.Sprint("c", i), "eth0"}
			a := alloc(t, s, "10.244.3.1/24", owner)
			mu.Lock()
			defer mu.Unlock()
			if prev, dup := got[a]; dup {
				t.Errorf("%s given to %s and %s", a, prev, owner)
			}
			got[a] = owner
		})
	}
	wg.Wait()
	if len(got) != 60 {
		t.Errorf("60 owners got %d addresses", len(got))
	}
}

func TestHostRange(t *testing.T) {
	for _, tc := range []struct{ p, first, last string }{
		{"10.244.1.0/24", "10.244.1.1", "10.244.1.254"},
		{"10.244.0.0/16", "10.244.0.1", "10.244.255.254"},
		{"fd00::/120", "fd00::1", "fd00::ff"},
	} {
		f, l, ok := hostRange(netip.MustParsePrefix(tc.p))
		if !ok || f.String() != tc.first || l.String() != tc.last {
			t.Errorf("hostRange(%s) = %s %s %v, want %s %s", tc.p, f, l, ok, tc.first, tc.last)
		}
	}
	if _, _, ok := hostRange(netip.MustParsePrefix("10.0.0.0/31")); ok {
		t.Error("a /31 has no room for pods")
	}
}
