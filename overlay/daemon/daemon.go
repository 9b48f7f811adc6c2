// Package daemon wires twilld together: it finds the node's underlay, reads
// the network config, sets up the backend, acquires and keeps the node's
// lease, writes the subnet file, follows the peers' leases, and tells
// systemd where it stands. It produces read-only status snapshots for the
// web UI.
//
// It must not parse flags (cmd/twilld does) nor serve HTTP (web does).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/alloc"
	"github.com/twillnet/twill/overlay/backend/udp"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// Config is twilld's configuration, as its flags give it.
type Config struct {
	Etcd etcd.Config

	// NetConfigFile, if set, is read instead of <prefix>/config in etcd.
	NetConfigFile string

	PublicIP   netip.Addr
	Ifaces     []string
	IfaceRegex []string
	NodeName   string

	SubnetFile     string
	SubnetLeaseTTL time.Duration
	RenewMargin    time.Duration
	IPMasq         bool
	ReleaseOnExit  bool

	// Dashboard is the URL of this node's dashboard, published in its lease
	// for peers' cluster views; empty publishes none.
	Dashboard string
}

// Validate checks the configuration before anything is done.
func (c *Config) Validate() error {
	var errs []error
	if c.SubnetLeaseTTL < 2*time.Second {
		errs = append(errs, fmt.Errorf("--subnet-lease-ttl %v: must be at least 2s", c.SubnetLeaseTTL))
	}
	if c.RenewMargin <= 0 || c.RenewMargin >= c.SubnetLeaseTTL {
		errs = append(errs, fmt.Errorf("--subnet-lease-renew-margin %v: must be more than 0 and less than --subnet-lease-ttl %v", c.RenewMargin, c.SubnetLeaseTTL))
	}
	if c.SubnetFile == "" {
		errs = append(errs, errors.New("--subnet-file: must not be empty"))
	}
	if len(c.Etcd.Endpoints) == 0 && c.NetConfigFile == "" {
		errs = append(errs, errors.New("--etcd-endpoints: must name at least one endpoint"))
	}
	return errors.Join(errs...)
}

// Daemon is a running twilld.
type Daemon struct {
	cfg Config
	log *slog.Logger

	reg     *etcd.Registry
	reach   *lease.Reachability
	netcfg  *netconf.Config
	node    backend.Node
	be      backend.Backend
	keeper  *lease.Keeper
	watcher *lease.Watcher
	started time.Time

	mu    sync.Mutex
	ready bool
	mtu   int
}

// New checks cfg and connects to etcd (without waiting for it to answer).
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	cfg.Etcd.Log = log
	reg, err := etcd.New(cfg.Etcd)
	if err != nil {
		return nil, err
	}
	return &Daemon{cfg: cfg, log: log, reg: reg, reach: lease.NewReachability(log, "etcd"), started: time.Now()}, nil
}

// Close releases the etcd connection.
func (d *Daemon) Close() error { return d.reg.Close() }

