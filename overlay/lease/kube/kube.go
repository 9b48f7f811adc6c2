// Package kube is the lease.Registry on the Kubernetes API, flannel's
// --kube-subnet-mgr: each node's subnet is its spec.podCIDR (spec.podCIDRs,
// one per family), assigned by the API (kube-controller-manager
// --allocate-node-cidrs, or by hand); what a node publishes (backend type and
// data, public IP) lives in flannel's node annotations, patched through
// nodes/status; peers come from an informer on Nodes, only those marked
// <prefix>/kube-subnet-manager=true; the network config is a file
// (net-conf.json).
//
// It is a lease.Assigner: nodes claim the subnet they are given and
// allocate none. It reads Nodes as untrusted: of Nodes that claim the same
// pod CIDRs only the oldest is delivered, the others are refused
// (lease.Refuser) and reported; a node whose own pod CIDR overlaps an older
// Node's waits; annotations that cannot be a lease (no address, too long)
// are skipped and logged once, never whole. It must not allocate subnets,
// write node specs, nor touch any node but its own (it reads the others).
package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

// Config is what the registry needs.
type Config struct {
	Client kubernetes.Interface
	// NodeName is this node's Node object (NodeName finds it).
	NodeName string
	// Prefix of the annotations; DefaultPrefix when empty.
	Prefix string
	// NetConfPath is the net-conf.json file, read once by New.
	NetConfPath string
	// History is how many changes a watch can catch up on (default 4096);
	// a watcher further behind lists again.
	History int
	Log     *slog.Logger
}

// Registry is the lease.Registry on Nodes. Make it with New; Close it.
type Registry struct {
	client   kubernetes.Interface
	nodeName string
	ann      Annotations
	netConf  []byte
	netcfg   *netconf.Config
	fam      Families
	confPath string
	log      *slog.Logger
	history  int

	informer cache.SharedIndexInformer
	stop     context.CancelFunc
	done     chan struct{}

	mu  sync.Mutex
	rev int64 // one per change
	// byNode is the lease each node publishes now, bySubnets the nodes
	// publishing each set of subnets; routed is what List and Watch
	// deliver: per set of subnets the lease of the oldest of its nodes.
	// Those others are refused (by node name), with the reason.
	byNode    map[string]lease.Lease
	bySubnets map[lease.Subnets]map[string]bool
	routed    map[lease.Subnets]lease.Lease
	refused   map[string]lease.Refusal
	unread    map[string]string // node -> why its lease cannot be read, as last logged
	// badOverwrite is the own node's unusable overwrite annotation, as
	// last logged by a renewal ("" when none).
	badOverwrite string
	changes      []record // changes after compacted, in order
	compacted    int64
	changed      chan struct{} // closed and replaced on every change
	ownWake      chan struct{} // closed and replaced when the own node or what is routed changes
	watchErr     error         // the informer's last watch error, until it lists again
}

type record struct {
	rev    int64
	change lease.Change
}

var (
	_ lease.Registry  = (*Registry)(nil)
	_ lease.Assigner  = (*Registry)(nil)
	_ lease.Completer = (*Registry)(nil)
	_ lease.Refuser   = (*Registry)(nil)
)

