package kube_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/kube"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

// These tests play a hostile or broken cluster against the registry, on a
// real kube-apiserver: Nodes an operator or a broken IPAM got wrong, and
// annotations written to do harm.

// eventually polls cond until it says "" or the time is up.
func eventually(t *testing.T, within time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchPeers registers the own node with podCIDR cidr and watches the
// peers through its registry until the test ends.
func watchPeers(t *testing.T, c kubernetes.Interface, own, cidr string) (*kube.Registry, *logBuffer, *lease.Watcher, *leasetest.Collector) {
	t.Helper()
	createNode(t, c, own, cidr, nil)
	reg, logs := newRegistry(t, c, own, "", netConfJSON)
	col := &leasetest.Collector{}
	w := &lease.Watcher{Registry: reg}
	ctx, stop := context.WithCancel(leasetest.Context(t))
	done := make(chan struct{})
	go func() { w.Run(ctx, col.Handle); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	return reg, logs, w, col
}

// routedTo is the node the watcher knows subnet s by, "" if none.
func routedTo(w *lease.Watcher, s string) string {
	for _, l := range w.Leases() {
		if l.Subnet.String() == s {
			return l.Attrs.NodeName()
		}
	}
	return ""
}

func refusedText(reg *kube.Registry) string {
	var b strings.Builder
	for _, f := range reg.Refused() {
		fmt.Fprintf(&b, "%s %s: %s\n", f.Lease.Subnets(), f.Lease.Attrs.NodeName(), f.Reason)
	}
	return b.String()
}

// Two Nodes with the same podCIDR: the older Node is routed, whatever the
// newer one's name and however often either changes (no flapping); the
// newer is refused, naming both nodes and the CIDR, and logged once. The
// newer gone, the refusal goes and the older stays, without a gap; a
// newer again and the older gone, the newer takes the subnet over (a
// change, not a removal).
func TestDuplicatePodCIDR(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	reg, logs, w, col := watchPeers(t, c, "dup-own", "10.244.60.0/24")

	const cidr = "10.244.61.0/24"
	createNode(t, c, "dup-old", cidr, flannelAnnotations(p, "192.168.56.61", "02:00:00:00:00:61"))
	col.Wait(t, 1, 10*time.Second)
	time.Sleep(1100 * time.Millisecond) // creation times are in seconds
	// Its name sorts first: only its age may lose it the subnet.
	createNode(t, c, "dup-a-new", cidr, flannelAnnotations(p, "192.168.56.62", "02:00:00:00:00:62"))
	eventually(t, 10*time.Second, func() string {
		if len(reg.Refused()) != 1 {
			return "the newer Node with the same podCIDR is not refused: " + refusedText(reg)
		}
		return ""
	})
	for i := range 3 {
		patchNode(t, c, "dup-a-new", fmt.Sprintf(`{"metadata":{"annotations":{%q:"{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:01:%02d\"}"}}}`, p+"/backend-data", i))
		patchNode(t, c, "dup-old", fmt.Sprintf(`{"metadata":{"labels":{"round":"%d"}}}`, i))
	}
	patchNode(t, c, "dup-old", `{"metadata":{"annotations":{"`+p+`/backend-data":"{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:6f\"}"}}}`)
	col.Wait(t, 2, 10*time.Second) // dup-old's change
	time.Sleep(300 * time.Millisecond)
	if got := routedTo(w, cidr); got != "dup-old" {
		t.Errorf("%s is known as %q's, want the older dup-old's", cidr, got)
	}
	for _, e := range col.Wait(t, 2, time.Second) {
		if e.Lease.Attrs.NodeName() == "dup-a-new" {
			t.Errorf("an event delivered the refused node: %s", leasetest.Describe([]lease.Event{e}))
		}
	}
	txt := refusedText(reg)
	for _, want := range []string{cidr + " dup-a-new", `"dup-a-new"`, `"dup-old"`, "spec.podCIDRs " + cidr, "older"} {
		if !strings.Contains(txt, want) {
			t.Errorf("refusal %q does not say %q", txt, want)
		}
	}
	if n := strings.Count(logs.String(), "two nodes claim one pod CIDR"); n != 1 {
		t.Errorf("the conflict was logged %d times, want once:\n%s", n, logs)
	}

	// Fixed by deleting the newer: the refusal goes, the older stays.
	if err := c.CoreV1().Nodes().Delete(ctx, "dup-a-new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string {
		if txt := refusedText(reg); txt != "" {
			return "refused after the newer Node was deleted: " + txt
		}
		return ""
	})
	time.Sleep(200 * time.Millisecond)
	if got := routedTo(w, cidr); got != "dup-old" {
		t.Errorf("after the newer Node was deleted, %s is known as %q's", cidr, got)
	}
	// A newer one again, then the older deleted: the newer takes over.
	time.Sleep(1100 * time.Millisecond)
	createNode(t, c, "dup-z-newer", cidr, flannelAnnotations(p, "192.168.56.63", "02:00:00:00:00:63"))
	eventually(t, 10*time.Second, func() string {
		if !strings.Contains(refusedText(reg), "dup-z-newer") {
			return "dup-z-newer not refused: " + refusedText(reg)
		}
		return ""
	})
	if err := c.CoreV1().Nodes().Delete(ctx, "dup-old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string {
		if got := routedTo(w, cidr); got != "dup-z-newer" {
			return fmt.Sprintf("after the older Node was deleted %s is known as %q's, want dup-z-newer's", cidr, got)
		}
		return ""
	})
	if txt := refusedText(reg); txt != "" {
		t.Errorf("still refused: %s", txt)
	}
	evs := col.Wait(t, 3, time.Second)
	got := leasetest.Describe(evs)
	if want := "added " + cidr + " dup-old; changed " + cidr + " dup-old; changed " + cidr + " dup-z-newer; "; got != want {
		t.Errorf("events\n%s\nwant\n%s", got, want)
	}
}

