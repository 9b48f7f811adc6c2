package sublink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/link"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
)

// HostDevice is the node's own sub-interface of the master.
const HostDevice = "twill.host"

// Backend is the macvlan or ipvlan backend.
type Backend struct {
	node   backend.Node
	opts   netconf.Backend
	master string
	log    *slog.Logger
	// Router keeps twill.host, the l3 modes' routes and the nftables
	// rules; it gives the backend Handle, Run, Resync, Cleanup and Close.
	*routing.Router
}

// New returns the backend for node (its network config's backend type is
// macvlan or ipvlan), working in node.NetNS. It changes nothing yet.
func New(node backend.Node, log *slog.Logger) (*Backend, error) {
	if node.Network == nil {
		return nil, errors.New("sublink: the node has no network config")
	}
	opts := node.Network.Backend
	if !opts.IsSublink() {
		return nil, fmt.Errorf("sublink: backend %q is neither macvlan nor ipvlan", opts.Type)
	}
	if _, err := link.SubInterface(opts.Type, opts.Mode, netlink.LinkAttrs{}); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{node: node, opts: opts, master: cmpOr(opts.Master, node.Iface), log: log.With("backend", opts.Type, "mode", opts.Mode)}
	cfg := routing.Config{Node: node, Backend: opts, Log: log}
	if plan.RoutesPeerSlices(opts) {
		// Peers' slices are routed via their public IPs, as host-gw does;
		// the plan knows this mode.
		cfg.Node.Iface = b.master
	}
	if HostReachesPods(opts) {
		cfg.Device = HostDevice
		cfg.EnsureDevice = b.ensureHost
	}
	r, err := routing.New(cfg)
	if err != nil {
		return nil, err
	}
	b.Router = r
	return b, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// HostReachesPods says whether twill.host can exist in the mode: not in
// macvlan private mode (children may not talk to each other) nor passthru
// (the master takes one child only, the pod).
func HostReachesPods(b netconf.Backend) bool {
	return !(b.Type == netconf.TypeMacvlan && (b.Mode == "private" || b.Mode == "passthru"))
}

// Type is "macvlan" or "ipvlan".
func (b *Backend) Type() string { return b.opts.Type }

// Mode is the macvlan or ipvlan mode.
func (b *Backend) Mode() string { return b.opts.Mode }

// Prepare checks the master and the network config against it and returns
// the master's MTU and where pods attach.
func (b *Backend) Prepare(context.Context) (backend.Prepared, error) {
	u, mtu, err := b.inspect(b.Netlink())
	if err != nil {
		return backend.Prepared{}, err
	}
	b.log.Info("pods attach to the underlay", "master", u.Master, "subnet", u.Subnet, "gateway", u.Gateway, "mtu", mtu)
	return backend.Prepared{MTU: mtu, Sublink: &u}, nil
}

// inspect checks the master and returns where pods attach to it.
func (b *Backend) inspect(nl *netlink.Handle) (backend.Sublink, int, error) {
	cfg := b.node.Network
	if b.master == "" {
		return backend.Sublink{}, 0, fmt.Errorf("%s: no master interface: set Backend.Master in the network config, or --iface", b.opts.Type)
	}
	field := "Backend.Master"
	if b.opts.Master == "" {
		field = "the public interface (Backend.Master unset)"
	}
	mlink, err := nl.LinkByName(b.master)
	if routing.IsNotFound(err) {
		return backend.Sublink{}, 0, fmt.Errorf("%s: master interface %q (%s) does not exist on this node", b.opts.Type, b.master, field)
	}
	if err != nil {
		return backend.Sublink{}, 0, fmt.Errorf("%s: find master interface %q: %w", b.opts.Type, b.master, err)
	}
	addrs, err := nl.AddrList(mlink, netlink.FAMILY_V4)
	if err != nil {
		return backend.Sublink{}, 0, fmt.Errorf("%s: list addresses of master %s: %w", b.opts.Type, b.master, err)
	}
	var subnets []string
	u := backend.Sublink{Master: b.master, Mode: b.opts.Mode}
	for _, a := range addrs {
		p, ok := link.Prefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		subnets = append(subnets, p.Masked().String())
		if p.Bits() <= cfg.Network.Bits() && p.Masked().Contains(cfg.Network.Addr()) {
			u.Subnet = p.Masked()
			if cfg.Network.Contains(p.Addr()) {
				b.log.Warn("the pod range holds the master's own address; a pod may be given it", "network", cfg.Network, "addr", p.Addr())
			}
			break
		}
	}
	if !u.Subnet.IsValid() {
		have := "no IPv4 address"
		if len(subnets) > 0 {
			have = "subnet " + strings.Join(subnets, ", ")
		}
		return backend.Sublink{}, 0, fmt.Errorf("%s: Network %s is not inside the subnet of master interface %s (%s): pods on the underlay need addresses of the master's segment",
			b.opts.Type, cfg.Network, b.master, have)
	}
	routes, err := nl.RouteList(mlink, netlink.FAMILY_V4)
	if err != nil {
		return backend.Sublink{}, 0, fmt.Errorf("%s: list routes of master %s: %w", b.opts.Type, b.master, err)
	}
	u.Gateway = link.DefaultGateway(routes)
	mtu := mlink.Attrs().MTU
	if b.opts.MTU > 0 {
		if b.opts.MTU > mtu {
			return backend.Sublink{}, 0, fmt.Errorf("%s: Backend.MTU %d is more than the MTU %d of master %s; sub-interfaces cannot exceed it", b.opts.Type, b.opts.MTU, mtu, b.master)
		}
		mtu = b.opts.MTU
	}
	return u, min(mtu, 65535), nil
}

// HostAddress is twill.host's address in a slice: the slice's first
// address, with the slice's length (so the kernel routes the slice to it).
func HostAddress(slice netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(netconf.Gateway(slice), slice.Bits())
}

// ensureHost creates or repairs twill.host: a sub-interface of the master
// in the configured mode, up, with the MTU of the master and the slice's
// first address as its only IPv4 address. Called before every reconcile
// pass.
func (b *Backend) ensureHost(nl *netlink.Handle, own netip.Prefix) error {
	if !own.IsValid() {
		return nil
	}
	master, err := nl.LinkByName(b.master)
	if err != nil {
		return fmt.Errorf("find master %s: %w", b.master, err)
	}
	host, err := nl.LinkByName(HostDevice)
	if err == nil && !matches(host, b.opts, master.Attrs().Index) {
		b.log.Warn("replacing a mismatched host interface", "device", HostDevice, "type", host.Type())
		if err := nl.LinkDel(host); err != nil {
			return fmt.Errorf("delete mismatched %s: %w", HostDevice, err)
		}
		err = netlink.LinkNotFoundError{}
	}
	if routing.IsNotFound(err) {
		attrs := netlink.LinkAttrs{Name: HostDevice, ParentIndex: master.Attrs().Index, MTU: master.Attrs().MTU}
		want, err := link.SubInterface(b.opts.Type, b.opts.Mode, attrs)
		if err != nil {
			return err
		}
		if err := nl.LinkAdd(want); err != nil {
			return fmt.Errorf("create %s (%s %s on %s): %w", HostDevice, b.opts.Type, b.opts.Mode, b.master, err)
		}
		b.log.Info("host interface created", "device", HostDevice, "master", b.master)
		if host, err = nl.LinkByName(HostDevice); err != nil {
			return fmt.Errorf("find %s: %w", HostDevice, err)
		}
	} else if err != nil {
		return fmt.Errorf("find %s: %w", HostDevice, err)
	}
	var errs []error
	if mtu := master.Attrs().MTU; host.Attrs().MTU != mtu {
		if err := nl.LinkSetMTU(host, mtu); err != nil {
			errs = append(errs, fmt.Errorf("set MTU %d on %s: %w", mtu, HostDevice, err))
		}
	}
	errs = append(errs, setOnlyAddress(nl, host, HostAddress(own)))
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := nl.LinkSetUp(host); err != nil {
			errs = append(errs, fmt.Errorf("set %s up: %w", HostDevice, err))
		}
	}
	return errors.Join(errs...)
}

