package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
	"github.com/twillnet/twill/overlay/netconf"
)

func init() {
	register("etcd", "run a one-member etcd in this process (for one machine: labs, trying twill)", runEtcd)
	register("config put", "validate a network config file (or - for stdin) and put it into etcd", runConfigPut)
	register("config get", "print the network config in etcd", runConfigGet)
	register("config check", "validate a network config file and print it with its defaults", runConfigCheck)
	register("leases", "list the subnet leases (from etcd, a node's API with --node, or the Kubernetes nodes with --kubeconfig)", runLeases)
	register("reserve", "reserve SUBNET [IPV6-SUBNET] for PUBLIC-IP [PUBLIC-IPV6]: a lease without TTL, never given to another node", runReserve)
	register("unreserve", "remove the reservation that holds SUBNET (of either family)", runUnreserve)
}

func runEtcd(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("etcd")
	dataDir := fs.String("data-dir", "", "where etcd keeps its data (required)")
	client := fs.String("listen-client-urls", "http://127.0.0.1:2379", "where clients connect; comma-separated, the first is advertised (more may be unix:///PATH sockets)")
	peer := fs.String("listen-peer-urls", "", "peer listener (default: a free port on the client host)")
	logLevel := fs.String("log-level", "fatal", "etcd's own log level (debug, info, warn, error, fatal)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	var urls []string
	for _, u := range strings.Split(*client, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return errors.New("--listen-client-urls is empty")
	}
	srv, err := embedded.Start(embedded.Config{DataDir: *dataDir, ClientURL: urls[0], MoreClientURLs: urls[1:], PeerURL: *peer, LogLevel: *logLevel})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(out, "etcd ready at %s (data in %s)\n", srv.ClientURL(), *dataDir)
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Err():
		return err
	}
}

