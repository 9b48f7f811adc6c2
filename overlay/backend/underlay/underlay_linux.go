package underlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/lease"
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
		return nil, errors.New("underlay: the node has no network config")
	}
	opts := node.Network.Backend
	if !opts.IsUnderlay() {
		return nil, fmt.Errorf("underlay: backend %q is neither macvlan nor ipvlan", opts.Type)
	}
	if _, err := SubInterface(opts.Type, opts.Mode, netlink.LinkAttrs{}); err != nil {
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
	return backend.Prepared{MTU: mtu, Underlay: &u}, nil
}

// inspect checks the master and returns the underlay it describes.
func (b *Backend) inspect(nl *netlink.Handle) (backend.Underlay, int, error) {
	cfg := b.node.Network
	if b.master == "" {
		return backend.Underlay{}, 0, fmt.Errorf("%s: no master interface: set Backend.Master in the network config, or --iface", b.opts.Type)
	}
	field := "Backend.Master"
	if b.opts.Master == "" {
		field = "the public interface (Backend.Master unset)"
	}
	link, err := nl.LinkByName(b.master)
	if routing.IsNotFound(err) {
		return backend.Underlay{}, 0, fmt.Errorf("%s: master interface %q (%s) does not exist on this node", b.opts.Type, b.master, field)
	}
	if err != nil {
		return backend.Underlay{}, 0, fmt.Errorf("%s: find master interface %q: %w", b.opts.Type, b.master, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return backend.Underlay{}, 0, fmt.Errorf("%s: list addresses of master %s: %w", b.opts.Type, b.master, err)
	}
	var subnets []string
	u := backend.Underlay{Master: b.master, Mode: b.opts.Mode}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
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
		return backend.Underlay{}, 0, fmt.Errorf("%s: Network %s is not inside the subnet of master interface %s (%s): pods on the underlay need addresses of the master's segment",
			b.opts.Type, cfg.Network, b.master, have)
	}
	routes, err := nl.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return backend.Underlay{}, 0, fmt.Errorf("%s: list routes of master %s: %w", b.opts.Type, b.master, err)
	}
	u.Gateway = DefaultGateway(routes)
	mtu := link.Attrs().MTU
	if b.opts.MTU > 0 {
		if b.opts.MTU > mtu {
			return backend.Underlay{}, 0, fmt.Errorf("%s: Backend.MTU %d is more than the MTU %d of master %s; sub-interfaces cannot exceed it", b.opts.Type, b.opts.MTU, mtu, b.master)
		}
		mtu = b.opts.MTU
	}
	return u, min(mtu, 65535), nil
}

// DefaultGateway is the gateway of the IPv4 default route in the main table
// among routes (a link's routes); invalid if there is none. The backend
// publishes it in the subnet file, and the CNI plugin falls back to it.
func DefaultGateway(routes []netlink.Route) netip.Addr {
	for _, r := range routes {
		if r.Gw == nil || r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
				continue
			}
		}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
			return gw
		}
	}
	return netip.Addr{}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
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
	link, err := nl.LinkByName(HostDevice)
	if err == nil && !matches(link, b.opts, master.Attrs().Index) {
		b.log.Warn("replacing a mismatched host interface", "device", HostDevice, "type", link.Type())
		if err := nl.LinkDel(link); err != nil {
			return fmt.Errorf("delete mismatched %s: %w", HostDevice, err)
		}
		err = netlink.LinkNotFoundError{}
	}
	if routing.IsNotFound(err) {
		attrs := netlink.LinkAttrs{Name: HostDevice, ParentIndex: master.Attrs().Index, MTU: master.Attrs().MTU}
		want, err := SubInterface(b.opts.Type, b.opts.Mode, attrs)
		if err != nil {
			return err
		}
		if err := nl.LinkAdd(want); err != nil {
			return fmt.Errorf("create %s (%s %s on %s): %w", HostDevice, b.opts.Type, b.opts.Mode, b.master, err)
		}
		b.log.Info("host interface created", "device", HostDevice, "master", b.master)
		if link, err = nl.LinkByName(HostDevice); err != nil {
			return fmt.Errorf("find %s: %w", HostDevice, err)
		}
	} else if err != nil {
		return fmt.Errorf("find %s: %w", HostDevice, err)
	}
	var errs []error
	if mtu := master.Attrs().MTU; link.Attrs().MTU != mtu {
		if err := nl.LinkSetMTU(link, mtu); err != nil {
			errs = append(errs, fmt.Errorf("set MTU %d on %s: %w", mtu, HostDevice, err))
		}
	}
	errs = append(errs, setOnlyAddress(nl, link, HostAddress(own)))
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := nl.LinkSetUp(link); err != nil {
			errs = append(errs, fmt.Errorf("set %s up: %w", HostDevice, err))
		}
	}
	return errors.Join(errs...)
}

// matches says whether link is a sub-interface of the master of the right
// type and mode.
func matches(link netlink.Link, opts netconf.Backend, masterIndex int) bool {
	if link.Attrs().ParentIndex != masterIndex {
		return false
	}
	want, err := SubInterface(opts.Type, opts.Mode, netlink.LinkAttrs{})
	if err != nil {
		return false
	}
	switch w := want.(type) {
	case *netlink.Macvlan:
		l, ok := link.(*netlink.Macvlan)
		return ok && l.Mode == w.Mode
	case *netlink.IPVlan:
		l, ok := link.(*netlink.IPVlan)
		return ok && l.Mode == w.Mode
	}
	return false
}

func setOnlyAddress(nl *netlink.Handle, link netlink.Link, want netip.Prefix) error {
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", HostDevice, err)
	}
	var errs []error
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		if err := nl.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("delete address %s from %s: %w", a.IPNet, HostDevice, err))
		}
	}
	if !have {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
		if err := nl.AddrAdd(link, a); err != nil {
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

// SubInterface returns the link to create for a pod or the host: a macvlan
// or ipvlan of the given mode with attrs (name, parent, MTU, namespace).
func SubInterface(typ, mode string, attrs netlink.LinkAttrs) (netlink.Link, error) {
	switch typ {
	case netconf.TypeMacvlan:
		m, ok := map[string]netlink.MacvlanMode{
			"bridge": netlink.MACVLAN_MODE_BRIDGE, "private": netlink.MACVLAN_MODE_PRIVATE,
			"vepa": netlink.MACVLAN_MODE_VEPA, "passthru": netlink.MACVLAN_MODE_PASSTHRU,
		}[mode]
		if !ok {
			return nil, fmt.Errorf("unknown macvlan mode %q; known modes are bridge, private, vepa, passthru", mode)
		}
		return &netlink.Macvlan{LinkAttrs: attrs, Mode: m}, nil
	case netconf.TypeIPvlan:
		m, ok := map[string]netlink.IPVlanMode{
			"l2": netlink.IPVLAN_MODE_L2, "l3": netlink.IPVLAN_MODE_L3, "l3s": netlink.IPVLAN_MODE_L3S,
		}[mode]
		if !ok {
			return nil, fmt.Errorf("unknown ipvlan mode %q; known modes are l2, l3, l3s", mode)
		}
		return &netlink.IPVlan{LinkAttrs: attrs, Mode: m}, nil
	}
	return nil, fmt.Errorf("backend %q has no sub-interfaces; want macvlan or ipvlan", typ)
}

var _ backend.Backend = (*Backend)(nil)