// The own node's podCIDR refused, naming the field and the value: of
// another size than the config's SubnetLen (permanent: a podCIDR does not
// change); the same as an older Node's that publishes a lease (it waits,
// unannotated, and comes up once that Node is gone).
func TestOwnPodCIDRRefused(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	cfg := leasetest.MustConfig(t, netConfJSON)

	createNode(t, c, "size-1", "10.244.70.0/25", nil)
	reg, _ := newRegistry(t, c, "size-1", "", netConfJSON)
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: cfg, Attrs: vxlanAttrs("192.168.56.70"), TTL: time.Hour}}
	_, err := k.Acquire(ctx)
	if err == nil || !lease.IsPermanent(err) {
		t.Fatalf("a /25 podCIDR in a network of /24 subnets: %v, want a permanent error", err)
	}
	for _, want := range []string{`"size-1"`, "spec.podCIDRs", "10.244.70.0/25", "SubnetLen", "24"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}

	const cidr = "10.244.71.0/24"
	createNode(t, c, "clash-old", cidr, flannelAnnotations(kube.DefaultPrefix, "192.168.56.71", "02:00:00:00:00:71"))
	time.Sleep(1100 * time.Millisecond)
	createNode(t, c, "clash-new", cidr, nil)
	reg2, logs := newRegistry(t, c, "clash-new", "", netConfJSON)
	k2 := &lease.Keeper{Registry: reg2, Request: lease.Request{Config: cfg, Attrs: vxlanAttrs("192.168.56.72"), TTL: time.Hour},
		Log: slog.New(slog.NewTextHandler(logs, nil))}
	got := acquireLater(t, ctx, k2)
	eventually(t, 10*time.Second, func() string {
		if k2.Pending() == "" {
			return "no wait for the clashing podCIDR"
		}
		return ""
	})
	for _, want := range []string{`"clash-new"`, "spec.podCIDRs " + cidr, `"clash-old"`, "older"} {
		if !strings.Contains(k2.Pending(), want) {
			t.Errorf("Pending() = %q; want it to say %q", k2.Pending(), want)
		}
	}
	select {
	case l := <-got:
		t.Fatalf("acquired %v, the older Node's podCIDR", l.Subnets())
	case <-time.After(time.Second):
	}
	if a := getNode(t, c, "clash-new").Annotations; a[kube.DefaultPrefix+"/kube-subnet-manager"] != "" {
		t.Errorf("the refused node was annotated: %v", a)
	}
	if err := c.CoreV1().Nodes().Delete(ctx, "clash-old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if l.Subnet.String() != cidr {
			t.Errorf("lease %v, want %s", l.Subnets(), cidr)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no lease 15 s after the older Node was deleted; pending %q", k2.Pending())
	}
}

