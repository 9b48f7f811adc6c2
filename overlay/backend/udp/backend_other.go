//go:build !linux

package udp

import (
	"context"
	"errors"
	"log/slog"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

var errUnsupported = errors.New("udp backend: needs Linux (TUN)")

// Backend is the udp backend; it works on Linux only.
type Backend struct{}

// New returns a udp backend that fails on this platform.
func New(backend.Node, *slog.Logger) (*Backend, error) { return &Backend{}, nil }

func (b *Backend) Type() string { return netconf.TypeUDP }
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	return backend.Prepared{}, errUnsupported
}
func (b *Backend) SetLease(context.Context, lease.Lease) error { return errUnsupported }
func (b *Backend) Handle(context.Context, []lease.Event) error { return errUnsupported }
func (b *Backend) Run(context.Context) error                   { return errUnsupported }
func (b *Backend) Status() backend.Status                      { return backend.Status{} }
func (b *Backend) Cleanup(context.Context) error               { return errUnsupported }
