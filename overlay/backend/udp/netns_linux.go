package udp

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetNS runs fn on an OS thread that has entered the namespace ns, so that
// the devices and sockets fn creates live there; their file descriptors work
// from any goroutine afterwards. A thread that cannot be switched back is
// never unlocked, so the runtime retires it with its goroutine.
func inNetNS(ns netns.NsHandle, fn func() error) error {
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

// currentNetNS returns a new handle to the namespace of the process's
// threads (taken on a locked thread, so a goroutine that switched its own
// thread elsewhere cannot leak it in).
func currentNetNS() (netns.NsHandle, error) {
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return netns.None(), fmt.Errorf("open the process's network namespace: %w", err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return netns.None(), fmt.Errorf("duplicate network namespace handle: %w", err)
	}
	unix.CloseOnExec(fd)
	return netns.NsHandle(fd), nil
}