// matches says whether have is a sub-interface of the master of the right
// type and mode.
func matches(have netlink.Link, opts netconf.Backend, masterIndex int) bool {
	if have.Attrs().ParentIndex != masterIndex {
		return false
	}
	want, err := link.SubInterface(opts.Type, opts.Mode, netlink.LinkAttrs{})
	if err != nil {
		return false
	}
	switch w := want.(type) {
	case *netlink.Macvlan:
		l, ok := have.(*netlink.Macvlan)
		return ok && l.Mode == w.Mode
	case *netlink.IPVlan:
		l, ok := have.(*netlink.IPVlan)
		return ok && l.Mode == w.Mode
	}
	return false
}

func setOnlyAddress(nl *netlink.Handle, host netlink.Link, want netip.Prefix) error {
	addrs, err := nl.AddrList(host, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", HostDevice, err)
	}
	var errs []error
	have := false
	for _, a := range addrs {
		p, ok := link.Prefix(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		if err := nl.AddrDel(host, &a); err != nil {
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", a.IPNet, HostDevice, err))
		}
	}
	if !have {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
		if err := nl.AddrAdd(host, a); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", want, HostDevice, err))
		}
	}
	return errors.Join(errs...)
}

// SetLease gives twill.host the slice's first address (and, in l3 modes,
// replans the peers' routes).
func (b *Backend) SetLease(ctx context.Context, own lease.Lease) error {
	if err := b.Router.SetLease(ctx, own); err != nil {
		return err
	}
	return b.EnsureDevice()
}

// Status reports the mode, whether twill.host is in place and, in l3 modes,
// the peers' routes with their counters.
func (b *Backend) Status() backend.Status {
	st := b.Router.Status()
	st.Mode = b.opts.Mode
	if !HostReachesPods(b.opts) {
		st.Problems = append(st.Problems, fmt.Sprintf("macvlan %s mode: the node cannot reach its own pods (no %s)", b.opts.Mode, HostDevice))
	}
	return st
}

var _ backend.Backend = (*Backend)(nil)
