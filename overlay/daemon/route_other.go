//go:build !linux

package daemon

import "errors"

func defaultRouteInterface() (string, error) {
	return "", errors.New("finding the default route is only implemented on Linux")
}
