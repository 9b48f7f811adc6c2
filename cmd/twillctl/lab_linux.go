package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/vmtest"
)

func init() {
	register("lab up", "bring up a lab: etcd and N twilld nodes (network namespaces or VMs), with pods", runLabUp)
	register("lab down", "remove a lab and everything it left behind", runLabDown)
	register("lab status", "show a lab's nodes, dashboards and pods", runLabStatus)
	register("pod add", "attach a new pod to a lab's node through the CNI plugin: pod add NODE POD", runPodAdd)
	register("pod del", "detach and remove a lab's pod: pod del POD", runPodDel)
	register("pod list", "list a lab's pods", runPodList)
}

// labName picks the lab: the one named, else the only one running, else
// def (when def is not empty).
func labName(name, def string) (string, error) {
	if name != "" {
		return name, nil
	}
	names, err := vmtest.List()
	if err != nil {
		return "", err
	}
	return pickLab(names, def)
}

// pickLab is labName's choice among the labs that run, names.
func pickLab(names []string, def string) (string, error) {
	switch {
	case len(names) == 1:
		return names[0], nil
	case len(names) > 1:
		return "", fmt.Errorf("%d labs run (%s): say which with --lab NAME, e.g. --lab %s", len(names), strings.Join(names, ", "), names[0])
	case def != "":
		return def, nil
	}
	return "", errors.New("no lab runs (start one with: twillctl lab up)")
}

// labFlag is the --lab flag every lab and pod command takes; --name, which
// the lab commands took first, is kept as a hidden alias.
func labFlag(fs *flag.FlagSet, def, usage string) *string {
	name := new(string)
	*name = def
	fs.StringVar(name, "lab", def, usage)
	fs.StringVar(name, "name", def, "alias of --lab")
	hideFlags(fs, "name")
	return name
}

// hideFlags leaves the flags named out of fs's usage message; they still work.
func hideFlags(fs *flag.FlagSet, hidden ...string) {
	fs.Usage = func() {
		shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
		shown.SetOutput(fs.Output())
		fs.VisitAll(func(f *flag.Flag) {
			if !slices.Contains(hidden, f.Name) {
				shown.Var(f.Value, f.Name, f.Usage)
				shown.Lookup(f.Name).DefValue = f.DefValue
			}
		})
		fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
		shown.PrintDefaults()
	}
}

