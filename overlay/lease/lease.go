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
// {"PublicIP":"192.168.56.11","BackendType":"vxlan","BackendData":{...}}.
type Attrs struct {
	PublicIP    netip.Addr      `json:"PublicIP"`
	BackendType string          `json:"BackendType"`
	BackendData json.RawMessage `json:"BackendData"`
	// PublicIPv6 and BackendV6Data: placeholders of the model branch's
	// fields (i17-model), for the data path to build on until it merges.
	PublicIPv6    netip.Addr      `json:"PublicIPv6,omitzero"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
	// Twill carries what only twill nodes publish; flannel ignores it.
	Twill *NodeInfo `json:"Twill,omitempty"`
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
	if a.PublicIP != b.PublicIP || a.BackendType != b.BackendType || !jsonEqual(a.BackendData, b.BackendData) {
		return false
	}
	if (a.Twill == nil) != (b.Twill == nil) {
		return false
	}
	return a.Twill == nil || *a.Twill == *b.Twill
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

// NodeName is the node's name if it published one, else its public IP.
func (a Attrs) NodeName() string {
	if a.Twill != nil && a.Twill.Node != "" {
		return a.Twill.Node
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

// Lease is one subnet held by one node.
type Lease struct {
	Subnet netip.Prefix
	// IPv6Subnet: placeholder of the model branch's field (i17-model).
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

// SubnetKey is the flannel key name of a subnet: 10.244.1.0-24.
func SubnetKey(s netip.Prefix) string {
	return s.Addr().String() + "-" + strconv.Itoa(s.Bits())
}

// ParseSubnetKey reads a flannel key name (10.244.1.0-24). A flannel
// dual-stack key (10.244.1.0-24&fd00::-64) gives its IPv4 half.
func ParseSubnetKey(key string) (netip.Prefix, error) {
	key, _, _ = strings.Cut(key, "&")
	addr, bits, ok := strings.Cut(key, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: want ADDRESS-PREFIXLEN", key)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an IPv4 address", key, addr)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || n < 0 || n > 32 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not a prefix length", key, bits)
	}
	p := netip.PrefixFrom(a, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: host bits set", key)
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
	// Create leases a free subnet for ttl; ErrExists if it is taken.
	Create(ctx context.Context, subnet netip.Prefix, attrs Attrs, ttl time.Duration) (Lease, error)
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
