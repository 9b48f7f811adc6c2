// Package daemon wires twilld together: it finds the node's uplink, reads
// the network config, sets up the backend, acquires and keeps the node's
// lease, writes the subnet file, follows the peers' leases, and tells
// systemd where it stands. When a part of it fails for good, it stops and
// says why. It produces read-only status snapshots for the web UI.
//
// It must not parse flags, pick a lease store or a backend (cmd/twilld
// does: they come in through Config), nor serve HTTP (web does).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"golang.org/x/sync/errgroup"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// Registry is the lease store as the daemon uses it: etcd in twilld, an
// in-memory one (overlay/lease/leasetest) in tests.
type Registry interface {
	lease.Registry
	// ConfigKey names where NetworkConfig reads the config, for messages.
	ConfigKey() string
}

// storeName is what the lease store is called in messages: "etcd" unless
// the registry names itself (StoreName: "the Kubernetes API server").
func storeName(r Registry) string {
	if n, ok := r.(interface{ StoreName() string }); ok {
		return n.StoreName()
	}
	return "etcd"
}

// Config is twilld's configuration, as its flags give it, and the parts it
// is built from.
type Config struct {
	// Registry holds the leases and, unless NetConfigFile is set, the
	// network config. The caller owns it (and closes it).
	Registry Registry
	// NewBackend makes the data path for a node; twilld picks a backend by
	// the config's type, tests give a fake.
	NewBackend func(backend.Node, *slog.Logger) (backend.Backend, error)
	// FindUplink, if set, says how the node reaches its peers (PublicIP and
	// the interface fields of backend.Node) instead of looking at the
	// host's interfaces by PublicIP, Ifaces, IfaceRegex and the default
	// route. Tests set it; the daemon fills in the rest of the node.
	FindUplink func() (backend.Node, error)

	// NetConfigFile, if set, is read instead of the config in the registry.
	NetConfigFile string

	PublicIP netip.Addr
	// PublicIPv6 is the node's IPv6 underlay address (flannel's
	// --public-ipv6); by default the first global IPv6 address of the
	// underlay interface. Used only with EnableIPv6.
	PublicIPv6 netip.Addr
	Ifaces     []string
	IfaceRegex []string
	NodeName   string

	SubnetFile string
	// StateDir is where backends keep what survives restarts and reboots
	// (wireguard's private key); DefaultStateDir when empty.
	StateDir       string
	SubnetLeaseTTL time.Duration
	RenewMargin    time.Duration
	IPMasq         bool
	ReleaseOnExit  bool

	// Dashboard is the URL of this node's dashboard, published in its lease
	// for peers' cluster views; empty publishes none.
	Dashboard string

	// ProbeInterval is how often the store is asked whether it answers
	// (lease.Probe) while nothing else talks to it: a stopped etcd is
	// noticed within this and a request timeout. Default 5 s.
	ProbeInterval time.Duration
}

// DefaultStateDir is twilld's state directory unless --state-dir says.
const DefaultStateDir = "/var/lib/twill"

// Validate checks the configuration before anything is done.
func (c *Config) Validate() error {
	var errs []error
	if c.Registry == nil {
		errs = append(errs, errors.New("no lease registry given"))
	}
	if c.NewBackend == nil {
		errs = append(errs, errors.New("no backend factory given"))
	}
	if c.SubnetLeaseTTL < 2*time.Second {
		errs = append(errs, fmt.Errorf("--subnet-lease-ttl %v: must be at least 2s", c.SubnetLeaseTTL))
	}
	if c.RenewMargin <= 0 || c.RenewMargin >= c.SubnetLeaseTTL {
		errs = append(errs, fmt.Errorf("--subnet-lease-renew-margin %v: must be more than 0 and less than --subnet-lease-ttl %v", c.RenewMargin, c.SubnetLeaseTTL))
	}
	if c.SubnetFile == "" {
		errs = append(errs, errors.New("--subnet-file: must not be empty"))
	}
	for _, expr := range c.IfaceRegex {
		// Checked here, before the config is read: the uplink is chosen
		// after.
		if _, err := regexp.Compile(expr); err != nil {
			errs = append(errs, fmt.Errorf("--iface-regex %q: %w", expr, err))
		}
	}
	return errors.Join(errs...)
}