// New reads the network config and starts the informer on Nodes. It does not
// wait for the API server: List and Claim wait for the informer's first
// listing.
func New(cfg Config) (*Registry, error) {
	if cfg.Client == nil {
		return nil, errors.New("kube registry: no client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("kube registry: no node name")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	ann, err := NewAnnotations(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(cfg.NetConfPath)
	if err != nil {
		return nil, fmt.Errorf("read --net-config-path: %w", err)
	}
	netcfg, err := netconf.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path %s: %w", cfg.NetConfPath, err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.History <= 0 {
		cfg.History = 4096
	}
	r := &Registry{
		client: cfg.Client, nodeName: cfg.NodeName, ann: ann, netConf: data, confPath: cfg.NetConfPath,
		netcfg: netcfg, fam: Families{V4: netcfg.EnableIPv4, V6: netcfg.EnableIPv6},
		log: cfg.Log, history: cfg.History,
		byNode: map[string]lease.Lease{}, bySubnets: map[lease.Subnets]map[string]bool{}, routed: map[lease.Subnets]lease.Lease{},
		refused: map[string]lease.Refusal{}, unread: map[string]string{},
		changed: make(chan struct{}), ownWake: make(chan struct{}),
		done: make(chan struct{}),
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0)
	r.informer = factory.Core().V1().Nodes().Informer()
	// Keep only what a lease is read from: a thousand nodes' images and
	// managed fields are most of their size.
	if err := r.informer.SetTransform(func(obj any) (any, error) { return slimNode(obj, ann) }); err != nil {
		return nil, fmt.Errorf("kube registry: %w", err)
	}
	if err := r.informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		r.mu.Lock()
		r.watchErr = err
		r.mu.Unlock()
		r.log.Debug("node watch failed; the informer retries", "err", err)
	}); err != nil {
		return nil, fmt.Errorf("kube registry: %w", err)
	}
	if _, err := r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { r.observe(obj, false) },
		UpdateFunc: func(_, obj any) { r.observe(obj, false) },
		DeleteFunc: func(obj any) { r.observe(obj, true) },
	}); err != nil {
		return nil, fmt.Errorf("kube registry: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	r.stop = stop
	go func() {
		defer close(r.done)
		r.informer.RunWithContext(ctx)
	}()
	return r, nil
}

// slimNode drops the parts of a Node no lease is read from: other
// annotations than the registry's, and the value of one too long to be
// read (a 256 KiB backend-data is kept as its first bytes, which are
// refused as too long, not parsed).
func slimNode(obj any, a Annotations) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	n.ManagedFields = nil
	n.Status.Images = nil
	n.Status.VolumesInUse = nil
	n.Status.VolumesAttached = nil
	if len(n.Annotations) > 0 {
		keep := make(map[string]string, len(a.names()))
		for _, k := range a.names() {
			if v, ok := n.Annotations[k]; ok {
				if len(v) > MaxBackendData {
					keep[sizeKey(k)] = strconv.Itoa(len(v))
					v = strings.Clone(v[:64]) // not a slice of the large value
				} else if size, ok := n.Annotations[sizeKey(k)]; ok {
					keep[sizeKey(k)] = size // cut by an earlier pass (an initial listing passes twice)
				}
				keep[k] = v
			}
		}
		n.Annotations = keep
	}
	return n, nil
}

// Close stops the informer.
func (r *Registry) Close() error {
	r.stop()
	<-r.done
	return nil
}

// NodeName is the node the registry claims a subnet for.
func (r *Registry) NodeName() string { return r.nodeName }

// Annotations are the annotation names the registry reads and writes.
func (r *Registry) Annotations() Annotations { return r.ann }

// StoreName is what the daemon calls the store in messages.
func (r *Registry) StoreName() string { return "the Kubernetes API server" }

// ConfigKey names where the network config comes from, for messages.
func (r *Registry) ConfigKey() string { return r.confPath }

// NetworkConfig returns net-conf.json as read by New, once the API server
// answered a GET /version (allowed to every client; it touches no etcd):
// the daemon's store probe calls it to notice an API server that went
// away, which the informer does not say (it retries a refused connection
// silently). While the informer's listing fails (a forbidden list, say) it
// returns that error.
func (r *Registry) NetworkConfig(ctx context.Context) ([]byte, error) {
	r.mu.Lock()
	err := r.watchErr
	r.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.client.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(ctx); err != nil {
		return nil, fmt.Errorf("kubernetes API server: %w", err)
	}
	return r.netConf, nil
}

// resourceVersion is a node's resource version as a number (it is etcd's
// revision), 0 if it is not one.
func resourceVersion(n *corev1.Node) int64 {
	v, _ := strconv.ParseInt(n.ResourceVersion, 10, 64)
	return v
}

