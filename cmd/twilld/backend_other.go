//go:build !linux

package main

import (
	"fmt"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
)

// newKernelBackend fails: the kernel backends need Linux.
func newKernelBackend(node backend.Node, _ *slog.Logger, _ nodeBGP) (backend.Backend, error) {
	return nil, fmt.Errorf("backend %q needs Linux", node.Network.Backend.Type)
}
