// Package alloc is the backend that only leases a subnet and carries no
// traffic, as flannel's alloc backend: for clusters where something else
// routes pod subnets, and for testing the control plane alone.
package alloc

import (
	"context"
	"sync"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Backend leases and does nothing else.
type Backend struct {
	node backend.Node

	mu    sync.Mutex
	peers map[string]backend.PeerStatus
}

// New returns an alloc backend for node.
func New(node backend.Node) *Backend {
	return &Backend{node: node, peers: map[string]backend.PeerStatus{}}
}

// Type is "alloc".
func (b *Backend) Type() string { return netconf.TypeAlloc }

// Prepare publishes no backend data; pods get the underlay MTU.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	mtu := b.node.IfaceMTU
	if b.node.Network != nil && b.node.Network.Backend.MTU != 0 {
		mtu = b.node.Network.Backend.MTU
	}
	if mtu == 0 {
		mtu = 1500
	}
	// lo's MTU is 65536, one more than an IPv4 packet can be.
	mtu = min(mtu, 65535)
	return backend.Prepared{MTU: mtu}, nil
}

// SetLease does nothing.
func (b *Backend) SetLease(context.Context, lease.Lease) error { return nil }

// Handle tracks the peers, so that status lists them.
func (b *Backend) Handle(_ context.Context, evs []lease.Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range evs {
		k := e.Lease.Subnet.String()
		if e.Type == lease.Expired {
			delete(b.peers, k)
			continue
		}
		b.peers[k] = backend.PeerStatus{Subnet: e.Lease.Subnet, PublicIP: e.Lease.Attrs.PublicIP}
	}
	return nil
}

// Run waits for ctx.
func (b *Backend) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Status lists the peers, with zero counters.
func (b *Backend) Status() backend.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := backend.Status{InSync: true}
	for _, p := range b.peers {
		st.Peers = append(st.Peers, p)
	}
	return st
}

// Cleanup has nothing to remove.
func (b *Backend) Cleanup(context.Context) error { return nil }
