// Package etcd is the lease.Registry on etcd v3, with flannel's key schema:
// the network config at <prefix>/config, and each lease at
// <prefix>/subnets/10.244.1.0-24 (dual stack: 10.244.1.0-24&fd00::-64; IPv6
// only: 0.0.0.0-0&fd00::-64) holding {"PublicIP", "PublicIPv6",
// "BackendType", "BackendData", "BackendV6Data"} under an etcd lease whose
// TTL is the subnet lease's. With the prefix /coreos.com/network twill
// shares a cluster with flannel.
//
// Creation is a transaction that writes only if neither half of the lease is
// held by another key, and every update or delete is conditional on the
// key's revision, so no two nodes can hold one subnet of either family and
// no node overwrites a lease it no longer holds.
package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/twillnet/twill/overlay/lease"
)

// DefaultPrefix is twill's key prefix; flannel's is FlannelPrefix.
const (
	DefaultPrefix = "/twill/network"
	FlannelPrefix = "/coreos.com/network"
)

// Config says how to reach etcd.
type Config struct {
	Endpoints []string
	Prefix    string
	CAFile    string
	CertFile  string
	KeyFile   string
	Username  string
	Password  string
	// DialTimeout bounds each connection attempt (default 5 s).
	DialTimeout time.Duration
	// RequestTimeout bounds each request (default 5 s); an unreachable etcd
	// is noticed after it.
	RequestTimeout time.Duration
	Log            *slog.Logger
}

// Registry is a lease.Registry on etcd v3.
type Registry struct {
	cli       *clientv3.Client
	prefix    string
	timeout   time.Duration
	log       *slog.Logger
	endpoints string // for errors: which etcd did not answer

	mu  sync.Mutex
	exp map[clientv3.LeaseID]time.Time // expiry per etcd lease, learned once
}

var _ lease.Registry = (*Registry)(nil)

// New connects to etcd. It does not wait for etcd to answer: a node starts
// while etcd is down, and its requests are retried.
func New(cfg Config) (*Registry, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints given")
	}
	var errs []error
	for _, e := range cfg.Endpoints {
		if err := checkEndpoint(e); err != nil {
			errs = append(errs, fmt.Errorf("--etcd-endpoints %q: %w; want a URL such as http://127.0.0.1:2379", e, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !strings.HasPrefix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("etcd: prefix %q: must start with /", cfg.Prefix)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      zap.NewNop(),
		// gRPC's own reconnect backoff grows to two minutes: after an
		// outage of half a minute a node took up to 15 s more to notice etcd
		// was back. Reconnect at most 2 s apart.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})},
	}
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, fmt.Errorf("etcd: a client certificate needs both --etcd-certfile and --etcd-keyfile (got %q and %q)", cfg.CertFile, cfg.KeyFile)
		}
		tlsInfo := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd: load TLS files: %w", err)
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: connect to %v: %w", cfg.Endpoints, err)
	}
	return &Registry{
		cli: cli, prefix: path.Clean(cfg.Prefix), timeout: cfg.RequestTimeout, log: cfg.Log,
		endpoints: strings.Join(cfg.Endpoints, ","),
		exp:       make(map[clientv3.LeaseID]time.Time),
	}, nil
}

// checkEndpoint checks that e is an etcd client URL: http or https (unix
// or unixs for a socket) with a host and, if given, a port 1..65535.
func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	if err != nil {
		return errors.New("not a URL")
	}
	switch u.Scheme {
	case "http", "https":
	case "unix", "unixs":
		if u.Host == "" && u.Path == "" {
			return errors.New("no socket path")
		}
		return nil
	default:
		return fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	switch {
	case host == "":
		return errors.New("no host")
	case strings.Contains(host, ":") && !isIP(host):
		return fmt.Errorf("host %q is not an IPv6 address", host)
	case strings.HasSuffix(u.Host, ":") || (port != "" && !validPort(port)):
		return fmt.Errorf("port %q: want 1..65535", port)
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
		return errors.New("a client URL has no path, query or user")
	}
	return nil
}

func isIP(s string) bool { _, err := netip.ParseAddr(s); return err == nil }

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 1 && n <= 65535
}

// unreachable names the endpoints in an error that says etcd did not
// answer (a deadline or an unavailable server), so that the operator sees
// which etcd to look at.
func (r *Registry) unreachable(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded {
		return fmt.Errorf("etcd at %s did not answer within %v: %w", r.endpoints, r.timeout, err)
	}
	return err
}