// Annotations written to do harm: a public-ip that is markup, not an
// address, or an address no node can have (unspecified, loopback,
// multicast, link-local); a backend-data just under the API server's 256
// KiB. Each Node is skipped, the reason logged once however often the Node
// changes, and no log line quotes more than a few bytes of a value.
func TestHostileAnnotations(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	createNode(t, c, "hostile-own", "10.244.90.0/24", nil)
	reg, logs := newRegistry(t, c, "hostile-own", "", netConfJSON)

	big := `{"VNI":1,"VtepMAC":"02:00:00:00:00:99","pad":"` + strings.Repeat("A", 250*1024) + `"}`
	cases := []struct {
		name, key, value, reason string
	}{
		{"h-markup", "public-ip", "<script>alert(1)</script>\x1b[2J", `not an IPv4 address`},
		{"h-unspec", "public-ip", "0.0.0.0", "the unspecified address"},
		{"h-loop", "public-ip", "127.0.0.1", "a loopback address"},
		{"h-mcast", "public-ip", "224.0.0.5", "a multicast address"},
		{"h-link", "public-ip", "169.254.10.1", "a link-local address"},
		{"h-big", "backend-data", big, "bytes, more than the 4096 twill reads"},
		{"h-type", "backend-type", strings.Repeat("x", 300), "300 bytes, more than the 256"},
	}
	for i, tc := range cases {
		ann := flannelAnnotations(p, fmt.Sprintf("192.168.56.%d", 91+i), fmt.Sprintf("02:00:00:00:00:%02x", 0x91+i))
		ann[p+"/"+tc.key] = tc.value
		createNode(t, c, tc.name, fmt.Sprintf("10.244.%d.0/24", 91+i), ann)
	}
	createNode(t, c, "h-fine", "10.244.99.0/24", flannelAnnotations(p, "192.168.56.99", "02:00:00:00:00:99"))
	eventually(t, 10*time.Second, func() string {
		ls, _, err := reg.List(ctx)
		if err != nil || len(ls) != 1 || ls[0].Attrs.NodeName() != "h-fine" {
			return fmt.Sprintf("listed %v (%v), want h-fine's lease only", ls, err)
		}
		for _, tc := range cases {
			if !strings.Contains(logs.String(), tc.name) {
				return "no log of " + tc.name + " yet"
			}
		}
		return ""
	})
	// Status updates of the big one come and go: logged once.
	for i := range 3 {
		patchNode(t, c, "h-big", fmt.Sprintf(`{"metadata":{"labels":{"round":"%d"}}}`, i))
	}
	time.Sleep(500 * time.Millisecond)
	out := logs.String()
	for _, tc := range cases {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "node="+tc.name+" ") {
				if line != "" {
					t.Errorf("%s logged twice:\n%s\n%s", tc.name, line, l)
				}
				line = l
			}
		}
		if !strings.Contains(line, tc.reason) || !strings.Contains(line, tc.key) {
			t.Errorf("%s: log %q does not say %q naming %s", tc.name, line, tc.reason, tc.key)
		}
		if len(line) > 1024 {
			t.Errorf("%s: a log line of %d bytes", tc.name, len(line))
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("the log carries raw control characters:\n%q", out)
	}
	if len(out) > 16*1024 {
		t.Errorf("%d bytes of log for %d hostile Nodes", len(out), len(cases))
	}
	// Fixed, a node is read again.
	patchNode(t, c, "h-loop", `{"metadata":{"annotations":{"`+p+`/public-ip":"192.168.56.123"}}}`)
	eventually(t, 10*time.Second, func() string {
		ls, _, _ := reg.List(ctx)
		for _, l := range ls {
			if l.Attrs.NodeName() == "h-loop" && l.Attrs.PublicIP == netip.MustParseAddr("192.168.56.123") {
				return ""
			}
		}
		return "h-loop not read after its public-ip was fixed"
	})
}

