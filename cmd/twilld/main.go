// Command twilld is twill's per-host agent: it leases the node's pod subnet
// from etcd (or, with --kube-subnet-mgr, takes the node's podCIDR from the
// Kubernetes API) and carries pod traffic between hosts over a backend.
//
// Every flag can also be given as an environment variable: --etcd-endpoints
// is TWILLD_ETCD_ENDPOINTS. A flag on the command line wins over the
// environment. Repeatable flags take a comma-separated list from the
// environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/daemon"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/subnetfile"
	"github.com/twillnet/twill/web"
)

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

// args are the parsed flags.
type args struct {
	cfg       daemon.Config
	etcd      etcd.Config
	publicIP  string
	endpoints string
	cleanup   bool
	logLevel  string
	logFormat string
	version   bool
	// listen is where the dashboard, API and metrics are served ("" or
	// "off" for nowhere); apiToken enables the endpoints that change state.
	listen   string
	apiToken string
	// bgp are the bgp backend's per-node settings.
	bgp nodeBGP
	// wireguard is the wireguard backend's per-node setting.
	wireguard nodeWireGuard
	// kube are the Kubernetes mode's flags.
	kube kubeArgs
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func newFlagSet(a *args) *flag.FlagSet {
	fs := flag.NewFlagSet("twilld", flag.ContinueOnError)
	c, e := &a.cfg, &a.etcd
	fs.StringVar(&a.endpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.StringVar(&e.Prefix, "etcd-prefix", etcd.DefaultPrefix, "etcd key prefix; "+etcd.FlannelPrefix+" shares a cluster with flannel")
	fs.StringVar(&e.CAFile, "etcd-cafile", "", "CA certificate file to verify etcd's server certificate")
	fs.StringVar(&e.CertFile, "etcd-certfile", "", "client certificate file for etcd")
	fs.StringVar(&e.KeyFile, "etcd-keyfile", "", "client key file for etcd")
	fs.StringVar(&e.Username, "etcd-username", "", "etcd user name")
	fs.StringVar(&e.Password, "etcd-password", "", "etcd password")
	fs.StringVar(&c.NetConfigFile, "net-config", "", "read the network config from this file instead of <prefix>/config in etcd")
	fs.StringVar(&a.publicIP, "public-ip", "", "address peers reach this node at (default: the address of --iface)")
	fs.TextVar(&c.PublicIPv6, "public-ipv6", netip.Addr{}, "IPv6 address peers reach this node at, when the network enables IPv6 (default: the first global IPv6 address of the uplink)")
	fs.Var((*listFlag)(&c.Ifaces), "iface", "underlay interface, by name or by an address of either family (repeatable; the first that exists and has an address of each family the network needs wins)")
	fs.Var((*listFlag)(&c.IfaceRegex), "iface-regex", "regular expression matched against interface names and their addresses in the network's families (repeatable)")
	fs.StringVar(&c.NodeName, "node-name", "", "this node's name (default: the hostname)")
	fs.StringVar(&c.SubnetFile, "subnet-file", subnetfile.DefaultPath, "where to write the node's subnet file")
	fs.StringVar(&c.StateDir, "state-dir", daemon.DefaultStateDir, "where twilld keeps what survives restarts and reboots (wireguard's private key)")
	fs.DurationVar(&c.SubnetLeaseTTL, "subnet-lease-ttl", 24*time.Hour, "lifetime of the subnet lease in etcd")
	fs.DurationVar(&c.RenewMargin, "subnet-lease-renew-margin", time.Hour, "renew the lease this long before it expires")
	fs.BoolVar(&c.IPMasq, "ip-masq", false, "masquerade pod traffic that leaves the cluster network")
	fs.BoolVar(&c.ReleaseOnExit, "release-on-exit", false, "give the lease back when stopping (by default it is kept for a restart)")
	fs.BoolVar(&a.cleanup, "cleanup", false, "remove the backend's kernel state and exit")
	fs.StringVar(&a.listen, "listen", "127.0.0.1:9180", "address of the dashboard, JSON API, /metrics and /livez, /readyz (\"off\": none)")
	fs.StringVar(&a.apiToken, "api-token", "", "bearer token that enables the API endpoints that change state (default: none do)")
	fs.StringVar(&c.Dashboard, "dashboard-url", "", "URL of this node's dashboard published in its lease (default: http://<listen address>, with the public IP for an unspecified address; none for loopback)")
	fs.StringVar(&a.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&a.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&a.version, "version", false, "print the version and exit")
	addBGPFlags(fs, &a.bgp)
	addWireGuardFlags(fs, &a.wireguard)
	addKubeFlags(fs, &a.kube)
	return fs
}

// envName is the environment variable of a flag: etcd-endpoints ->
// TWILLD_ETCD_ENDPOINTS.
func envName(flagName string) string {
	return "TWILLD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseArgs parses the command line, then fills unset flags from the
// environment.
func parseArgs(argv []string, getenv func(string) string, stderr io.Writer) (*args, error) {
	a := &args{}
	fs := newFlagSet(a)
	fs.SetOutput(stderr)
	if err := fs.Parse(argv); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (twilld takes only flags)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if set[f.Name] || v == "" {
			return
		}
		values := []string{v}
		if _, repeatable := f.Value.(*listFlag); repeatable {
			values = strings.Split(v, ",")
		}
		for _, x := range values {
			if err := fs.Set(f.Name, strings.TrimSpace(x)); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	errs = append(errs, a.bgp.parse(), a.wireguard.parse())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			a.etcd.Endpoints = append(a.etcd.Endpoints, e)
		}
	}
	if a.listen == "off" {
		a.listen = ""
	}
	if a.listen != "" {
		if _, _, err := net.SplitHostPort(a.listen); err != nil {
			return nil, fmt.Errorf("--listen %q: want HOST:PORT: %w", a.listen, err)
		}
	}
	if a.publicIP != "" {
		ip, err := netip.ParseAddr(a.publicIP)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("--public-ip %q: not an IPv4 address", a.publicIP)
		}
		a.cfg.PublicIP = ip
	}
	if ip := a.cfg.PublicIPv6; ip.IsValid() && (!ip.Is6() || ip.Is4In6() || ip.Zone() != "" || !ip.IsGlobalUnicast()) {
		return nil, fmt.Errorf("--public-ipv6 %q: not a global IPv6 address", ip)
	}
	return a, nil
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func main() {
	a, err := parseArgs(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twilld:", err)
		os.Exit(2)
	}
	if a.version {
		fmt.Println("twilld", version)
		return
	}
	if err := run(a); err != nil {
		fmt.Fprintln(os.Stderr, "twilld:", err)
		os.Exit(1)
	}
}

func run(a *args) error {
	log, err := newLogger(a.logLevel, a.logFormat, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if a.cfg.Dashboard == "" && a.listen != "" && !a.cleanup {
		a.cfg.Dashboard = dashboardURL(a.listen, a.cfg.PublicIP)
	}
	if a.kube.enabled {
		reg, err := newKubeRegistry(ctx, a, log)
		if err != nil {
			return err
		}
		defer reg.Close()
		a.cfg.Registry = reg
	} else {
		a.etcd.Log = log
		reg, err := etcd.New(a.etcd)
		if err != nil {
			return err
		}
		defer reg.Close()
		a.cfg.Registry = reg
	}
	a.cfg.NewBackend = func(node backend.Node, log *slog.Logger) (backend.Backend, error) {
		return newBackend(a.wireguard.apply(node), log, a.bgp)
	}
	d, err := daemon.New(a.cfg, log)
	if err != nil {
		return err
	}
	if a.cleanup {
		return d.Cleanup(ctx)
	}
	if a.listen != "" {
		stopWeb, err := serveWeb(ctx, a, d, log)
		if err != nil {
			return err
		}
		defer stopWeb()
	}
	err = d.Run(ctx)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil // stopped before it was ready
	}
	return err
}

// dashboardURL is the URL peers reach the dashboard at: the listen address,
// with the public IP for an unspecified host; none for a loopback address
// (peers cannot reach it).
func dashboardURL(listen string, publicIP netip.Addr) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "" || (err == nil && ip.IsUnspecified()):
		if !publicIP.IsValid() {
			return ""
		}
		host = publicIP.String()
	case err == nil && ip.IsLoopback(), host == "localhost":
		return ""
	}
	return "http://" + net.JoinHostPort(host, port)
}

// serveWeb starts the dashboard on --listen and returns a function that
// stops it.
func serveWeb(ctx context.Context, a *args, d *daemon.Daemon, log *slog.Logger) (func(), error) {
	srv, err := web.New(web.Options{Source: d, Log: log.With("component", "web"), Version: version, APIToken: a.apiToken, Resync: d.Resync})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", a.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	// Requests (event streams too) end when the dashboard stops.
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return wctx }}
	done := make(chan struct{}, 2)
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dashboard stopped", "err", err)
		}
		done <- struct{}{}
	}()
	go func() {
		_ = srv.Run(wctx)
		done <- struct{}{}
	}()
	log.Info("dashboard listening", "addr", ln.Addr().String(), "url", "http://"+ln.Addr().String())
	return func() {
		cancel()
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		_ = hs.Shutdown(sctx)
		_ = hs.Close()
		<-done
		<-done
	}, nil
}
