//go:build !linux

package nft

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
)

var errUnsupported = errors.New("nftables: only on linux")

// Table is the twill nftables table; it exists only on Linux.
type Table struct{}

// Option configures a Table.
type Option func(*Table)

// IPv6 is accepted and ignored.
func IPv6() Option { return func(*Table) {} }

// InNetNS is accepted and ignored: there are no network namespaces here.
func InNetNS(fd int) Option { return func(*Table) {} }

// New returns a Table whose methods all fail: nftables is Linux-only.
func New(log *slog.Logger, opts ...Option) *Table { return &Table{} }

// Apply fails: nftables is Linux-only.
func (t *Table) Apply(r Rules) error { return errUnsupported }

// Counters fails: nftables is Linux-only.
func (t *Table) Counters() (map[netip.Prefix]PeerCounters, error) { return nil, errUnsupported }

// Tunnel fails: nftables is Linux-only.
func (t *Table) Tunnel() (TunnelCounters, error) { return TunnelCounters{}, errUnsupported }

// Watch fails: nftables is Linux-only.
func (t *Table) Watch(context.Context, func()) error { return errUnsupported }

// Cleanup fails: nftables is Linux-only.
func (t *Table) Cleanup() error { return errUnsupported }