// observe turns an informer event into changes: a node that starts, stops
// or changes publishing a lease, or that is routed instead of another.
func (r *Registry) observe(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = d.Obj, true
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	var l lease.Lease
	var readErr error
	publishes := false
	if !deleted {
		l, readErr = r.ann.NodeLease(n, r.fam)
		publishes = readErr == nil
		if errors.Is(readErr, errNotPublished) {
			readErr = nil
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Any word from the API server means its watch works again.
	r.watchErr = nil
	// A lease that cannot be read is logged once per reason, not at every
	// status update of its node (the reason quotes at most 64 bytes).
	if readErr == nil {
		delete(r.unread, n.Name)
	} else if r.unread[n.Name] != readErr.Error() {
		r.unread[n.Name] = readErr.Error()
		r.log.Warn("node publishes a lease that cannot be read; ignoring it", "node", n.Name, "err", readErr)
	}
	old, had := r.byNode[n.Name]
	var touched []lease.Subnets
	if had {
		delete(r.bySubnets[old.Subnets()], n.Name)
		touched = append(touched, old.Subnets())
		delete(r.byNode, n.Name)
	}
	if !publishes {
		delete(r.refused, n.Name)
	}
	if publishes {
		r.byNode[n.Name] = l
		if r.bySubnets[l.Subnets()] == nil {
			r.bySubnets[l.Subnets()] = map[string]bool{}
		}
		r.bySubnets[l.Subnets()][n.Name] = true
		touched = append(touched, l.Subnets())
	}
	changes := r.reroute(touched)
	for _, c := range changes {
		r.rev++
		r.changes = append(r.changes, record{rev: r.rev, change: c})
	}
	if over := len(r.changes) - r.history; over > 0 {
		r.compacted = r.changes[over-1].rev
		r.changes = append(r.changes[:0:0], r.changes[over:]...)
	}
	if len(changes) > 0 {
		close(r.changed)
		r.changed = make(chan struct{})
	}
	if n.Name == r.nodeName || len(changes) > 0 {
		close(r.ownWake)
		r.ownWake = make(chan struct{})
	}
}

// older reports whether a's Node is older than b's: created earlier, or in
// the same second and first by name. Between Nodes that claim one subnet
// the older is routed, on every node alike.
func older(a, b lease.Lease) bool {
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	return a.Attrs.NodeName() < b.Attrs.NodeName()
}

// reroute chooses again which node is routed for each set of subnets in
// touched, and returns the changes to what List and Watch deliver: gone
// first, then new or changed, each in subnet order. A set claimed by
// several Nodes routes to the oldest; the others are refused, and that is
// logged once. The caller holds mu.
func (r *Registry) reroute(touched []lease.Subnets) []lease.Change {
	slices.SortFunc(touched, lease.Subnets.Compare)
	touched = slices.Compact(touched)
	var gone, put []lease.Change
	for _, s := range touched {
		var claims []lease.Lease
		for name := range r.bySubnets[s] {
			claims = append(claims, r.byNode[name])
		}
		if len(claims) == 0 {
			delete(r.bySubnets, s)
			if was, ok := r.routed[s]; ok {
				delete(r.routed, s)
				gone = append(gone, lease.Change{Lease: was, Deleted: true})
			}
			continue
		}
		slices.SortFunc(claims, func(a, b lease.Lease) int {
			if older(a, b) {
				return -1
			}
			return 1
		})
		win := claims[0]
		for _, lose := range claims[1:] {
			name := lose.Attrs.NodeName()
			reason := fmt.Sprintf("node %q spec.podCIDRs %s are also node %q's, which is older (created %s; %q %s): %q is routed, %q refused until one of the Nodes changes",
				name, s, win.Attrs.NodeName(), createdAt(win), name, createdAt(lose), win.Attrs.NodeName(), name)
			if was, ok := r.refused[name]; !ok || was.Reason != reason {
				r.log.Warn("two nodes claim one pod CIDR; routing the older", "subnets", s.String(), "routed", win.Attrs.NodeName(), "refused", name, "reason", reason)
			}
			r.refused[name] = lease.Refusal{Lease: lose, Reason: reason}
		}
		delete(r.refused, win.Attrs.NodeName())
		was, ok := r.routed[s]
		r.routed[s] = win
		if !ok || was.Attrs.NodeName() != win.Attrs.NodeName() || !was.Attrs.Equal(win.Attrs) || was.Created != win.Created {
			put = append(put, lease.Change{Lease: win})
		}
	}
	return append(gone, put...)
}

// createdAt is when a lease's Node was created, for messages.
func createdAt(l lease.Lease) string {
	return time.Unix(l.Created, 0).UTC().Format(time.RFC3339)
}

// Refused is the Nodes whose lease is held back because an older Node
// claims the same pod CIDRs, with the reason (naming both, and the CIDRs).
func (r *Registry) Refused() []lease.Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]lease.Refusal, 0, len(r.refused))
	for _, f := range r.refused {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b lease.Refusal) int {
		return cmp.Or(a.Lease.Subnets().Compare(b.Lease.Subnets()), cmp.Compare(a.Lease.Attrs.NodeName(), b.Lease.Attrs.NodeName()))
	})
	return out
}

