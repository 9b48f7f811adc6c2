package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"github.com/twillnet/twill/overlay/netconf"
)

// ExhaustedError says that no subnet of a network is free.
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
	// Previous and PreviousIPv6 are the subnets the node held before (from
	// its subnet file); it gets them back if no lease is the node's and
	// they are free. Each half is taken back on its own.
	Previous, PreviousIPv6 netip.Prefix
}

// maxCollisions bounds how often Acquire retries after losing a race for a
// subnet. Every lost race is a subnet won by another node, so it is only
// reached when many more nodes than subnets race.
const maxCollisions = 1000

// Acquire gets a lease for the node, with a subnet of each family the
// config enables, in this order of preference:
//  1. the lease or reservation that is the node's (it carries the node's
//     public IP, or, for an IPv6-only node, its public IPv6 address: a
//     restart), renewed with the node's new attributes; both halves stay;
//  2. per family, the subnet of a lease of the node's that no longer fits
//     the config (released first: the config gained or lost a family), or
//     the previous subnet in the request, if leasable and free;
//  3. per family, a random free subnet.
//
// A registry that assigns subnets itself (an Assigner: Kubernetes) is asked
// for the node's subnets instead.
//
// Every creation is one compare-and-swap in the registry covering both
// halves, so however many nodes race, no two hold one subnet of either
// family. When a network is full the error is an *ExhaustedError.
func Acquire(ctx context.Context, reg Registry, req Request) (Lease, error) {
	l, _, err := acquire(ctx, reg, req)
	return l, err
}

// acquire is Acquire, and says whether the lease was created (2 or 3) rather
// than taken over (1).
func acquire(ctx context.Context, reg Registry, req Request) (Lease, bool, error) {
	cfg := req.Config
	switch {
	case cfg == nil:
		return Lease{}, false, errors.New("acquire lease: need a network config")
	case cfg.EnableIPv4 && !req.Attrs.PublicIP.IsValid():
		return Lease{}, false, errors.New("acquire lease: need a public IP")
	case !cfg.EnableIPv4 && !req.Attrs.PublicIPv6.IsValid():
		return Lease{}, false, errors.New("acquire lease: an IPv6-only network needs a public IPv6 address")
	}
	if a, ok := reg.(Assigner); ok {
		l, err := a.Claim(ctx, req)
		return l, false, err
	}
	families := []*familyAlloc{
		{r: cfg.IPv4(), previous: req.Previous, half: func(s Subnets) netip.Prefix { return s.V4 }},
		{r: cfg.IPv6(), previous: req.PreviousIPv6, half: func(s Subnets) netip.Prefix { return s.V6 }},
	}
	for collisions := 0; collisions < maxCollisions; {
		leases, _, err := reg.List(ctx)
		if err != nil {
			return Lease{}, false, fmt.Errorf("acquire lease: list leases: %w", err)
		}

		// 1. A lease or reservation of ours.
		mine, stale := findMine(leases, req.Attrs, cfg)
		for _, l := range stale {
			// A lease of ours outside the current config (the network
			// changed): release it so that it does not linger, and keep
			// what still fits of it.
			if err := reg.Delete(ctx, l); err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrNotFound) {
				return Lease{}, false, fmt.Errorf("acquire lease: release stale lease %s: %w", l.Subnets(), err)
			}
			for _, f := range families {
				if h := f.half(l.Subnets()); f.r.Leasable(h) {
					f.released = h
				}
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
				return Lease{}, false, fmt.Errorf("acquire lease: renew %s: %w", mine.Subnets(), err)
			}
			return l, false, nil
		}

		// 2 and 3, among the leases but the stale ones just released (not
		// before: mine points into leases).
		leases = slices.DeleteFunc(leases, func(l Lease) bool {
			return slices.ContainsFunc(stale, func(s Lease) bool { return s.Subnets() == l.Subnets() })
		})
		var want [2]netip.Prefix
		for i, f := range families {
			if !f.r.Enabled() {
				continue
			}
			s, err := f.pick(leases)
			if err != nil {
				return Lease{}, false, err
			}
			want[i] = s
		}
		subnets := Subnets{V4: want[0], V6: want[1]}
		l, err := reg.Create(ctx, subnets, req.Attrs, req.TTL)
		if errors.Is(err, ErrExists) {
			collisions++
			continue
		}
		if err != nil {
			return Lease{}, false, fmt.Errorf("acquire lease: create %s: %w", subnets, err)
		}
		return l, true, nil
	}
	return Lease{}, false, fmt.Errorf("acquire lease in %s: lost the race for a subnet %d times", networks(cfg), maxCollisions)
}

