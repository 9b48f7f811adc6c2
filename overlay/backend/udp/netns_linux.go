package udp

import (
	"fmt"
	"os"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

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