// A Node deleted and registered again under its name with another podCIDR:
// the old subnet goes, the new one comes, in that order.
func TestNodeRecreatedWithAnotherPodCIDR(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	_, _, w, col := watchPeers(t, c, "re-own", "10.244.100.0/24")
	createNode(t, c, "re-1", "10.244.101.0/24", flannelAnnotations(p, "192.168.56.101", "02:00:00:00:01:01"))
	col.Wait(t, 1, 10*time.Second)
	if err := c.CoreV1().Nodes().Delete(ctx, "re-1", metav1.DeleteOptions{}); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	createNode(t, c, "re-1", "10.244.102.0/24", flannelAnnotations(p, "192.168.56.101", "02:00:00:00:01:01"))
	evs := col.Wait(t, 3, 10*time.Second)
	if got, want := leasetest.Describe(evs), "added 10.244.101.0/24 re-1; expired 10.244.101.0/24 re-1; added 10.244.102.0/24 re-1; "; got != want {
		t.Errorf("events\n%s\nwant\n%s", got, want)
	}
	if got := routedTo(w, "10.244.101.0/24"); got != "" {
		t.Errorf("the old podCIDR is still known as %q's", got)
	}
}

// Nodes with a backend-data annotation just under the API server's 256
// KiB: the registry's informer does not keep them. Twenty such Nodes are
// 5 MiB of annotations; the heap the registry holds after listing them
// grows by a small part of that (printed), since the informer keeps each
// oversized value as its first bytes and its size.
func TestLargeAnnotationsNotKept(t *testing.T) {
	c, _ := admin(t)
	ctx := leasetest.Context(t)
	p := kube.DefaultPrefix
	const nodes, size = 20, 250 * 1024
	createNode(t, c, "large-own", "10.244.110.0/24", nil)
	for i := range nodes {
		ann := flannelAnnotations(p, fmt.Sprintf("192.168.56.%d", 111+i), fmt.Sprintf("02:00:00:00:01:%02x", i))
		ann[p+"/backend-data"] = `{"VNI":1,"pad":"` + strings.Repeat("B", size) + `"}`
		createNode(t, c, fmt.Sprintf("large-%02d", i), fmt.Sprintf("10.244.%d.0/24", 111+i), ann)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	reg, logs := newRegistry(t, c, "large-own", "", netConfJSON)
	if _, _, err := reg.List(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string {
		if n := strings.Count(logs.String(), "more than the 4096 twill reads"); n != nodes {
			ls, _, err := reg.List(ctx)
			return fmt.Sprintf("%d of %d large Nodes refused; listed %d (%v); log:\n%s", n, nodes, len(ls), err, logs)
		}
		return ""
	})
	grew := int64(heap()) - int64(before)
	t.Logf("%d Nodes with %d KiB of backend-data each (%d KiB in all): the registry's heap grew %d KiB; %d bytes of log",
		nodes, size/1024, nodes*size/1024, grew/1024, len(logs.String()))
	if grew > nodes*size/2 {
		t.Errorf("the registry holds %d KiB after listing %d KiB of annotations: the values are kept", grew/1024, nodes*size/1024)
	}
	runtime.KeepAlive(reg)
}
