package nstest

import (
	"errors"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/vishvananda/netns"
)

// TestNew: the namespace is named for this run, is not the test's own,
// has its loopback up, runs Do inside it, and is gone once the test that
// made it ends (a t.Cleanup: it runs also when the test failed).
func TestNew(t *testing.T) {
	NeedRoot(t, "creates network namespaces")
	here, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()

	var name string
	t.Run("inner", func(t *testing.T) {
		n := New(t, "probe")
		name = n.Name
		want := `^twt-nstest-` + strconv.Itoa(os.Getpid()) + `-[0-9]+-probe$`
		if !regexp.MustCompile(want).MatchString(n.Name) || n.Path != "/run/netns/"+n.Name {
			t.Errorf("name %q, path %q; want a name matching %s under /run/netns", n.Name, n.Path, want)
		}
		if _, err := os.Stat(n.Path); err != nil {
			t.Errorf("namespace file: %v", err)
		}
		if n.Handle().Equal(here) {
			t.Fatal("New returned the test's own namespace")
		}
		var inside netns.NsHandle
		if err := n.Do(func() error {
			var err error
			inside, err = netns.Get()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer inside.Close()
		if !inside.Equal(n.Handle()) {
			t.Errorf("Do ran in %s, want %s", inside, n.Name)
		}
		boom := errors.New("boom")
		if err := n.Do(func() error { return boom }); !errors.Is(err, boom) {
			t.Errorf("Do returned %v, want fn's error", err)
		}
		lo, err := n.Netlink(t).LinkByName("lo")
		if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("lo in %s: %v, err %v; want it up", n.Name, lo, err)
		}
		after, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer after.Close()
		if !after.Equal(here) {
			t.Errorf("the test's thread moved to %s", after)
		}
	})
	if name == "" {
		t.Fatal("the subtest made no namespace")
	}
	if _, err := os.Stat("/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s left after its test ended (stat: %v)", name, err)
	}
}
