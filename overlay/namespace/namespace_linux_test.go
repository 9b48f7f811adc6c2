package namespace_test

import (
	"errors"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"
)

func TestDoEntersAndReturns(t *testing.T) {
	ns := nstest.New(t, "")
	here, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()

	var inside netns.NsHandle
	err = namespace.DoName(ns.Name, func() error {
		var err error
		inside, err = netns.Get()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(ns.Handle()) {
		t.Errorf("fn ran in %s, want the namespace %s", inside, ns.Name)
	}
	if inside.Equal(here) {
		t.Errorf("fn ran in the caller's namespace")
	}
	boom := errors.New("boom")
	if err := namespace.DoName(ns.Name, func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := namespace.DoName("twt-no-such-namespace", func() error { return nil }); err == nil {
		t.Error("Do in a namespace that does not exist succeeded")
	}
}
