//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package filelock

import (
	"errors"
	"fmt"
	"runtime"
)

// Lock fails where there is no flock.
func Lock(path string) (unlock func(), err error) {
	return nil, fmt.Errorf("lock %s: %w on %s", path, errors.ErrUnsupported, runtime.GOOS)
}
