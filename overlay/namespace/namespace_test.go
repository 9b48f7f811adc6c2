package namespace

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/vishvananda/netns"
)

func TestDoEntersAndReturns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	name := "twt-ns-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	want, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	here, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()

	var inside netns.NsHandle
	err = DoName(name, func() error {
		var err error
		inside, err = netns.Get()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(want) {
		t.Errorf("fn ran in %s, want the namespace %s", inside, name)
	}
	if inside.Equal(here) {
		t.Errorf("fn ran in the caller's namespace")
	}
	boom := errors.New("boom")
	if err := DoName(name, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := DoName("twt-no-such-namespace", func() error { return nil }); err == nil {
		t.Error("Do in a namespace that does not exist succeeded")
	}
}