// Daemon is a running twilld.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	reach   *lease.Reachability
	started time.Time

	mu    sync.Mutex
	run   *running // published once, when the backend is prepared
	ready bool

	// handleMu orders the peers' events handed to the backend; peers are
	// the leases it holds as peers' now, by subnet.
	handleMu sync.Mutex
	peers    map[lease.Subnets]lease.Lease
	// impostors are leases of other nodes that publish this node's public
	// IP (Kubernetes: another Node annotated with it): not routed, and
	// reported.
	impostors map[lease.Subnets]lease.Lease
}

// running is what Run set up for the node. It is published once, complete,
// and never changed after; what changes (the lease, the peers, the
// backend's state) its parts report themselves.
type running struct {
	netcfg  *netconf.Config
	node    backend.Node
	be      backend.Backend
	prep    backend.Prepared
	keeper  *lease.Keeper
	watcher *lease.Watcher
}

// New checks cfg. It does no I/O.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	return &Daemon{cfg: cfg, log: log, reach: lease.NewReachability(log, storeName(cfg.Registry)), started: time.Now()}, nil
}

// networkConfig reads the network config from the file, or from the
// registry, waiting for it to appear there.
func (d *Daemon) networkConfig(ctx context.Context) (*netconf.Config, error) {
	if d.cfg.NetConfigFile != "" {
		data, err := os.ReadFile(d.cfg.NetConfigFile)
		if err != nil {
			return nil, fmt.Errorf("read --net-config: %w", err)
		}
		c, err := netconf.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("--net-config %s: %w", d.cfg.NetConfigFile, err)
		}
		return c, nil
	}
	reg := d.cfg.Registry
	var backoff lease.Backoff
	waiting := false
	for {
		data, err := reg.NetworkConfig(ctx)
		switch {
		case err == nil:
			d.reach.OK()
			c, err := netconf.Parse(data)
			if err != nil {
				return nil, fmt.Errorf("network config %s: %w", reg.ConfigKey(), err)
			}
			return c, nil
		case errors.Is(err, lease.ErrNoConfig):
			d.reach.OK()
			if !waiting {
				d.log.Warn("no network config yet; waiting for it", "key", reg.ConfigKey())
				waiting = true
			}
		case ctx.Err() != nil:
			return nil, ctx.Err()
		default:
			d.reach.Fail("read network config", err)
		}
		if !backoff.Wait(ctx) {
			return nil, ctx.Err()
		}
	}
}

// configure finds the uplink, reads the network config and makes the
// backend: what both Run and Cleanup start from.
func (d *Daemon) configure(ctx context.Context) (*netconf.Config, backend.Node, backend.Backend, error) {
	netcfg, err := d.networkConfig(ctx)
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	// The uplink is chosen once the config says which families it needs
	// (flannel reads its config first too).
	find := d.cfg.FindUplink
	if find == nil {
		find = func() (backend.Node, error) {
			u, err := findUnderlay(uplinkFlags{publicIP: d.cfg.PublicIP, publicIPv6: d.cfg.PublicIPv6,
				ifaces: d.cfg.Ifaces, ifaceRegex: d.cfg.IfaceRegex}, underlayFamilies(netcfg))
			return u.backendNode(d.cfg.NodeName), err
		}
	}
	node, err := find()
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	if netcfg.EnableIPv4 && !node.PublicIP.IsValid() {
		return nil, backend.Node{}, nil, fmt.Errorf("the network %s is IPv4, and the uplink %q has no IPv4 address: set --public-ip or --iface", netcfg.Network, node.Iface)
	}
	node.Name = d.cfg.NodeName
	node.Network = netcfg
	if err := ipv6Underlay(&node, netcfg, d.cfg.PublicIPv6, d.log); err != nil {
		return nil, backend.Node{}, nil, err
	}
	node.IPMasq = d.cfg.IPMasq
	node.StateDir = d.cfg.StateDir
	if node.StateDir == "" {
		node.StateDir = DefaultStateDir
	}
	be, err := d.cfg.NewBackend(node, d.log)
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	return netcfg, node, be, nil
}

