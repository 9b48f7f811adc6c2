// Package namespace runs code inside a Linux network namespace: on an OS
// thread of its own that enters the namespace, runs the function and goes
// back. Devices and sockets made there stay in the namespace; their file
// descriptors work from any goroutine afterwards.
//
// A goroutine that changes its thread's namespace must keep the thread
// locked, and a thread that cannot be put back must never run anything
// else: such a thread stays locked, so the Go runtime retires it with its
// goroutine. This package is the one place that does this; it must not grow
// anything else.
package namespace

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a thread inside the namespace ns.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to network namespace %s: %w", orig, err))
			return // the thread stays locked and ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DoPath runs fn inside the namespace whose file is path
// (/run/netns/NAME, /proc/PID/ns/net).
func DoPath(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return Do(ns, fn)
}

// DoName runs fn inside the named namespace (/run/netns/NAME, as
// `ip netns add NAME` makes it).
func DoName(name string, fn func() error) error {
	return DoPath("/run/netns/"+name, fn)
}