// Close closes the connection.
func (r *Registry) Close() error { return r.cli.Close() }

// Client is the underlying etcd client.
func (r *Registry) Client() *clientv3.Client { return r.cli }

// Prefix is the key prefix in use.
func (r *Registry) Prefix() string { return r.prefix }

// ConfigKey is the key of the network config, for messages.
func (r *Registry) ConfigKey() string { return r.configKey() }

func (r *Registry) configKey() string                { return r.prefix + "/config" }
func (r *Registry) subnetsDir() string               { return r.prefix + "/subnets/" }
func (r *Registry) subnetKey(s lease.Subnets) string { return r.subnetsDir() + s.Key() }

func (r *Registry) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

// NetworkConfig returns the raw network config, or lease.ErrNoConfig.
func (r *Registry) NetworkConfig(ctx context.Context) ([]byte, error) {
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.configKey())
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", r.configKey(), r.unreachable(err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("get %s: %w", r.configKey(), lease.ErrNoConfig)
	}
	return resp.Kvs[0].Value, nil
}

// PutNetworkConfig writes the network config (the caller validates it).
func (r *Registry) PutNetworkConfig(ctx context.Context, data []byte) error {
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	if _, err := r.cli.Put(ctx, r.configKey(), string(data)); err != nil {
		return fmt.Errorf("put %s: %w", r.configKey(), r.unreachable(err))
	}
	return nil
}

// List returns every lease and the revision it was read at. A key that is
// not a lease (bad name or value) is logged and skipped.
func (r *Registry) List(ctx context.Context) ([]lease.Lease, int64, error) {
	gctx, cancel := r.reqCtx(ctx)
	defer cancel()
	resp, err := r.cli.Get(gctx, r.subnetsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", r.subnetsDir(), r.unreachable(err))
	}
	leases := make([]lease.Lease, 0, len(resp.Kvs))
	seen := make(map[clientv3.LeaseID]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		l, err := r.decode(kv)
		if err != nil {
			r.log.Warn("skipping a key that is not a lease", "key", string(kv.Key), "err", err)
			continue
		}
		seen[clientv3.LeaseID(kv.Lease)] = true
		leases = append(leases, l)
	}
	if err := r.fillExpirations(ctx, leases); err != nil {
		return nil, 0, err
	}
	r.mu.Lock()
	for id := range r.exp {
		if !seen[id] {
			delete(r.exp, id)
		}
	}
	r.mu.Unlock()
	return leases, resp.Header.Revision, nil
}

// decode reads a lease from a key-value pair, without its expiration.
func (r *Registry) decode(kv *mvccpb.KeyValue) (lease.Lease, error) {
	name := strings.TrimPrefix(string(kv.Key), r.subnetsDir())
	subnets, err := lease.ParseSubnetKey(name)
	if err != nil {
		return lease.Lease{}, err
	}
	l := lease.Lease{Subnet: subnets.V4, IPv6Subnet: subnets.V6, Revision: kv.ModRevision, Created: kv.CreateRevision, ID: kv.Lease, Reservation: kv.Lease == 0}
	if err := json.Unmarshal(kv.Value, &l.Attrs); err != nil {
		return lease.Lease{}, fmt.Errorf("lease value: %w", err)
	}
	return l, nil
}

// fillExpirations sets each lease's expiration from its etcd lease's TTL,
// asking etcd only for leases not seen before, a few at a time.
func (r *Registry) fillExpirations(ctx context.Context, leases []lease.Lease) error {
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 8)
		mu   sync.Mutex
		errs []error
	)
	for i := range leases {
		if leases[i].Reservation {
			continue
		}
		if t, ok := r.cachedExpiry(clientv3.LeaseID(leases[i].ID)); ok {
			leases[i].Expiration = t
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(l *lease.Lease) {
			defer func() { <-sem; wg.Done() }()
			if err := r.fillExpiration(ctx, l); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}(&leases[i])
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *Registry) cachedExpiry(id clientv3.LeaseID) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.exp[id]
	return t, ok
}

