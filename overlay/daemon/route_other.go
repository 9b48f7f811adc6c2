//go:build !linux

package daemon

import "errors"

func defaultRouteInterface(v6 bool) (string, error) {
	return "", errors.New("finding the default route is only implemented on Linux")
}
