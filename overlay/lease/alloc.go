package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/twillnet/twill/overlay/netconf"
)

// ExhaustedError says that no subnet of the network is free.
type ExhaustedError struct {
	Network  netip.Prefix
	Subnets  int // leasable subnets, SubnetMin..SubnetMax
	Leased   int // of those, held by a lease with a TTL
	Reserved int // of those, held by a reservation
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("no free subnet in network %s: %d leasable subnets, %d leased, %d reserved",
		e.Network, e.Subnets, e.Leased, e.Reserved)
}

// Request is what a node asks for when it acquires a lease.
type Request struct {
	Config *netconf.Config
	Attrs  Attrs
	TTL    time.Duration
	// Previous is the subnet the node held before (from its subnet file); it
	// gets it back if no lease carries the node's public IP and it is free.
	Previous netip.Prefix
}

// maxCollisions bounds how often Acquire retries after losing a race for a
// subnet. Every lost race is a subnet won by another node, so it is only
// reached when many more nodes than subnets race.
const maxCollisions = 1000

// Acquire gets a lease for the node, in this order of preference:
//  1. the lease or reservation that carries the node's public IP (a restart),
//     renewed with the node's new attributes;
//  2. req.Previous, if it is still leasable and free;
//  3. a random free subnet.
//
// A registry that assigns subnets itself (an Assigner: Kubernetes) is asked
// for the node's subnet instead.
//
// Every creation is a compare-and-swap in the registry, so however many nodes
// race, no two hold one subnet. When the network is full the error is an
// *ExhaustedError.
func Acquire(ctx context.Context, reg Registry, req Request) (Lease, error) {
	l, _, err := acquire(ctx, reg, req)
	return l, err
}

// acquire is Acquire, and says whether the lease was created (2 or 3) rather
// than taken over (1).
func acquire(ctx context.Context, reg Registry, req Request) (Lease, bool, error) {
	if req.Config == nil || !req.Attrs.PublicIP.IsValid() {
		return Lease{}, false, errors.New("acquire lease: need a network config and a public IP")
	}
	if a, ok := reg.(Assigner); ok {
		l, err := a.Claim(ctx, req)
		return l, false, err
	}
	cfg := req.Config
	for collisions := 0; collisions < maxCollisions; {
		leases, _, err := reg.List(ctx)
		if err != nil {
			return Lease{}, false, fmt.Errorf("acquire lease: list leases: %w", err)
		}

		// 1. A lease or reservation of ours.
		mine, stale := findByPublicIP(leases, req.Attrs.PublicIP, cfg)
		for _, l := range stale {
			// A lease of ours outside the current config (the network
			// changed): release it so that it does not linger.
			if err := reg.Delete(ctx, l); err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrNotFound) {
				return Lease{}, false, fmt.Errorf("acquire lease: release stale lease %s: %w", l.Subnet, err)
			}
		}
		if mine != nil {
			ttl := req.TTL
			if mine.Reservation {
				ttl = 0
			}
			l, err := reg.Update(ctx, *mine, req.Attrs, ttl)
			if errors.Is(err, ErrLeaseLost) {
				collisions++
				continue
			}
			if err != nil {
				return Lease{}, false, fmt.Errorf("acquire lease: renew %s: %w", mine.Subnet, err)
			}
			return l, false, nil
		}

		taken := make(map[netip.Prefix]bool, len(leases))
		leased, reserved := 0, 0
		for _, l := range leases {
			taken[l.Subnet] = true
			if cfg.Leasable(l.Subnet) {
				if l.Reservation {
					reserved++
				} else {
					leased++
				}
			}
		}

		// 2. The subnet we had before, if still free.
		want := netip.Prefix{}
		if req.Previous.IsValid() && cfg.Leasable(req.Previous) && !taken[req.Previous] {
			want = req.Previous
		} else {
			// 3. A random free one.
			n := cfg.SubnetCount()
			if leased+reserved >= n {
				return Lease{}, false, &ExhaustedError{Network: cfg.Network, Subnets: n, Leased: leased, Reserved: reserved}
			}
			start := rand.IntN(n)
			for i := range n {
				s := cfg.Subnet((start + i) % n)
				if !taken[s] {
					want = s
					break
				}
			}
		}
		l, err := reg.Create(ctx, want, req.Attrs, req.TTL)
		if errors.Is(err, ErrExists) {
			collisions++
			continue
		}
		if err != nil {
			return Lease{}, false, fmt.Errorf("acquire lease: create %s: %w", want, err)
		}
		return l, true, nil
	}
	return Lease{}, false, fmt.Errorf("acquire lease in %s: lost the race for a subnet %d times", cfg.Network, maxCollisions)
}

// findByPublicIP returns the lease that carries ip and fits cfg (a
// reservation first), and the leases with a TTL that carry ip but no longer
// fit cfg. A reservation need only lie in the network with the right length;
// it may sit outside SubnetMin..SubnetMax, which bound only allocation.
func findByPublicIP(leases []Lease, ip netip.Addr, cfg *netconf.Config) (mine *Lease, stale []Lease) {
	for i := range leases {
		l := &leases[i]
		if l.Attrs.PublicIP != ip {
			continue
		}
		fits := cfg.Leasable(l.Subnet)
		if l.Reservation {
			fits = l.Subnet.Bits() == cfg.SubnetLen && cfg.Network.Contains(l.Subnet.Addr())
		}
		switch {
		case !fits && !l.Reservation:
			stale = append(stale, *l)
		case !fits:
			// A reservation that does not fit is the operator's to fix.
		case mine == nil || (l.Reservation && !mine.Reservation):
			mine = l
		}
	}
	return mine, stale
}