// Run runs the daemon until ctx ends; call it once. It returns an error if
// the node could not start (ctx's error if ctx ended first), and, once the
// node was ready, the error of the first of its parts (lease keeper, lease
// watcher, backend) that failed or stopped on its own: that part stops the
// others and the node is no longer ready. Passing trouble (the store
// unreachable, a peer's bad lease) is logged and retried; only a part that
// cannot go on fails. A stop by ctx after the node was ready returns nil.
//
// A start that fails after it created a lease gives the lease back and
// removes the backend's kernel state; one it took over from the node's
// earlier run (peers route to it, pods may use it) is kept.
func (d *Daemon) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	r, err := d.start(gctx)
	if err != nil {
		return err
	}
	own := r.keeper.Current()

	d.setReady(true)
	part := func(name string, run func(context.Context) error) {
		g.Go(func() error {
			err := run(gctx)
			if err == nil && gctx.Err() == nil {
				err = errors.New("stopped before the daemon did")
			}
			if err == nil {
				return nil
			}
			d.setReady(false)
			d.log.Error(name+" failed; stopping", "err", err)
			return fmt.Errorf("%s: %w", name, err)
		})
	}
	part("lease keeper", r.keeper.Run)
	part("lease watcher", func(ctx context.Context) error {
		return r.watcher.Run(ctx, func(ctx context.Context, evs []lease.Event) { d.handleEvents(ctx, r, evs) })
	})
	part(r.be.Type()+" backend", r.be.Run)
	part("store probe", func(ctx context.Context) error {
		return lease.Probe(ctx, d.cfg.Registry, d.reach, d.cfg.ProbeInterval)
	})

	if ok, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		d.log.Warn("notify systemd", "err", err)
	} else if ok {
		d.log.Debug("told systemd READY=1")
	}
	d.log.Info("ready", "subnet", own.Subnets(), "subnet_file", d.cfg.SubnetFile)

	<-gctx.Done()
	d.setReady(false)
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyStopping); err != nil {
		d.log.Warn("notify systemd", "err", err)
	}
	d.log.Info("stopping")
	errs := []error{g.Wait()}
	if d.cfg.ReleaseOnExit {
		if err := d.release(r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// start sets the node up: the backend prepared, the running state
// published, the lease acquired and handed to the backend, the subnet file
// written. What fails after a lease was created is undone.
func (d *Daemon) start(ctx context.Context) (*running, error) {
	netcfg, node, be, err := d.configure(ctx)
	if err != nil {
		return nil, err
	}
	d.log.Info("starting", "node", node.Name, "public_ip", node.PublicIP, "iface", node.Iface,
		"network", netcfg.Network, "backend", netcfg.Backend.Type)
	prep, err := be.Prepare(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare %s backend: %w", be.Type(), err)
	}

	var previous, previous6 netip.Prefix
	if f, err := subnetfile.Read(d.cfg.SubnetFile); err == nil {
		if f.Network.IsValid() && f.Network == netcfg.Network {
			previous = f.NodeSubnet()
		}
		if f.IPv6Network.IsValid() && f.IPv6Network == netcfg.IPv6Network {
			previous6 = f.IPv6NodeSubnet()
		}
	}
	r := &running{netcfg: netcfg, node: node, be: be, prep: prep}
	r.keeper = &lease.Keeper{
		Registry: d.cfg.Registry,
		Request: lease.Request{
			Config: netcfg,
			Attrs: lease.Attrs{PublicIP: node.PublicIP, PublicIPv6: node.PublicIPv6, BackendType: be.Type(), BackendData: prep.BackendData,
				BackendV6Data: prep.BackendV6Data,
				Twill:         &lease.NodeInfo{Node: node.Name, Dashboard: d.cfg.Dashboard}},
			TTL:          d.cfg.SubnetLeaseTTL,
			Previous:     previous,
			PreviousIPv6: previous6,
		},
		RenewMargin: d.cfg.RenewMargin,
		Log:         d.log,
		Reach:       d.reach,
		// A lease lost and acquired again (perhaps another subnet) reaches
		// the backend and the subnet file here, on the keeper's goroutine.
		OnChange: func(old, l lease.Lease) {
			if err := d.useLease(ctx, r, l); err != nil {
				d.log.Error("use the new lease", "subnet", l.Subnets(), "err", err)
			}
			d.handOver(ctx, r, old, l)
		},
	}
	r.watcher = &lease.Watcher{Registry: d.cfg.Registry, Log: d.log, Reach: d.reach}
	d.mu.Lock()
	d.run = r
	d.mu.Unlock()

	own, err := r.keeper.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	d.log.Info("lease acquired", "subnet", own.Subnets(), "expires", own.Expiration, "reservation", own.Reservation)
	if err := d.useLease(ctx, r, own); err != nil {
		return nil, errors.Join(err, d.undoStart(r))
	}
	if c, ok := d.cfg.Registry.(lease.Completer); ok {
		// The store is told the node is set up (Kubernetes: the node's
		// NetworkUnavailable condition goes False).
		if err := c.Complete(ctx, own); err != nil {
			return nil, errors.Join(fmt.Errorf("tell the lease store the node is set up: %w", err), d.undoStart(r))
		}
	}
	return r, nil
}

// useLease hands the node's lease to the backend and the subnet file.
func (d *Daemon) useLease(ctx context.Context, r *running, l lease.Lease) error {
	if err := r.be.SetLease(ctx, l); err != nil {
		return fmt.Errorf("set up %s backend for %s: %w", r.be.Type(), l.Subnets(), err)
	}
	return d.writeSubnetFile(r, l)
}

// undoStart gives back a lease the failed start created, and the backend's
// kernel state with it: peers would route to the subnet for a whole TTL,
// and the kernel would carry a subnet the node does not hold. A lease taken
// over from the node's earlier run is kept: peers already route to it, pods
// on the node may still use it, and the restart systemd makes takes it
// again (or it expires).
func (d *Daemon) undoStart(r *running) error {
	cur := r.keeper.Current()
	if !r.keeper.Created() {
		d.log.Warn("start failed; keeping the lease of the earlier run", "subnet", cur.Subnets())
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	if err := r.keeper.Release(ctx); err != nil {
		errs = append(errs, err)
	} else {
		d.log.Info("start failed; lease given back", "subnet", cur.Subnets())
	}
	if err := r.be.Cleanup(ctx); err != nil {
		errs = append(errs, fmt.Errorf("clean up %s backend: %w", r.be.Type(), err))
	}
	return errors.Join(errs...)
}

// release gives the lease back as the daemon stops (--release-on-exit).
func (d *Daemon) release(r *running) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.keeper.Release(ctx); err != nil {
		return err
	}
	d.log.Info("lease released", "subnet", r.keeper.Current().Subnets())
	return nil
}

// handleEvents passes peers' events to the backend. Events about the node's
// own subnet are not a peer's: if someone else changed or removed it, the
// keeper is asked to check its lease at once. Nor is a lease that carries
// the node's public IP (a reservation made for it, the lease it is moving
// to): the backend is not given it, and loses it if it held it as a peer's.
func (d *Daemon) handleEvents(ctx context.Context, r *running, evs []lease.Event) {
	d.handleMu.Lock()
	defer d.handleMu.Unlock()
	own := r.keeper.Current()
	peers := evs[:0:0]
	for _, e := range evs {
		switch {
		case e.Lease.Subnets() == own.Subnets():
			if e.Type == lease.Expired || !e.Lease.Attrs.SameNode(own.Attrs) {
				r.keeper.Check()
			}
		case e.Lease.Attrs.SameNode(own.Attrs):
			if p, held := d.peers[e.Lease.Subnets()]; held {
				peers = append(peers, lease.Event{Type: lease.Expired, Lease: p})
			}
			d.noteImpostor(e, r.node.Name)
		default:
			delete(d.impostors, e.Lease.Subnets())
			peers = append(peers, e)
		}
	}
	d.handPeers(ctx, r, peers)
}

// noteImpostor remembers (or forgets, when it expired) a lease of another
// named node that publishes this node's public IP. A lease of this node's
// own (a reservation for its IP, the lease it is moving to) names no other
// node. The caller holds handleMu.
func (d *Daemon) noteImpostor(e lease.Event, self string) {
	t := e.Lease.Attrs.Twill
	if e.Type == lease.Expired || t == nil || t.Node == "" || t.Node == self {
		delete(d.impostors, e.Lease.Subnets())
		return
	}
	if d.impostors == nil {
		d.impostors = map[lease.Subnets]lease.Lease{}
	}
	d.impostors[e.Lease.Subnets()] = e.Lease
}

// handPeers hands peers' events to the backend and notes which peers it
// holds. The caller holds handleMu.
func (d *Daemon) handPeers(ctx context.Context, r *running, evs []lease.Event) {
	if len(evs) == 0 {
		return
	}
	if d.peers == nil {
		d.peers = make(map[lease.Subnets]lease.Lease)
	}
	for _, e := range evs {
		d.log.Debug("peer lease", "event", e.Type, "subnet", e.Lease.Subnets(), "node", e.Lease.Attrs.NodeName())
		if e.Type == lease.Expired {
			delete(d.peers, e.Lease.Subnets())
		} else {
			d.peers[e.Lease.Subnets()] = e.Lease
		}
	}
	if err := r.be.Handle(ctx, evs); err != nil {
		d.log.Error("backend could not apply peer events", "err", err)
	}
}

// handOver brings the backend's peers in line after the node moved from
// subnet old to l. The lease now at old is a peer's: its events came while
// old was the node's own and were kept from the backend. A peer the backend
// holds at l is gone (the node holds l now): its end may come late, as an
// event about the node's own subnet, which the backend is not given.
func (d *Daemon) handOver(ctx context.Context, r *running, old, l lease.Lease) {
	if old.Subnets() == l.Subnets() {
		return
	}
	d.handleMu.Lock()
	defer d.handleMu.Unlock()
	var evs []lease.Event
	for s, p := range d.peers {
		if s.Shares(l.Subnets()) {
			evs = append(evs, lease.Event{Type: lease.Expired, Lease: p})
		}
	}
	for _, p := range r.watcher.Leases() {
		if p.Subnets().Shares(old.Subnets()) && !p.Subnets().Shares(l.Subnets()) && !p.Attrs.SameNode(l.Attrs) {
			evs = append(evs, lease.Event{Type: lease.Added, Lease: p})
		}
	}
	d.handPeers(ctx, r, evs)
}

// writeSubnetFile writes the node's lease for the CNI plugin; for the
// sublink backends also the backend type and where pods attach.
func (d *Daemon) writeSubnetFile(r *running, l lease.Lease) error {
	f := subnetfile.File{MTU: r.prep.MTU, IPMasq: d.cfg.IPMasq}
	if l.Subnet.IsValid() {
		f.Network, f.Subnet = r.netcfg.Network, netip.PrefixFrom(netconf.Gateway(l.Subnet), l.Subnet.Bits())
	}
	if l.IPv6Subnet.IsValid() {
		f.IPv6Network, f.IPv6Subnet = r.netcfg.IPv6Network, netip.PrefixFrom(netconf.Gateway(l.IPv6Subnet), l.IPv6Subnet.Bits())
	}
	if u := r.prep.Sublink; u != nil {
		f.Backend = r.netcfg.Backend.Type
		f.Sublink = subnetfile.Sublink{Master: u.Master, Mode: u.Mode, Subnet: u.Subnet, Gateway: u.Gateway}
	}
	if err := subnetfile.Write(d.cfg.SubnetFile, f); err != nil {
		return err
	}
	return nil
}

func (d *Daemon) setReady(v bool) {
	d.mu.Lock()
	d.ready = v
	d.mu.Unlock()
}

// state is what Run published (nil before the backend was prepared) and
// whether the node is ready.
func (d *Daemon) state() (*running, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.run, d.ready
}

// Cleanup removes the kernel state of the configured backend (twilld
// --cleanup). It needs the network config to know the backend.
func (d *Daemon) Cleanup(ctx context.Context) error {
	_, _, be, err := d.configure(ctx)
	if err != nil {
		return err
	}
	if err := be.Cleanup(ctx); err != nil {
		return fmt.Errorf("clean up %s backend: %w", be.Type(), err)
	}
	return nil
}