func runLabUp(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("lab up")
	var spec vmtest.Spec
	name := labFlag(fs, vmtest.DefaultName, "lab name (prefix of its namespaces, links and directory)")
	fs.IntVar(&spec.Nodes, "nodes", 3, "number of nodes")
	fs.StringVar(&spec.Driver, "driver", "netns", "how nodes are made: netns (network namespaces on this machine) or qemu (VMs with their own kernel)")
	fs.StringVar(&spec.Accel, "accel", "", "qemu driver: tcg, kvm or auto (default $TWILL_VM_ACCEL, else tcg)")
	fs.StringVar(&spec.Backend, "backend", "vxlan", "backend type of the network config")
	netConfig := fs.String("net-config", "", "network config file (instead of --backend)")
	fs.IntVar(&spec.PodsPerNode, "pods-per-node", 0, "pods to add to every node (n1p1, n1p2 on n1, ...)")
	fs.BoolVar(&spec.IPMasq, "ip-masq", false, "run twilld with --ip-masq")
	fs.StringVar(&spec.Store, "store", "etcd", "lease store: etcd, or kube (the hub runs a real kube-apiserver, built by make kube; each node is a Node with a podCIDR; twilld --kube-subnet-mgr)")
	fs.BoolVar(&spec.Outside, "outside", false, "add a namespace on the underlay that plays the outside world")
	dual := fs.Bool("dual-stack", false, "pods get IPv4 and IPv6 addresses; the underlay and the outside host get IPv6 too (fd00:56:0:<slot>::/64)")
	ipv6 := fs.Bool("ipv6", false, "pods get IPv6 addresses only (IPv6Network fd00:10:244::/56); the underlay keeps IPv4 beside IPv6")
	fs.BoolVar(&spec.HostAccess, "host-access", true, "join this host to the lab's underlay (one veth <name>-host), so a browser here reaches the dashboards")
	fs.DurationVar(&spec.SubnetLeaseTTL, "subnet-lease-ttl", 0, "twilld --subnet-lease-ttl (0: twilld's default)")
	fs.DurationVar(&spec.RenewMargin, "subnet-lease-renew-margin", 0, "twilld --subnet-lease-renew-margin (0: twilld's default)")
	fs.StringVar(&spec.Bin, "bin", "", "directory with twilld, twillctl and twill-cni (default: this twillctl's)")
	verbose := fs.Bool("v", false, "log the lab's progress in full to stderr (else it goes to the lab's lab.log)")
	showStatus := fs.Bool("status", true, "print the lab's status once it is up (as lab status)")
	racks := fs.Int("racks", 0, "put the nodes in this many racks (2 or 3), each its own L3 subnet, routed by the hub (0: one segment)")
	router := fs.String("router", "", "the routing daemon the hub of a routed lab runs: bird or frr (bgp nodes peer with it, and with --backend bgp only with it; implies --racks 2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *racks > 0 || *router != "" {
		spec.Routed = &vmtest.Routed{Racks: *racks, Router: *router}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	spec.Name = *name
	switch {
	case *dual && *ipv6:
		return errors.New("--dual-stack and --ipv6: give one (dual stack has IPv4 too)")
	case *dual:
		spec.IPFamily = "dual"
	case *ipv6:
		spec.IPFamily = "ipv6"
	}
	if *netConfig != "" {
		b, err := os.ReadFile(*netConfig)
		if err != nil {
			return fmt.Errorf("read network config: %w", err)
		}
		spec.NetConfig = string(b)
	}
	// The full log (with times and levels) goes to the lab's lab.log, or
	// with -v to stderr; the output shows progress lines.
	var full bytes.Buffer
	fullLog := slog.NewTextHandler(&full, &slog.HandlerOptions{Level: slog.LevelDebug})
	if *verbose {
		fullLog = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	log := slog.New(slog.NewMultiHandler(newProgress(out, "lab up"), fullLog))
	driver := spec.Driver
	if driver == "" {
		driver = "netns"
	}
	backend := spec.Backend
	if spec.NetConfig != "" {
		backend = "from " + *netConfig
	}
	fmt.Fprintf(out, "bringing up lab %s: %s (%s), backend %s, %s per node\n", spec.Name, plural.Count(spec.Nodes, "node"), driver, backend, plural.Count(spec.PodsPerNode, "pod"))
	began := time.Now()
	c, err := vmtest.Up(ctx, spec, log)
	if err != nil {
		if !*verbose {
			os.Stderr.Write(full.Bytes())
		}
		return err
	}
	defer c.Close()
	where := ""
	if !*verbose {
		p := filepath.Join(c.Dir(), "lab.log")
		if err := appendFile(p, full.Bytes()); err != nil {
			fmt.Fprintf(out, "could not keep the lab's log: %v\n", err)
		} else {
			where = "; its log is " + p
		}
	}
	fmt.Fprintf(out, "lab %s is up in %s%s\n", c.Name(), time.Since(began).Round(100*time.Millisecond), where)
	if !*showStatus {
		return nil
	}
	fmt.Fprintln(out)
	return printStatus(out, c)
}

// appendFile adds b to the file at path, made if need be.
func appendFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	return errors.Join(werr, f.Close())
}

func runLabDown(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("lab down")
	name := labFlag(fs, "", "lab name, or as the argument (default: the only lab running, else twill)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 1 && *name == "" {
		*name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	n, err := labName(*name, vmtest.DefaultName)
	if err != nil {
		return err
	}
	began := time.Now()
	if err := vmtest.Down(ctx, n); err != nil {
		return err
	}
	fmt.Fprintf(out, "lab %s is down (%s)\n", n, time.Since(began).Round(100*time.Millisecond))
	return nil
}

func openLab(name string) (*vmtest.Lab, error) {
	n, err := labName(name, "")
	if err != nil {
		return nil, err
	}
	return vmtest.Open(n)
}

// labStatus is lab status -o json.
type labStatus struct {
	Name         string        `json:"name"`
	EtcdEndpoint string        `json:"etcd_endpoint"`
	EtcdURL      string        `json:"etcd_url"`
	EtcdPID      int           `json:"etcd_pid"`
	EtcdRunning  bool          `json:"etcd_running"`
	Store        string        `json:"store"`
	KubeAPI      string        `json:"kube_api,omitempty"`
	Kubeconfig   string        `json:"kubeconfig,omitempty"`
	HostAddr     netip.Addr    `json:"host_addr,omitzero"`
	Outside      netip.Addr    `json:"outside_addr,omitzero"`
	Outside6     netip.Addr    `json:"outside_addr6,omitzero"`
	OutsideNetNS string        `json:"outside_netns,omitempty"`
	Nodes        []vmtest.Node `json:"nodes"`
	Pods         []vmtest.Pod  `json:"pods"`
}

func status(c *vmtest.Lab) labStatus {
	s := labStatus{Name: c.Name(), EtcdEndpoint: c.EtcdEndpoint(), EtcdURL: c.NodeEtcdEndpoint(), Nodes: c.Nodes(), Pods: c.Pods()}
	s.EtcdPID, s.EtcdRunning = c.EtcdPID()
	s.Store = c.Store()
	s.KubeAPI, s.Kubeconfig = c.KubeAPIAddr()
	s.HostAddr, _ = c.HostAddr()
	s.OutsideNetNS, s.Outside, _ = c.Outside()
	s.Outside6, _ = c.Outside6()
	if s.Pods == nil {
		s.Pods = []vmtest.Pod{}
	}
	return s
}

func runLabStatus(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("lab status")
	name := labFlag(fs, "", "lab name, or as the argument (default: the only lab running)")
	format := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 1 && *name == "" {
		*name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("-o %q: want table or json", *format)
	}
	c, err := openLab(*name)
	if err != nil {
		return err
	}
	defer c.Close()
	if *format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(status(c))
	}
	return printStatus(out, c)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func printStatus(out io.Writer, c *vmtest.Lab) error {
	s := status(c)
	fmt.Fprintf(out, "lab %s: etcd %s (pid %d, running: %s; from this host: --etcd-endpoints %s)\n",
		s.Name, s.EtcdURL, s.EtcdPID, yesNo(s.EtcdRunning), s.EtcdEndpoint)
	if s.KubeAPI != "" {
		fmt.Fprintf(out, "store kube: kube-apiserver %s, kubeconfig %s (twillctl leases --kubeconfig %[2]s, from the hub's namespace or with --host-access)\n", s.KubeAPI, s.Kubeconfig)
	}
	if s.HostAddr.IsValid() {
		fmt.Fprintf(out, "this host is %s on the lab's underlay: open the dashboards below in a browser here\n", s.HostAddr)
	} else {
		fmt.Fprintf(out, "this host is not on the lab's underlay (no --host-access): reach nodes with ip netns exec\n")
	}
	if s.OutsideNetNS != "" {
		fmt.Fprintf(out, "outside: %s in namespace %s\n", s.Outside, s.OutsideNetNS)
		if s.Outside6.IsValid() {
			fmt.Fprintf(out, "outside (IPv6): %s\n", s.Outside6)
		}
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tUNDERLAY\tSUBNET\tDASHBOARD\tTWILLD PID\tRUNNING")
	for _, n := range s.Nodes {
		subnet := "-"
		if n.Subnet.IsValid() || n.Subnet6.IsValid() {
			subnet = addrs(n.Subnet, n.Subnet6)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, n.NetNS, addrs(n.UnderlayIP, n.UnderlayIP6), subnet, n.DashboardURL, n.PID, yesNo(n.Running))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Pods) == 0 {
		fmt.Fprintln(out, "\nno pods (add one with: twillctl pod add NODE POD)")
		return nil
	}
	fmt.Fprintln(out)
	return printPods(out, s.Pods)
}

// addrs writes an IPv4 and an IPv6 value side by side, leaving out one
// that is not set (a lab without IPv6, or an IPv6-only pod).
func addrs[T interface {
	IsValid() bool
	String() string
}](v4, v6 T) string {
	switch {
	case !v6.IsValid():
		return v4.String()
	case !v4.IsValid():
		return v6.String()
	}
	return v4.String() + " " + v6.String()
}

func printPods(out io.Writer, pods []vmtest.Pod) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tNETNS\tADDRESS")
	for _, p := range pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Node, p.NetNSPath, addrs(p.Addr, p.Addr6))
	}
	return tw.Flush()
}

func runPodAdd(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("pod add")
	name := labFlag(fs, "", "lab name (default: the only lab running)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("want two arguments: NODE POD")
	}
	c, err := openLab(*name)
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.AddPod(ctx, fs.Arg(0), fs.Arg(1))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pod %s on %s: %s in %s\n", p.Name, p.Node, p.Addr, p.NetNSPath)
	return nil
}

func runPodDel(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("pod del")
	name := labFlag(fs, "", "lab name (default: the only lab running)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one argument: POD")
	}
	c, err := openLab(*name)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DelPod(ctx, fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(out, "pod %s deleted\n", fs.Arg(0))
	return nil
}

func runPodList(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("pod list")
	name := labFlag(fs, "", "lab name (default: the only lab running)")
	format := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c, err := openLab(*name)
	if err != nil {
		return err
	}
	defer c.Close()
	pods := c.Pods()
	switch *format {
	case "json":
		if pods == nil {
			pods = []vmtest.Pod{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(pods)
	case "table":
		return printPods(out, pods)
	}
	return fmt.Errorf("-o %q: want table or json", *format)
}
