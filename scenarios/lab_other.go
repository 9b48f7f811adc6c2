//go:build !linux

package scenarios

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/twillnet/twill/vmtest"
)

// lab cannot bring up a lab here: labs are network namespaces (and VMs on
// a bridge in one) of a Linux host. A running cluster can still be played
// on (Runner.Cluster: the vagrant driver).
func (r *Runner) lab(context.Context, vmtest.Spec, *Scenario, *slog.Logger) (vmtest.Cluster, func() error, error) {
	return nil, nil, fmt.Errorf("a %s lab: %w on %s (labs need Linux; play on a running Vagrant cluster with --driver vagrant)", r.Driver, errors.ErrUnsupported, runtime.GOOS)
}
