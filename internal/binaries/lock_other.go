//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package binaries

// lock is a no-op where there is no flock: concurrent builds into one
// directory are left to go build.
func lock(string) (func(), error) { return func() {}, nil }