// familyAlloc is the allocation of one family's half of a lease.
type familyAlloc struct {
	r        netconf.SubnetRange
	previous netip.Prefix               // from the request
	released netip.Prefix               // from a stale lease of ours
	half     func(Subnets) netip.Prefix // this family's half of a lease
}

// pick chooses this family's subnet: the released or previous one if it is
// free, else a random free one. A subnet is taken when a lease's half of
// this family overlaps it: is it, lies inside it, or covers it (a key
// another writer made with a shorter prefix, 10.244.2.0-24&fd00::-60, takes
// every /64 in it).
func (f *familyAlloc) pick(leases []Lease) (netip.Prefix, error) {
	taken := make(map[netip.Prefix]bool, len(leases))
	var wide []netip.Prefix // halves shorter than a subnet
	leased, reserved := 0, 0
	for _, l := range leases {
		h := f.half(l.Subnets())
		if !h.IsValid() || !h.Overlaps(f.r.Network) || h.Addr().BitLen() != f.r.Network.Addr().BitLen() {
			continue
		}
		if h.Bits() < f.r.SubnetLen {
			wide = append(wide, h)
			continue
		}
		taken[netip.PrefixFrom(h.Addr(), f.r.SubnetLen).Masked()] = true
		if f.r.Leasable(h) {
			if l.Reservation {
				reserved++
			} else {
				leased++
			}
		}
	}
	isTaken := func(s netip.Prefix) bool {
		return taken[s] || slices.ContainsFunc(wide, s.Overlaps)
	}
	for _, s := range []netip.Prefix{f.released, f.previous} {
		if s.IsValid() && f.r.Leasable(s) && !isTaken(s) {
			return s, nil
		}
	}
	n := f.r.Count()
	if leased+reserved >= n {
		return netip.Prefix{}, &ExhaustedError{Network: f.r.Network, Subnets: n, Leased: leased, Reserved: reserved}
	}
	start := rand.IntN(n)
	for i := range n {
		if s := f.r.Subnet((start + i) % n); !isTaken(s) {
			return s, nil
		}
	}
	return netip.Prefix{}, &ExhaustedError{Network: f.r.Network, Subnets: n, Leased: leased, Reserved: reserved}
}

// networks names the config's networks, for messages.
func networks(cfg *netconf.Config) string {
	return Subnets{V4: cfg.Network, V6: cfg.IPv6Network}.String()
}

// findMine returns the node's lease that fits cfg (a reservation first), and
// the node's leases with a TTL that no longer fit cfg. A lease fits when it
// has a leasable subnet of each family cfg enables and none of the others;
// a reservation's subnets need only lie in their networks with the right
// length: they may sit outside SubnetMin..SubnetMax, which bound only
// allocation.
func findMine(leases []Lease, attrs Attrs, cfg *netconf.Config) (mine *Lease, stale []Lease) {
	v4, v6 := cfg.IPv4(), cfg.IPv6()
	for i := range leases {
		l := &leases[i]
		if !l.Attrs.SameNode(attrs) {
			continue
		}
		fitsHalf := func(r netconf.SubnetRange, s netip.Prefix) bool {
			switch {
			case !r.Enabled():
				return !s.IsValid()
			case l.Reservation:
				return r.Fits(s)
			}
			return r.Leasable(s)
		}
		fits := fitsHalf(v4, l.Subnet) && fitsHalf(v6, l.IPv6Subnet)
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
