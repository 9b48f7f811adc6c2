package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
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
	register("reserve", "reserve SUBNET for PUBLIC-IP: a lease without TTL, never given to another node", runReserve)
	register("unreserve", "remove the reservation of SUBNET", runUnreserve)
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
	fmt.Fprintf(out, "network config put at %s/config: network %s, /%d subnets (%d leasable), backend %s\n",
		reg.Prefix(), cfg.Network, cfg.SubnetLen, cfg.SubnetCount(), cfg.Backend.Type)
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
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tNODE\tBACKEND\tEXPIRES")
	for _, l := range leases {
		exp := "reserved"
		if !l.Reservation {
			exp = time.Until(l.Expiration).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Subnet, l.Attrs.PublicIP, l.Attrs.NodeName(), l.Attrs.Backend(), exp)
	}
	return tw.Flush()
}

func runReserve(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("reserve")
	connect := etcdFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("want two arguments: SUBNET PUBLIC-IP")
	}
	subnet, err := netip.ParsePrefix(fs.Arg(0))
	if err != nil || subnet.Masked() != subnet || !subnet.Addr().Is4() {
		return fmt.Errorf("SUBNET %q: not an IPv4 subnet such as 10.244.5.0/24", fs.Arg(0))
	}
	ip, err := netip.ParseAddr(fs.Arg(1))
	if err != nil || !ip.Is4() {
		return fmt.Errorf("PUBLIC-IP %q: not an IPv4 address", fs.Arg(1))
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
	if subnet.Bits() != cfg.SubnetLen || !cfg.Network.Contains(subnet.Addr()) {
		return fmt.Errorf("SUBNET %s: not a /%d subnet of the network %s", subnet, cfg.SubnetLen, cfg.Network)
	}
	if _, err := reg.Create(ctx, lease.Subnets{V4: subnet}, lease.Attrs{PublicIP: ip, BackendType: cfg.Backend.Type}, 0); err != nil {
		return err
	}
	fmt.Fprintf(out, "reserved %s for %s\n", subnet, ip)
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
		if l.Subnet == subnet {
			if !l.Reservation {
				return fmt.Errorf("%s is leased by %s with a TTL, not reserved", subnet, l.Attrs.PublicIP)
			}
			if err := reg.Delete(ctx, l); err != nil {
				return err
			}
			fmt.Fprintf(out, "removed the reservation of %s\n", subnet)
			return nil
		}
	}
	return fmt.Errorf("%s: %w", subnet, lease.ErrNotFound)
}