// networkConfig reads the network config from the file, or from etcd,
// waiting for it to appear there.
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
	var backoff lease.Backoff
	waiting := false
	for {
		data, err := d.reg.NetworkConfig(ctx)
		switch {
		case err == nil:
			d.reach.OK()
			c, err := netconf.Parse(data)
			if err != nil {
				return nil, fmt.Errorf("%s/config in etcd: %w", d.reg.Prefix(), err)
			}
			return c, nil
		case errors.Is(err, lease.ErrNoConfig):
			d.reach.OK()
			if !waiting {
				d.log.Warn("no network config in etcd yet; waiting for it", "key", d.reg.Prefix()+"/config")
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

// newBackend picks the backend for the config.
func newBackend(node backend.Node, log *slog.Logger) (backend.Backend, error) {
	switch t := node.Network.Backend.Type; t {
	case netconf.TypeAlloc:
		return alloc.New(node), nil
	case netconf.TypeVXLAN, netconf.TypeHostGW, netconf.TypeIPIP, netconf.TypeMacvlan, netconf.TypeIPvlan:
		return newKernelBackend(node, log)
	case netconf.TypeUDP:
		return udp.New(node, log)
	default:
		return nil, fmt.Errorf("backend %q is not available in this twilld yet", t)
	}
}

// configure finds the underlay, reads the network config and picks the
// backend: what both Run and Cleanup start from.
func (d *Daemon) configure(ctx context.Context) (*netconf.Config, backend.Node, backend.Backend, error) {
	u, err := findUnderlay(d.cfg.PublicIP, d.cfg.Ifaces, d.cfg.IfaceRegex)
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	netcfg, err := d.networkConfig(ctx)
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	node := u.backendNode(d.cfg.NodeName)
	node.Network = netcfg
	node.IPMasq = d.cfg.IPMasq
	be, err := newBackend(node, d.log)
	if err != nil {
		return nil, backend.Node{}, nil, err
	}
	return netcfg, node, be, nil
}

// Run runs the daemon until ctx ends. It returns an error only if the node
// could not start; after it is ready, trouble is logged and retried.
func (d *Daemon) Run(ctx context.Context) error {
	netcfg, node, be, err := d.configure(ctx)
	if err != nil {
		return err
	}
	d.log.Info("starting", "node", node.Name, "public_ip", node.PublicIP, "iface", node.Iface,
		"network", netcfg.Network, "backend", netcfg.Backend.Type)
	d.mu.Lock()
	d.netcfg, d.node, d.be = netcfg, node, be
	d.mu.Unlock()
	prep, err := be.Prepare(ctx)
	if err != nil {
		return fmt.Errorf("prepare %s backend: %w", be.Type(), err)
	}

	var previous netip.Prefix
	if f, err := subnetfile.Read(d.cfg.SubnetFile); err == nil && f.Network == netcfg.Network {
		previous = f.NodeSubnet()
	}
	keeper := &lease.Keeper{
		Registry: d.reg,
		Request: lease.Request{
			Config: netcfg,
			Attrs: lease.Attrs{PublicIP: node.PublicIP, BackendType: be.Type(), BackendData: prep.BackendData,
				Twill: &lease.NodeInfo{Node: node.Name, Dashboard: d.cfg.Dashboard}},
			TTL:      d.cfg.SubnetLeaseTTL,
			Previous: previous,
		},
		RenewMargin: d.cfg.RenewMargin,
		Log:         d.log,
		Reach:       d.reach,
	}
	d.mu.Lock()
	d.keeper = keeper
	d.mu.Unlock()
	own, err := keeper.Acquire(ctx)
	if err != nil {
		return err
	}
	d.log.Info("lease acquired", "subnet", own.Subnet, "expires", own.Expiration, "reservation", own.Reservation)
	if err := be.SetLease(ctx, own); err != nil {
		return fmt.Errorf("set up %s backend for %s: %w", be.Type(), own.Subnet, err)
	}
	if err := d.writeSubnetFile(own, prep); err != nil {
		return err
	}

	// A lease lost and acquired again (perhaps another subnet) reaches the
	// backend and the subnet file here, on the keeper's goroutine.
	keeper.OnChange = func(old, l lease.Lease) {
		if err := be.SetLease(ctx, l); err != nil {
			d.log.Error("set up backend for the new lease", "subnet", l.Subnet, "err", err)
		}
		if err := d.writeSubnetFile(l, prep); err != nil {
			d.log.Error("write subnet file", "err", err)
		}
	}
	watcher := &lease.Watcher{Registry: d.reg, Log: d.log, Reach: d.reach}
	d.mu.Lock()
	d.watcher, d.mtu = watcher, prep.MTU
	d.mu.Unlock()

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() { errc <- keeper.Run(ctx) })
	wg.Go(func() { errc <- watcher.Run(ctx, d.handleEvents) })
	wg.Go(func() { errc <- be.Run(ctx) })

	d.setReady(true)
	if ok, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		d.log.Warn("notify systemd", "err", err)
	} else if ok {
		d.log.Debug("told systemd READY=1")
	}
	d.log.Info("ready", "subnet", own.Subnet, "subnet_file", d.cfg.SubnetFile)

	<-ctx.Done()
	d.setReady(false)
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyStopping); err != nil {
		d.log.Warn("notify systemd", "err", err)
	}
	d.log.Info("stopping")
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if d.cfg.ReleaseOnExit {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := keeper.Release(rctx); err != nil {
			errs = append(errs, err)
		} else {
			d.log.Info("lease released", "subnet", keeper.Current().Subnet)
		}
	}
	return errors.Join(errs...)
}

// handleEvents passes peers' events to the backend. Events about the node's
// own subnet are not a peer's: if someone else changed or removed it, the
// keeper is asked to check its lease at once.
func (d *Daemon) handleEvents(ctx context.Context, evs []lease.Event) {
	own := d.keeper.Current()
	peers := evs[:0:0]
	for _, e := range evs {
		if e.Lease.Subnet == own.Subnet {
			if e.Type == lease.Expired || e.Lease.Attrs.PublicIP != own.Attrs.PublicIP {
				d.keeper.Check()
			}
			continue
		}
		d.log.Debug("peer lease", "event", e.Type, "subnet", e.Lease.Subnet, "public_ip", e.Lease.Attrs.PublicIP)
		peers = append(peers, e)
	}
	if len(peers) == 0 {
		return
	}
	if err := d.be.Handle(ctx, peers); err != nil {
		d.log.Error("backend could not apply peer events", "err", err)
	}
}

// writeSubnetFile writes the node's lease for the CNI plugin; for the
// underlay backends also the backend type and where pods attach.
func (d *Daemon) writeSubnetFile(l lease.Lease, prep backend.Prepared) error {
	f := subnetfile.File{
		Network: d.netcfg.Network,

		Subnet: netip.PrefixFrom(netconf.Gateway(l.Subnet), l.Subnet.Bits()),
		MTU:    prep.MTU,
		IPMasq: d.cfg.IPMasq,
	}
	if u := prep.Underlay; u != nil {
		f.Backend = d.netcfg.Backend.Type
		f.Underlay = subnetfile.Underlay{Master: u.Master, Mode: u.Mode, Subnet: u.Subnet, Gateway: u.Gateway}
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
