// Package lease is the subnet lease model: what a lease is, the Registry
// interface a store implements, and the logic built on it that does not
// depend on the store: allocation of a free subnet, keeping a lease renewed,
// and watching peers' leases as an ordered stream of events.
//
// It must not know how leases are stored (overlay/lease/etcd does) nor what
// a backend does with them.
package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/twillnet/twill/overlay/netconf"
)

// Attrs is what a node publishes with its lease, in flannel's JSON form:
// {"PublicIP":"192.168.56.11","PublicIPv6":"fd00:56::11","BackendType":"vxlan",
// "BackendData":{...},"BackendV6Data":{...}}. PublicIPv6 and BackendV6Data
// are written only when set, so an IPv4 lease reads as before dual stack; an
// IPv6-only node has no PublicIP and writes "0.0.0.0" there, as flannel does.
type Attrs struct {
	PublicIP    netip.Addr
	PublicIPv6  netip.Addr
	BackendType string
	BackendData json.RawMessage
	// BackendV6Data is the backend's data for the IPv6 half (flannel's
	// vxlan writes a second VTEP there).
	BackendV6Data json.RawMessage
	// Twill carries what only twill nodes publish; flannel ignores it.
	Twill *NodeInfo
}

// attrsJSON is Attrs as flannel writes it, field for field in its order.
type attrsJSON struct {
	PublicIP      netip.Addr      `json:"PublicIP"`
	PublicIPv6    netip.Addr      `json:"PublicIPv6,omitzero"`
	BackendType   string          `json:"BackendType"`
	BackendData   json.RawMessage `json:"BackendData"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
	Twill         *NodeInfo       `json:"Twill,omitempty"`
}

// unspecified4 is what flannel writes as the PublicIP of an IPv6-only node.
var unspecified4 = netip.IPv4Unspecified()

// MarshalJSON writes the attributes in flannel's form.
func (a Attrs) MarshalJSON() ([]byte, error) {
	w := attrsJSON(a)
	if !w.PublicIP.IsValid() {
		w.PublicIP = unspecified4
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads flannel's form; a PublicIPv6 of null, and a PublicIP
// of 0.0.0.0, are none.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	var w attrsJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	if w.PublicIP == unspecified4 {
		w.PublicIP = netip.Addr{}
	}
	*a = Attrs(w)
	return nil
}

// NodeInfo is twill's extension of a lease.
type NodeInfo struct {
	// Node is the node's name (its hostname unless set).
	Node string `json:"Node,omitempty"`
	// Dashboard is the URL of the node's dashboard and API.
	Dashboard string `json:"Dashboard,omitempty"`
}

// Equal reports whether two attribute sets publish the same thing.
func (a Attrs) Equal(b Attrs) bool {
	if a.PublicIP != b.PublicIP || a.PublicIPv6 != b.PublicIPv6 || a.BackendType != b.BackendType ||
		!jsonEqual(a.BackendData, b.BackendData) || !jsonEqual(a.BackendV6Data, b.BackendV6Data) {
		return false
	}
	if (a.Twill == nil) != (b.Twill == nil) {
		return false
	}
	return a.Twill == nil || *a.Twill == *b.Twill
}

// SameNode reports whether a and b are published by the same node: the same
// public IPv4 address, or, for an IPv6-only node, the same public IPv6
// address.
func (a Attrs) SameNode(b Attrs) bool {
	if a.PublicIP.IsValid() || b.PublicIP.IsValid() {
		return a.PublicIP == b.PublicIP
	}
	return a.PublicIPv6.IsValid() && a.PublicIPv6 == b.PublicIPv6
}

// Backend is the lease's backend type. A lease without one is a udp
// lease: flannel's udp backend, its default, writes no BackendType
// ({"PublicIP":"192.168.77.10","PublicIPv6":null}).
func (a Attrs) Backend() string {
	if a.BackendType == "" {
		return netconf.TypeUDP
	}
	return a.BackendType
}

// NodeName is the node's name if it published one, else its public IP
// (its public IPv6 address when it has no IPv4 one).
func (a Attrs) NodeName() string {
	if a.Twill != nil && a.Twill.Node != "" {
		return a.Twill.Node
	}
	if !a.PublicIP.IsValid() && a.PublicIPv6.IsValid() {
		return a.PublicIPv6.String()
	}
	return a.PublicIP.String()
}

func jsonEqual(a, b json.RawMessage) bool {
	norm := func(m json.RawMessage) []byte {
		m = bytes.TrimSpace(m)
		if len(m) == 0 || bytes.Equal(m, []byte("null")) {
			return nil
		}
		var v any
		if json.Unmarshal(m, &v) != nil {
			return m
		}
		out, _ := json.Marshal(v) // map keys come out sorted
		return out
	}
	return bytes.Equal(norm(a), norm(b))
}

// Lease is the subnets held by one node: an IPv4 subnet, an IPv6 subnet,
// or one of each (dual stack), under one key and one TTL.
type Lease struct {
	// Subnet is the IPv4 subnet; zero for an IPv6-only lease.
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 subnet; zero when the lease has none.
	IPv6Subnet netip.Prefix
	Attrs      Attrs
	// Expiration is when the lease ends unless renewed; zero for a reservation.
	Expiration time.Time
	// Reservation marks a subnet an operator set aside for a public IP: it has
	// no TTL, is never renewed, and is never handed to another node.
	Reservation bool
	// Revision is the store's revision of the lease's last change, for
	// compare-and-swap updates.
	Revision int64
	// Created is the store's revision at which the lease was created (etcd's
	// create revision); 0 when the store does not say. Between overlapping
	// leases the older one wins.
	Created int64
	// ID is the store's handle of the TTL (an etcd lease ID), 0 for none.
	ID int64
}

// Subnets are the lease's two halves.
func (l Lease) Subnets() Subnets { return Subnets{V4: l.Subnet, V6: l.IPv6Subnet} }

// Subnets are what one lease holds: an IPv4 subnet (V4), an IPv6 subnet
// (V6), or both. They identify the lease: its key is made of them.
type Subnets struct{ V4, V6 netip.Prefix }

// IsValid reports whether s holds a subnet of either family.
func (s Subnets) IsValid() bool { return s.V4.IsValid() || s.V6.IsValid() }

// Shares reports whether s and t hold the same subnet in either family.
func (s Subnets) Shares(t Subnets) bool {
	return (s.V4.IsValid() && s.V4 == t.V4) || (s.V6.IsValid() && s.V6 == t.V6)
}

// Overlaps reports whether a subnet of s and one of t of the same family
// overlap (one is, or lies inside, the other).
func (s Subnets) Overlaps(t Subnets) bool {
	return (s.V4.IsValid() && t.V4.IsValid() && s.V4.Overlaps(t.V4)) || (s.V6.IsValid() && t.V6.IsValid() && s.V6.Overlaps(t.V6))
}

// String is "10.244.1.0/24", "10.244.1.0/24 fd00:10:244:1::/64" or
// "fd00:10:244:1::/64".
func (s Subnets) String() string {
	switch {
	case s.V4.IsValid() && s.V6.IsValid():
		return s.V4.String() + " " + s.V6.String()
	case s.V6.IsValid():
		return s.V6.String()
	}
	return s.V4.String()
}

// Compare orders subnets by their IPv4 half, then their IPv6 half (an
// IPv6-only lease sorts first).
func (s Subnets) Compare(t Subnets) int {
	if c := s.V4.Addr().Compare(t.V4.Addr()); c != 0 {
		return c
	}
	return s.V6.Addr().Compare(t.V6.Addr())
}

// Key is the flannel key name of the lease: 10.244.1.0-24, or with an IPv6
// half 10.244.1.0-24&fd00:10:244:1::-64. An IPv6-only lease has the IPv4
// half 0.0.0.0-0 (flannel writes its empty IPv4 subnet so, and its key
// pattern needs an IPv4 half): 0.0.0.0-0&fd00:10:244:1::-64.
func (s Subnets) Key() string {
	v4 := "0.0.0.0-0"
	if s.V4.IsValid() {
		v4 = SubnetKey(s.V4)
	}
	if !s.V6.IsValid() {
		return v4
	}
	return v4 + "&" + s.V6.Addr().String() + "-" + strconv.Itoa(s.V6.Bits())
}

// SubnetKey is the flannel key name of an IPv4 subnet: 10.244.1.0-24, the
// key of an IPv4-only lease (Subnets.Key is the key of any lease).
func SubnetKey(s netip.Prefix) string {
	return s.Addr().String() + "-" + strconv.Itoa(s.Bits())
}

// ParseSubnetKey reads a flannel key name: 10.244.1.0-24,
// 10.244.1.0-24&fd00:10:244:1::-64, or 0.0.0.0-0&fd00:10:244:1::-64 (IPv6
// only).
func ParseSubnetKey(key string) (Subnets, error) {
	v4, v6, dual := strings.Cut(key, "&")
	var s Subnets
	var err error
	if dual && v4 == "0.0.0.0-0" {
		// No IPv4 half.
	} else if s.V4, err = parseHalf(key, v4, 32); err != nil {
		return Subnets{}, err
	}
	if dual {
		if s.V6, err = parseHalf(key, v6, 128); err != nil {
			return Subnets{}, err
		}
	}
	return s, nil
}

func parseHalf(key, half string, bits int) (netip.Prefix, error) {
	family := "IPv4"
	if bits == 128 {
		family = "IPv6"
	}
	addr, n, ok := strings.Cut(half, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: want ADDRESS-PREFIXLEN[&IPV6ADDRESS-PREFIXLEN]", key)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || a.BitLen() != bits || a.Is4In6() || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an %s address", key, addr, family)
	}
	l, err := strconv.Atoi(n)
	if err != nil || l < 0 || l > bits || strconv.Itoa(l) != n {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not a prefix length", key, n)
	}
	p := netip.PrefixFrom(a, l)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %s has host bits set", key, p)
	}
	return p, nil
}

// EventType says what happened to a lease.
type EventType int

const (
	// Added: a subnet was leased that the watcher did not know.
	Added EventType = iota + 1
	// Renewed: the lease was extended; what it publishes did not change.
	Renewed
	// Changed: the lease publishes something new (public IP, backend data).
	Changed
	// Expired: the lease is gone: it expired, was released, or was deleted.
	Expired
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "added"
	case Renewed:
		return "renewed"
	case Changed:
		return "changed"
	case Expired:
		return "expired"
	}
	return "EventType(" + strconv.Itoa(int(t)) + ")"
}

// MarshalText writes the event type as its name.
func (t EventType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Event is one change to one lease. Lease is the lease after the change, or,
// for Expired, the last state known of it.
type Event struct {
	Type  EventType
	Lease Lease
}

// Errors a Registry returns, to be tested with errors.Is.
var (
	// ErrExists: the subnet is already leased.
	ErrExists = errors.New("subnet already leased")
	// ErrNotFound: no lease for that subnet.
	ErrNotFound = errors.New("no such lease")
	// ErrLeaseLost: the lease changed under us (another writer, or expiry).
	ErrLeaseLost = errors.New("lease lost: changed or removed by someone else")
	// ErrCompacted: a watch asked for a revision the store no longer has.
	ErrCompacted = errors.New("watch revision compacted")
	// ErrNoConfig: no network config in the store yet.
	ErrNoConfig = errors.New("no network config")
)

// Change is one raw change a Registry's watch reports: a lease written, or
// removed (then Lease is its last known state). The Watcher turns changes into
// Events, since only it knows what came before.
type Change struct {
	Lease   Lease
	Deleted bool
}

// WatchBatch is what a Registry's watch delivers: the changes up to and
// including store revision Revision, in order; or an error that ends the
// watch.
type WatchBatch struct {
	Changes  []Change
	Revision int64
	Err      error
}

// Registry is a store of subnet leases.
type Registry interface {
	// NetworkConfig returns the raw network config JSON, or ErrNoConfig.
	NetworkConfig(ctx context.Context) ([]byte, error)
	// List returns every lease and the store revision it was read at.
	List(ctx context.Context) ([]Lease, int64, error)
	// Create leases free subnets (an IPv4 subnet, an IPv6 subnet, or one of
	// each) for ttl, or for good when ttl is 0 (a reservation), in one
	// compare-and-swap: ErrExists if another lease holds either of them.
	Create(ctx context.Context, subnets Subnets, attrs Attrs, ttl time.Duration) (Lease, error)
	// Update renews l for ttl with attrs, if l is still as it was at
	// l.Revision; ErrLeaseLost if not.
	Update(ctx context.Context, l Lease, attrs Attrs, ttl time.Duration) (Lease, error)
	// Delete releases l if it is still as it was at l.Revision.
	Delete(ctx context.Context, l Lease) error
	// Watch delivers lease changes after revision fromRev until ctx ends,
	// when it closes the channel. A compacted fromRev ends the watch with a
	// batch whose Err is ErrCompacted.
	Watch(ctx context.Context, fromRev int64) <-chan WatchBatch
}