// etcdFlags adds the flags to reach etcd and returns a function that
// connects with them.
func etcdFlags(fs interface {
	StringVar(p *string, name, value, usage string)
}) func() (*etcd.Registry, error) {
	var endpoints string
	var c etcd.Config
	fs.StringVar(&endpoints, "etcd-endpoints", envOr("TWILLD_ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "comma-separated etcd endpoints")
	fs.StringVar(&c.Prefix, "etcd-prefix", envOr("TWILLD_ETCD_PREFIX", etcd.DefaultPrefix), "etcd key prefix")
	fs.StringVar(&c.CAFile, "etcd-cafile", os.Getenv("TWILLD_ETCD_CAFILE"), "CA certificate file")
	fs.StringVar(&c.CertFile, "etcd-certfile", os.Getenv("TWILLD_ETCD_CERTFILE"), "client certificate file")
	fs.StringVar(&c.KeyFile, "etcd-keyfile", os.Getenv("TWILLD_ETCD_KEYFILE"), "client key file")
	fs.StringVar(&c.Username, "etcd-username", os.Getenv("TWILLD_ETCD_USERNAME"), "etcd user name")
	fs.StringVar(&c.Password, "etcd-password", os.Getenv("TWILLD_ETCD_PASSWORD"), "etcd password")
	return func() (*etcd.Registry, error) {
		for _, e := range strings.Split(endpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				c.Endpoints = append(c.Endpoints, e)
			}
		}
		c.DialTimeout = 3 * time.Second
		return etcd.New(c)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func readConfigArg(fs interface {
	Arg(int) string
	NArg() int
}) ([]byte, *netconf.Config, error) {
	if fs.NArg() != 1 {
		return nil, nil, errors.New("want one argument: the network config file, or - for stdin")
	}
	var data []byte
	var err error
	if fs.Arg(0) == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(fs.Arg(0))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read network config: %w", err)
	}
	cfg, err := netconf.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	return data, cfg, nil
}

func runConfigPut(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("config put")
	connect := etcdFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	data, cfg, err := readConfigArg(fs)
	if err != nil {
		return err
	}
	reg, err := connect()
	if err != nil {
		return err
	}
	defer reg.Close()
	// The config goes in as written (flannel nodes may read it too).
	if err := reg.PutNetworkConfig(ctx, data); err != nil {
		return err
	}
	var nets []string
	for _, r := range []netconf.SubnetRange{cfg.IPv4(), cfg.IPv6()} {
		if r.Enabled() {
			nets = append(nets, fmt.Sprintf("network %s, /%d subnets (%d leasable)", r.Network, r.SubnetLen, r.Count()))
		}
	}
	fmt.Fprintf(out, "network config put at %s/config: %s, backend %s\n", reg.Prefix(), strings.Join(nets, "; "), cfg.Backend.Type)
	return nil
}

func runConfigGet(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("config get")
	connect := etcdFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	reg, err := connect()
	if err != nil {
		return err
	}
	defer reg.Close()
	data, err := reg.NetworkConfig(ctx)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", data)
	return err
}

func runConfigCheck(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("config check")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, cfg, err := readConfigArg(fs)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

func runLeases(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("leases")
	connect := etcdFlags(fs)
	format := fs.String("o", "table", "output: table or json")
	node := fs.String("node", os.Getenv("TWILL_NODE"), "read the leases from this node's dashboard API (URL, as http://192.168.56.11:9180) instead of etcd")
	k := kubeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *node != "" {
		return apiLeases(ctx, *node, *format, out)
	}
	if k.kubeconfig != "" {
		return kubeLeases(ctx, k, *format, out)
	}
	reg, err := connect()
	if err != nil {
		return err
	}
	defer reg.Close()
	leases, _, err := reg.List(ctx)
	if err != nil {
		return err
	}
	switch *format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(leases)
	case "table":
	default:
		return fmt.Errorf("-o %q: want table or json", *format)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	// The IPv6 columns appear once a lease has an IPv6 half or address.
	dual := slices.ContainsFunc(leases, func(l lease.Lease) bool { return l.IPv6Subnet.IsValid() || l.Attrs.PublicIPv6.IsValid() })
	if dual {
		fmt.Fprintln(tw, "SUBNET\tIPV6 SUBNET\tPUBLIC IP\tPUBLIC IPV6\tNODE\tBACKEND\tEXPIRES")
	} else {
		fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tNODE\tBACKEND\tEXPIRES")
	}
	orNone := func(v interface{ IsValid() bool }) string {
		if !v.IsValid() {
			return "-"
		}
		return fmt.Sprint(v)
	}
	for _, l := range leases {
		exp := "reserved"
		if !l.Reservation {
			exp = time.Until(l.Expiration).Round(time.Second).String()
		}
		if dual {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orNone(l.Subnet), orNone(l.IPv6Subnet), orNone(l.Attrs.PublicIP), orNone(l.Attrs.PublicIPv6),
				l.Attrs.NodeName(), l.Attrs.Backend(), exp)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Subnet, l.Attrs.PublicIP, l.Attrs.NodeName(), l.Attrs.Backend(), exp)
		}
	}
	return tw.Flush()
}

// reservation is what twillctl reserve was asked for: at most one subnet
// and one public address of each family, in any order.
type reservation struct {
	subnets lease.Subnets
	attrs   lease.Attrs
}

func parseReservation(args []string) (reservation, error) {
	var r reservation
	var errs []error
	for _, arg := range args {
		var dst *netip.Prefix
		var addr *netip.Addr
		family := "IPv4"
		if p, err := netip.ParsePrefix(arg); err == nil {
			dst = &r.subnets.V4
			if p.Addr().Is6() {
				dst, family = &r.subnets.V6, "IPv6"
			}
			switch {
			case p.Masked() != p || p.Addr().Is4In6():
				errs = append(errs, fmt.Errorf("SUBNET %q: has host bits set or is not a subnet such as 10.244.5.0/24 or fd00:10:244:5::/64", arg))
			case dst.IsValid():
				errs = append(errs, fmt.Errorf("SUBNET %q: a second %s subnet (%s was given)", arg, family, dst))
			default:
				*dst = p
			}
			continue
		}
		a, err := netip.ParseAddr(arg)
		if err != nil || a.Is4In6() || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("%q: neither a subnet nor a public address", arg))
			continue
		}
		addr = &r.attrs.PublicIP
		if a.Is6() {
			addr, family = &r.attrs.PublicIPv6, "IPv6"
		}
		if addr.IsValid() {
			errs = append(errs, fmt.Errorf("PUBLIC-IP %q: a second %s address (%s was given)", arg, family, addr))
			continue
		}
		*addr = a
	}
	return r, errors.Join(errs...)
}

