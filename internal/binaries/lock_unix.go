//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package binaries

import (
	"fmt"
	"os"
	"syscall"
)

// lock takes an exclusive lock on path, creating it; the returned function
// releases it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