func (r *Registry) fillExpiration(ctx context.Context, l *lease.Lease) error {
	id := clientv3.LeaseID(l.ID)
	if t, ok := r.cachedExpiry(id); ok {
		l.Expiration = t
		return nil
	}
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	resp, err := r.cli.TimeToLive(ctx, id)
	if err != nil {
		return fmt.Errorf("time to live of lease %s (%x): %w", l.Subnets(), l.ID, err)
	}
	t := time.Now()
	if resp.TTL > 0 {
		t = t.Add(time.Duration(resp.TTL) * time.Second)
	}
	l.Expiration = t
	r.rememberExpiry(id, t)
	return nil
}

func (r *Registry) rememberExpiry(id clientv3.LeaseID, t time.Time) {
	r.mu.Lock()
	r.exp[id] = t
	r.mu.Unlock()
}

func (r *Registry) grant(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, time.Time, error) {
	if ttl <= 0 {
		return clientv3.NoLease, time.Time{}, nil
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := r.cli.Grant(ctx, secs)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("grant %ds etcd lease: %w", secs, r.unreachable(err))
	}
	exp := time.Now().Add(time.Duration(resp.TTL) * time.Second)
	r.rememberExpiry(resp.ID, exp)
	return resp.ID, exp, nil
}

// revoke drops an etcd lease we no longer need; failure only delays its
// natural expiry, so it is logged, not returned.
func (r *Registry) revoke(ctx context.Context, id clientv3.LeaseID) {
	if id == clientv3.NoLease {
		return
	}
	r.mu.Lock()
	delete(r.exp, id)
	r.mu.Unlock()
	if _, err := r.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.log.Debug("revoke etcd lease", "id", fmt.Sprintf("%x", id), "err", err)
	}
}

// Create leases subnets for ttl (ttl 0 makes a reservation) if no other key
// holds either half (of a dual-stack lease: nor overlaps it). An IPv4-only lease is created if its key and every
// dual-stack key with its IPv4 half are absent. A lease with an IPv6 half
// needs a look at the other keys' names first (flannel's keys cannot be
// found by their IPv6 half): it is created if none holds either half and
// no key was created since that look; if one was, the caller lists again
// (lease.ErrExists).
func (r *Registry) Create(ctx context.Context, subnets lease.Subnets, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	if !subnets.IsValid() {
		return lease.Lease{}, errors.New("create lease: no subnet")
	}
	value, err := json.Marshal(attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("encode lease %s: %w", subnets, err)
	}
	key := r.subnetKey(subnets)
	var free []clientv3.Cmp
	if subnets.V6.IsValid() {
		free, err = r.freeSince(ctx, subnets)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("create lease %s: %w", subnets, err)
		}
	} else {
		free = []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(key+"&"), "=", 0).WithPrefix(),
		}
	}
	id, exp, err := r.grant(ctx, ttl)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("create lease %s: %w", subnets, r.unreachable(err))
	}
	resp, err := r.cli.Txn(ctx).
		If(free...).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Commit()
	if err != nil {
		r.revoke(ctx, id)
		return lease.Lease{}, fmt.Errorf("create lease %s: %w", subnets, r.unreachable(err))
	}
	if !resp.Succeeded {
		r.revoke(ctx, id)
		return lease.Lease{}, fmt.Errorf("create lease %s: %w", subnets, lease.ErrExists)
	}
	return lease.Lease{Subnet: subnets.V4, IPv6Subnet: subnets.V6, Attrs: attrs, Expiration: exp, Reservation: ttl <= 0,
		Revision: resp.Header.Revision, Created: resp.Header.Revision, ID: int64(id)}, nil
}

// freeSince reads the names of the leases and, if none has a half that
// overlaps one of subnets (another writer's key may hold a shorter prefix), returns the condition that no lease was created since.
func (r *Registry) freeSince(ctx context.Context, subnets lease.Subnets) ([]clientv3.Cmp, error) {
	resp, err := r.cli.Get(ctx, r.subnetsDir(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", r.subnetsDir(), r.unreachable(err))
	}
	for _, kv := range resp.Kvs {
		other, err := lease.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), r.subnetsDir()))
		if err == nil && other.Overlaps(subnets) {
			return nil, fmt.Errorf("held by %s: %w", other, lease.ErrExists)
		}
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(r.subnetsDir()), "<", resp.Header.Revision+1).WithPrefix()}, nil
}

