// Package nstest gives tests network namespaces of their own. New makes a
// named namespace (twt-<test binary>-<pid>-<n>[-<role>], unique to the run),
// with its loopback up, and deletes it when the test ends: passed, failed or
// stopped by t.Fatal or t.Skip. (*NS).Do runs a function inside it on a
// locked OS thread, through overlay/namespace. NeedRoot and NeedCommand skip
// a test that cannot build its namespaces, saying why.
//
// It must only create and delete the namespaces it named itself, must never
// move the calling thread into another namespace, and is for tests only.
// The package is Linux-only.
package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/overlay/namespace"
)

var seq atomic.Int32

// NeedRoot skips the test unless it runs as root; why says what the test
// does that needs it ("creates network namespaces and nftables tables").
func NeedRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: " + why)
	}
}

// NeedCommand skips the test unless the program name is on PATH; why says
// what the test uses it for.
func NeedCommand(tb testing.TB, name, why string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Skipf("needs the %s command: %s", name, why)
	}
}

// NS is a network namespace the test owns.
type NS struct {
	// Name is its name under /run/netns (what `ip -n` and
	// `ip netns exec` take); Path is its file, /run/netns/Name.
	Name, Path string
	h          netns.NsHandle
}

// New creates a namespace for the test, named after the test binary, the
// process and a counter, and role if not empty. It is deleted when the test
// ends; the test is skipped if not root.
func New(tb testing.TB, role string) *NS {
	tb.Helper()
	NeedRoot(tb, "creates network namespaces")
	name := fmt.Sprintf("twt-%s-%d-%d", binaryTag(), os.Getpid(), seq.Add(1))
	if role != "" {
		name += "-" + role
	}
	// NewNamed unshares the calling thread into the new namespace; Do's
	// locked thread goes back to where it was afterwards.
	here, err := netns.Get()
	if err != nil {
		tb.Fatalf("get the test's network namespace: %v", err)
	}
	defer here.Close()
	var h netns.NsHandle
	if err := namespace.Do(here, func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	}); err != nil {
		tb.Fatalf("create network namespace %s: %v", name, err)
	}
	n := &NS{Name: name, Path: "/run/netns/" + name, h: h}
	tb.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	nl := n.Netlink(tb)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("set lo up in %s: %v", name, err)
	}
	return n
}

// binaryTag is the test binary's name without .test ("kernel" for
// kernel.test), reduced to letters, digits and dashes.
func binaryTag() string {
	tag := strings.TrimSuffix(filepath.Base(os.Args[0]), ".test")
	tag = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return -1
	}, tag)
	if tag == "" {
		return "test"
	}
	return tag
}

// Handle is the namespace's handle, open until the test ends: for
// netlink.NewHandleAt, netlink's subscriptions or an fd-taking API.
func (n *NS) Handle() netns.NsHandle { return n.h }

// Netlink returns a netlink handle bound to the namespace, closed when the
// test ends.
func (n *NS) Netlink(tb testing.TB) *netlink.Handle {
	tb.Helper()
	nl, err := netlink.NewHandleAt(n.h)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	tb.Cleanup(nl.Close)
	return nl
}

// Do runs fn on an OS thread inside the namespace (overlay/namespace.Do):
// sockets and devices fn makes are made there.
func (n *NS) Do(fn func() error) error { return namespace.Do(n.h, fn) }