// check refuses a reservation that does not fit cfg: a subnet of each family
// the network enables and none of the others, each of the right length in
// its network, and the public address nodes are known by (IPv4, or IPv6 on
// an IPv6-only network).
func (r reservation) check(cfg *netconf.Config) error {
	var errs []error
	for _, f := range []struct {
		name, flag string
		rng        netconf.SubnetRange
		subnet     netip.Prefix
	}{{"IPv4", "SUBNET", cfg.IPv4(), r.subnets.V4}, {"IPv6", "IPV6-SUBNET", cfg.IPv6(), r.subnets.V6}} {
		switch {
		case !f.rng.Enabled() && f.subnet.IsValid():
			errs = append(errs, fmt.Errorf("%s %s: the network has no %s half", f.flag, f.subnet, f.name))
		case f.rng.Enabled() && !f.subnet.IsValid():
			errs = append(errs, fmt.Errorf("%s missing: the network %s needs a /%d %s subnet", f.flag, f.rng.Network, f.rng.SubnetLen, f.name))
		case f.rng.Enabled() && !f.rng.Fits(f.subnet):
			errs = append(errs, fmt.Errorf("%s %s: not a /%d subnet of the network %s", f.flag, f.subnet, f.rng.SubnetLen, f.rng.Network))
		}
	}
	switch {
	case cfg.EnableIPv4 && !r.attrs.PublicIP.IsValid():
		errs = append(errs, errors.New("PUBLIC-IP missing: the node's public IPv4 address, which it is known by"))
	case !cfg.EnableIPv4 && !r.attrs.PublicIPv6.IsValid():
		errs = append(errs, errors.New("PUBLIC-IPV6 missing: on an IPv6-only network a node is known by its public IPv6 address"))
	}
	return errors.Join(errs...)
}

func runReserve(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("reserve")
	connect := etcdFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 2 || fs.NArg() > 4 {
		return errors.New("want SUBNET [IPV6-SUBNET] PUBLIC-IP [PUBLIC-IPV6], as 10.244.5.0/24 fd00:10:244:5::/64 192.168.56.15 fd00:56::15")
	}
	r, err := parseReservation(fs.Args())
	if err != nil {
		return err
	}
	reg, err := connect()
	if err != nil {
		return err
	}
	defer reg.Close()
	raw, err := reg.NetworkConfig(ctx)
	if err != nil {
		return err
	}
	cfg, err := netconf.Parse(raw)
	if err != nil {
		return err
	}
	if err := r.check(cfg); err != nil {
		return err
	}
	r.attrs.BackendType = cfg.Backend.Type
	if _, err := reg.Create(ctx, r.subnets, r.attrs, 0); err != nil {
		return err
	}
	fmt.Fprintf(out, "reserved %s for %s\n", r.subnets, r.attrs.NodeName())
	return nil
}

func runUnreserve(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("unreserve")
	connect := etcdFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one argument: SUBNET")
	}
	subnet, err := netip.ParsePrefix(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("SUBNET %q: not a subnet", fs.Arg(0))
	}
	reg, err := connect()
	if err != nil {
		return err
	}
	defer reg.Close()
	leases, _, err := reg.List(ctx)
	if err != nil {
		return err
	}
	for _, l := range leases {
		if l.Subnet == subnet || l.IPv6Subnet == subnet {
			if !l.Reservation {
				return fmt.Errorf("%s is leased by %s with a TTL, not reserved", subnet, l.Attrs.NodeName())
			}
			if err := reg.Delete(ctx, l); err != nil {
				return err
			}
			fmt.Fprintf(out, "removed the reservation of %s\n", l.Subnets())
			return nil
		}
	}
	return fmt.Errorf("%s: %w", subnet, lease.ErrNotFound)
}