// waitSynced waits until the informer has listed the nodes once.
func (r *Registry) waitSynced(ctx context.Context) error {
	if r.informer.HasSynced() {
		return nil
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !r.informer.HasSynced() {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			err := r.watchErr
			r.mu.Unlock()
			if err != nil {
				return fmt.Errorf("list nodes: %w", err)
			}
			return fmt.Errorf("list nodes: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// List returns the lease of every node that publishes one (of Nodes that
// claim the same pod CIDRs, the oldest's), and the registry's revision.
func (r *Registry) List(ctx context.Context) ([]lease.Lease, int64, error) {
	if err := r.waitSynced(ctx); err != nil {
		return nil, 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]lease.Lease, 0, len(r.routed))
	for _, l := range r.routed {
		out = append(out, l)
	}
	return out, r.rev, nil
}

// Watch delivers the changes after fromRev as they come. Its revisions are
// the registry's own count of changes since it started, not the API
// server's; a watch further behind than the history ends with
// lease.ErrCompacted.
func (r *Registry) Watch(ctx context.Context, fromRev int64) <-chan lease.WatchBatch {
	ch := make(chan lease.WatchBatch, 1)
	go func() {
		defer close(ch)
		next := fromRev
		for {
			r.mu.Lock()
			if next <= r.compacted {
				r.mu.Unlock()
				select {
				case ch <- lease.WatchBatch{Err: lease.ErrCompacted}:
				case <-ctx.Done():
				}
				return
			}
			var b lease.WatchBatch
			for _, rec := range r.changes {
				if rec.rev >= next {
					b.Changes = append(b.Changes, rec.change)
				}
			}
			b.Revision = r.rev
			wake := r.changed
			r.mu.Unlock()
			if len(b.Changes) > 0 {
				select {
				case ch <- b:
				case <-ctx.Done():
					return
				}
				next = b.Revision + 1
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// notAssigned is the wait for a pod CIDR, saying what sets it.
func (r *Registry) notAssigned(wake <-chan struct{}, family string) error {
	return &lease.PendingError{Wake: wake, Reason: fmt.Sprintf("node %q pod cidr not assigned: spec.podCIDRs has no %s subnet. "+
		"kube-controller-manager sets it when run with --allocate-node-cidrs=true and a --cluster-cidr that matches the Network of %s; "+
		"without a controller that does, set spec.podCIDR on the node by hand "+
		"(kubectl patch node %s -p '{\"spec\":{\"podCIDR\":\"<a subnet of the Network>\"}}'). Waiting for it", r.nodeName, family, r.confPath, r.nodeName)}
}

// assigned reads the own node's pod CIDRs for the families in use: a
// *lease.PendingError while one is missing, a Permanent error when one lies
// outside its network (the pod CIDR of a node does not change).
func (r *Registry) assigned(n *corev1.Node, wake <-chan struct{}) (lease.Subnets, error) {
	cidrs, err := NodePodCIDRs(n)
	if err != nil {
		return lease.Subnets{}, lease.Permanent(err)
	}
	var s lease.Subnets
	for _, f := range []struct {
		on        bool
		name      string
		cidr      netip.Prefix
		network   netip.Prefix
		field     string
		subnetLen int
		lenField  string
		dst       *netip.Prefix
	}{
		{r.fam.V4, "IPv4", cidrs.V4, r.netcfg.Network, "Network", r.netcfg.SubnetLen, "SubnetLen", &s.V4},
		{r.fam.V6, "IPv6", cidrs.V6, r.netcfg.IPv6Network, "IPv6Network", r.netcfg.IPv6SubnetLen, "IPv6SubnetLen", &s.V6},
	} {
		if !f.on {
			continue
		}
		if !f.cidr.IsValid() {
			return lease.Subnets{}, r.notAssigned(wake, f.name)
		}
		if f.cidr.Bits() < f.network.Bits() || !f.network.Contains(f.cidr.Addr()) {
			return lease.Subnets{}, lease.Permanent(fmt.Errorf("node %q spec.podCIDRs: pod cidr %s lies outside the %s %s of %s: make kube-controller-manager's --cluster-cidr and the config agree",
				r.nodeName, f.cidr, f.field, f.network, r.confPath))
		}
		if f.subnetLen > 0 && f.cidr.Bits() != f.subnetLen {
			// Peers refuse a lease of another size than the config's.
			return lease.Subnets{}, lease.Permanent(fmt.Errorf("node %q spec.podCIDRs: pod cidr %s is a /%d, and %s of %s is %d: make kube-controller-manager's --node-cidr-mask-size and the config agree",
				r.nodeName, f.cidr, f.cidr.Bits(), f.lenField, r.confPath, f.subnetLen))
		}
		*f.dst = f.cidr
	}
	if err := r.overlapsOlder(n, s, wake); err != nil {
		return lease.Subnets{}, err
	}
	return s, nil
}

// overlapsOlder is a *lease.PendingError if a half of s overlaps the pod
// CIDR of an older Node that publishes a lease: that Node is routed, on
// every node, and this one waits until one of them changes (it is deleted,
// or re-created with another pod CIDR).
func (r *Registry) overlapsOlder(n *corev1.Node, s lease.Subnets, wake <-chan struct{}) error {
	self := lease.Lease{Created: n.CreationTimestamp.Unix(), Attrs: lease.Attrs{Twill: &lease.NodeInfo{Node: n.Name}}}
	r.mu.Lock()
	defer r.mu.Unlock()
	var clash []string
	for name, o := range r.byNode {
		if name == n.Name || !older(o, self) {
			continue
		}
		for _, h := range [][2]netip.Prefix{{s.V4, o.Subnet}, {s.V6, o.IPv6Subnet}} {
			if h[0].IsValid() && h[1].IsValid() && h[0].Overlaps(h[1]) {
				clash = append(clash, fmt.Sprintf("node %q's %s (created %s)", name, h[1], createdAt(o)))
			}
		}
	}
	if len(clash) == 0 {
		return nil
	}
	slices.Sort(clash)
	return &lease.PendingError{Wake: wake, Reason: fmt.Sprintf("node %q spec.podCIDRs %s overlap the pod CIDRs of older Nodes: %s. "+
		"The older Node is routed; this one waits until one of them changes (a Node's podCIDR cannot change: delete the wrong Node and register it again)",
		r.nodeName, s, strings.Join(clash, ", "))}
}

// Claim is the node's lease: its pod CIDR of each family the network config
// enables, which must lie in that family's network, with req.Attrs
// published in its annotations (patched on nodes/status where they differ).
// The public IP is the node's <prefix>/public-ip-overwrite annotation if it
// has one (public-ipv6-overwrite for IPv6). A node without a pod CIDR, or
// not registered yet, is a *lease.PendingError.
func (r *Registry) Claim(ctx context.Context, req lease.Request) (lease.Lease, error) {
	// The other Nodes must be known: an older one may claim the subnet.
	if err := r.waitSynced(ctx); err != nil {
		return lease.Lease{}, err
	}
	r.mu.Lock()
	wake := r.ownWake
	r.mu.Unlock()
	n, err := r.client.CoreV1().Nodes().Get(ctx, r.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return lease.Lease{}, &lease.PendingError{Wake: wake, Reason: fmt.Sprintf(
			"node %q is not registered in the API server (kubelet registers it; or set --node-name / NODE_NAME to the node's name). Waiting for it", r.nodeName)}
	}
	if err != nil {
		return lease.Lease{}, fmt.Errorf("get node %q: %w", r.nodeName, err)
	}
	s, err := r.assigned(n, wake)
	if err != nil {
		return lease.Lease{}, err
	}
	return r.publish(ctx, n, s, req, wake, nil)
}

// publish patches the node's annotations to say req.Attrs where they do not
// already, and returns the lease. held is the lease being renewed (nil on a
// claim). An overwrite annotation that is not a usable address is an
// operator's mistake, not a store that cannot be reached: a claim waits
// for it to be fixed (a *lease.PendingError, retried when the node changes,
// woken by wake), and a renewal keeps publishing the addresses the node
// publishes now, so that a bad edit does not move the peers' routes, and
// logs it once.
func (r *Registry) publish(ctx context.Context, n *corev1.Node, s lease.Subnets, req lease.Request, wake <-chan struct{}, held *lease.Lease) (lease.Lease, error) {
	attrs := req.Attrs
	v4, v6, err := r.ann.publicIPs(n, attrs)
	switch {
	case err != nil && held == nil:
		return lease.Lease{}, &lease.PendingError{Wake: wake, Reason: err.Error() + "; waiting until the annotation is fixed or removed"}
	case err != nil:
		r.mu.Lock()
		first := r.badOverwrite != err.Error()
		r.badOverwrite = err.Error()
		r.mu.Unlock()
		if first {
			r.log.Error("ignoring the node's overwrite annotation; publishing the public IP as before", "err", err,
				"public_ip", held.Attrs.PublicIP, "public_ipv6", held.Attrs.PublicIPv6)
		}
		v4, v6 = held.Attrs.PublicIP, held.Attrs.PublicIPv6
	default:
		r.mu.Lock()
		r.badOverwrite = ""
		r.mu.Unlock()
	}
	if v4 != attrs.PublicIP || v6 != attrs.PublicIPv6 {
		r.log.Info("publishing the public IP of the node's overwrite annotation", "public_ip", v4, "public_ipv6", v6)
	}
	attrs.PublicIP, attrs.PublicIPv6 = v4, v6
	if !s.V4.IsValid() {
		attrs.PublicIP, attrs.BackendData = netip.Addr{}, nil
	}
	if !s.V6.IsValid() {
		attrs.PublicIPv6, attrs.BackendV6Data = netip.Addr{}, nil
	}
	if patch := differ(n, r.ann.Wanted(attrs)); len(patch) > 0 {
		if n, err = r.patchAnnotations(ctx, patch); err != nil {
			return lease.Lease{}, err
		}
	}
	attrs.Twill = &lease.NodeInfo{Node: r.nodeName}
	if req.Attrs.Twill != nil {
		attrs.Twill.Dashboard = req.Attrs.Twill.Dashboard
	}
	for _, d := range []*json.RawMessage{&attrs.BackendData, &attrs.BackendV6Data} {
		if string(*d) == "null" {
			*d = nil
		}
	}
	if attrs.BackendType == "" {
		attrs.BackendType = attrs.Backend()
	}
	l := lease.Lease{Subnet: s.V4, IPv6Subnet: s.V6, Attrs: attrs, Revision: resourceVersion(n)}
	if req.TTL > 0 {
		l.Expiration = time.Now().Add(req.TTL)
	}
	return l, nil
}

// patchAnnotations sets annotations on the own node through nodes/status,
// the only write the registry's role needs (a null value removes one).
func (r *Registry) patchAnnotations(ctx context.Context, set map[string]any) (*corev1.Node, error) {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	if err != nil {
		return nil, err
	}
	n, err := r.client.CoreV1().Nodes().Patch(ctx, r.nodeName, types.StrategicMergePatchType, body, metav1.PatchOptions{}, "status")
	if err != nil {
		return nil, fmt.Errorf("patch annotations of node %q: %w", r.nodeName, err)
	}
	return n, nil
}

// Create claims subnets for the own node if they are the node's pod CIDRs:
// the API assigns subnets, a node cannot create one.
func (r *Registry) Create(ctx context.Context, subnets lease.Subnets, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	l, err := r.Claim(ctx, lease.Request{Attrs: attrs, TTL: ttl})
	if err != nil {
		return lease.Lease{}, err
	}
	if l.Subnets() != subnets {
		return lease.Lease{}, fmt.Errorf("create lease %s: node %q is assigned %s by the API server (spec.podCIDRs): %w", subnets, r.nodeName, l.Subnets(), lease.ErrExists)
	}
	return l, nil
}

// own gets the own node and checks that it still has l's subnets:
// lease.ErrNotFound if the node is gone, lease.ErrLeaseLost if its pod CIDRs
// are others (or none).
func (r *Registry) own(ctx context.Context, l lease.Lease, op string) (*corev1.Node, error) {
	n, err := r.client.CoreV1().Nodes().Get(ctx, r.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%s lease %s: node %q: %w", op, l.Subnets(), r.nodeName, lease.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get node %q: %w", r.nodeName, err)
	}
	s, err := r.assigned(n, nil)
	if err != nil || s != l.Subnets() {
		return nil, fmt.Errorf("%s lease %s: node %q pod cidrs are now %q: %w", op, l.Subnets(), r.nodeName, n.Spec.PodCIDRs, lease.ErrLeaseLost)
	}
	return n, nil
}

// Update publishes attrs again on the own node if it still has l's subnets.
// Kubernetes leases have no TTL: the expiration is only what the keeper
// renews by.
func (r *Registry) Update(ctx context.Context, l lease.Lease, attrs lease.Attrs, ttl time.Duration) (lease.Lease, error) {
	n, err := r.own(ctx, l, "renew")
	if err != nil {
		return lease.Lease{}, err
	}
	return r.publish(ctx, n, l.Subnets(), lease.Request{Attrs: attrs, TTL: ttl}, nil, &l)
}

// Delete stops the own node publishing l: its kube-subnet-manager mark and
// backend annotations are removed, so peers drop its routes. The pod CIDRs
// stay (the API owns them).
func (r *Registry) Delete(ctx context.Context, l lease.Lease) error {
	n, err := r.own(ctx, l, "release")
	if err != nil {
		return err
	}
	a := r.ann
	rm := map[string]any{}
	for _, k := range []string{a.KubeSubnetManager, a.BackendType, a.BackendData, a.BackendV6Data, a.PublicIP, a.PublicIPv6, a.Dashboard} {
		if _, ok := n.Annotations[k]; ok {
			rm[k] = nil
		}
	}
	if len(rm) == 0 {
		return nil
	}
	_, err = r.patchAnnotations(ctx, rm)
	return err
}

// Condition reasons twill sets on NetworkUnavailable, like flannel's
// FlannelIsUp.
const (
	ReasonUp      = "TwillIsUp"
	messageUp     = "twill is running on this node"
	conditionType = corev1.NodeNetworkUnavailable
)

// Complete sets the own node's NetworkUnavailable condition to False, as
// flannel does once its backend is set up.
func (r *Registry) Complete(ctx context.Context, _ lease.Lease) error {
	now := metav1.Now()
	cond := corev1.NodeCondition{Type: conditionType, Status: corev1.ConditionFalse, Reason: ReasonUp, Message: messageUp,
		LastTransitionTime: now, LastHeartbeatTime: now}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	if _, err := r.client.CoreV1().Nodes().PatchStatus(ctx, r.nodeName, body); err != nil {
		return fmt.Errorf("set condition %s=False on node %q: %w", conditionType, r.nodeName, err)
	}
	return nil
}
