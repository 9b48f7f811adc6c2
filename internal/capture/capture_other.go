//go:build !linux

package capture

import (
	"errors"
	"runtime"
)

// Frames needs Linux's packet sockets.
func Frames(ns, ifname string, during func() error) ([][]byte, error) {
	return nil, errors.New("capture: packet sockets need Linux, not " + runtime.GOOS)
}
