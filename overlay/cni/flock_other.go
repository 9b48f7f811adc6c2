//go:build !unix

package cni

import "errors"

func flock(path string) (unlock func(), err error) {
	return nil, errors.New("lock " + path + ": file locks need a unix system")
}