// Update renews l under a new etcd lease of ttl, with attrs, if the key is
// still at l.Revision; then it revokes the old etcd lease. The write is a PUT,
// so watchers see the renewal, as flannel's do.
func (r *Registry) Update(ctx context.Context, l lease.Lease, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	value, err := json.Marshal(attrs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("encode lease %s: %w", l.Subnets(), err)
	}
	id, exp, err := r.grant(ctx, ttl)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), r.unreachable(err))
	}
	key := r.subnetKey(l.Subnets())
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", l.Revision)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		r.revoke(ctx, id)
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), r.unreachable(err))
	}
	if !resp.Succeeded {
		r.revoke(ctx, id)
		if len(resp.Responses) > 0 && resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), lease.ErrNotFound)
		}
		return lease.Lease{}, fmt.Errorf("renew lease %s: %w", l.Subnets(), lease.ErrLeaseLost)
	}
	if old := clientv3.LeaseID(l.ID); old != id {
		r.revoke(ctx, old)
	}
	return lease.Lease{Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet, Attrs: attrs, Expiration: exp, Reservation: ttl <= 0,
		Revision: resp.Header.Revision, Created: l.Created, ID: int64(id)}, nil
}

// Delete releases l if the key is still at l.Revision.
func (r *Registry) Delete(ctx context.Context, l lease.Lease) error {
	ctx, cancel := r.reqCtx(ctx)
	defer cancel()
	key := r.subnetKey(l.Subnets())
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", l.Revision)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("delete lease %s: %w", l.Subnets(), r.unreachable(err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("delete lease %s: %w", l.Subnets(), lease.ErrLeaseLost)
	}
	r.revoke(ctx, clientv3.LeaseID(l.ID))
	return nil
}

// Watch delivers lease changes after fromRev. A compacted fromRev ends it
// with lease.ErrCompacted.
func (r *Registry) Watch(ctx context.Context, fromRev int64) <-chan lease.WatchBatch {
	out := make(chan lease.WatchBatch)
	go func() {
		defer close(out)
		wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), r.subnetsDir(),
			clientv3.WithPrefix(), clientv3.WithRev(fromRev), clientv3.WithPrevKV())
		send := func(b lease.WatchBatch) bool {
			select {
			case out <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				send(lease.WatchBatch{Err: fmt.Errorf("watch from revision %d (compacted up to %d): %w", fromRev, resp.CompactRevision, lease.ErrCompacted)})
				return
			}
			if err := resp.Err(); err != nil {
				send(lease.WatchBatch{Err: fmt.Errorf("watch %s: %w", r.subnetsDir(), err)})
				return
			}
			if len(resp.Events) == 0 {
				continue
			}
			b := lease.WatchBatch{Revision: resp.Header.Revision}
			for _, ev := range resp.Events {
				c, ok := r.change(ctx, ev)
				if ok {
					b.Changes = append(b.Changes, c)
				}
			}
			if !send(b) {
				return
			}
		}
		if ctx.Err() == nil {
			send(lease.WatchBatch{Err: fmt.Errorf("watch %s: closed by etcd", r.subnetsDir())})
		}
	}()
	return out
}

func (r *Registry) change(ctx context.Context, ev *clientv3.Event) (lease.Change, bool) {
	if ev.Type == clientv3.EventTypeDelete {
		name := strings.TrimPrefix(string(ev.Kv.Key), r.subnetsDir())
		subnets, err := lease.ParseSubnetKey(name)
		if err != nil {
			return lease.Change{}, false
		}
		l := lease.Lease{Subnet: subnets.V4, IPv6Subnet: subnets.V6}
		if ev.PrevKv != nil {
			if prev, err := r.decode(ev.PrevKv); err == nil {
				l = prev
			}
			r.mu.Lock()
			delete(r.exp, clientv3.LeaseID(ev.PrevKv.Lease))
			r.mu.Unlock()
		}
		return lease.Change{Lease: l, Deleted: true}, true
	}
	l, err := r.decode(ev.Kv)
	if err != nil {
		r.log.Warn("skipping a key that is not a lease", "key", string(ev.Kv.Key), "err", err)
		return lease.Change{}, false
	}
	if !l.Reservation {
		if err := r.fillExpiration(ctx, &l); err != nil {
			// The lease carries on; only its countdown is unknown.
			r.log.Debug("lease expiration unknown", "subnet", l.Subnets(), "err", err)
		}
	}
	return lease.Change{Lease: l}, true
}
