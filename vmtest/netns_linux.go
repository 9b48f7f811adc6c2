package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/subnetfile"
	"github.com/twillnet/twill/vmtest/agent"
)

// etcdPort is where etcd listens on the hub's underlay address. Each lab's
// hub is a namespace of its own, so labs never compete for it.
const etcdPort = 2379

// Readiness lines in the logs of the processes the lab starts.
const (
	etcdReady   = "etcd ready at"
	twilldReady = "msg=ready"
)

// state is what a lab keeps in its state file.
type state struct {
	Spec       Spec        `json:"spec"`
	Slot       int         `json:"slot"`
	Dir        string      `json:"dir"`
	Bin        string      `json:"bin"`
	HubNetNS   string      `json:"hub_netns"`
	Bridge     string      `json:"bridge"`
	HubAddr    netip.Addr  `json:"hub_addr"`
	HostLink   string      `json:"host_link,omitempty"`
	HostAddr   netip.Addr  `json:"host_addr,omitzero"`
	Etcd       proc        `json:"etcd"`
	EtcdURL    string      `json:"etcd_url"`
	EtcdSocket string      `json:"etcd_socket"`
	Nodes      []nodeState `json:"nodes"`
	Pods       []Pod       `json:"pods"`
	OutsideNS  string      `json:"outside_netns,omitempty"`
	OutsideIP  netip.Addr  `json:"outside_addr,omitzero"`
	// The qemu driver's: what the VMs boot and how.
	Image Image  `json:"image,omitzero"`
	Accel string `json:"accel,omitempty"`
}

type nodeState struct {
	Name       string     `json:"name"`
	NetNS      string     `json:"netns"`
	HubLink    string     `json:"hub_link"` // the underlay veth's end on the bridge
	IP         netip.Addr `json:"ip"`
	Daemon     proc       `json:"daemon"`
	SubnetFile string     `json:"subnet_file"`
	LogPath    string     `json:"log"`
	Dir        string     `json:"dir"`
	// VM is set by the qemu driver.
	VM *vmNode `json:"vm,omitempty"`
}

func labDir(name string) string    { return filepath.Join(StateDir, name) }
func statePath(name string) string { return filepath.Join(labDir(name), "state.json") }

func readState(name string) (*state, error) {
	b, err := os.ReadFile(statePath(name))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("read lab state %s: %w", statePath(name), err)
	}
	return &st, nil
}

func writeState(st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	p := statePath(st.Spec.Name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Cluster is a running lab.
type Cluster struct {
	name string
	log  *slog.Logger
	mu   sync.Mutex
	st   *state
	// The qemu driver's connections to the VMs' agents.
	amu    sync.Mutex
	agents map[string]*agent.Client
}

// run runs a command and returns an error with its output.
func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Up brings up a lab as spec says and returns when every node's twilld is
// ready and every pod attached. A lab of the same name that exists already
// (running or left over) is removed first, so Up always gives a fresh lab.
// If Up fails, it removes what it made.
func Up(ctx context.Context, spec Spec, log *slog.Logger) (*Cluster, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	spec, err := spec.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("lab spec: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("a lab needs root: it creates network namespaces")
	}
	name := spec.Name
	log = log.With("lab", name)
	if exists(name) {
		log.Info("removing the existing lab of the same name")
		if err := Down(ctx, name); err != nil {
			return nil, fmt.Errorf("remove the existing lab %s: %w", name, err)
		}
	}
	began := time.Now()
	c, err := create(ctx, spec, log)
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := Down(dctx, name); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed start: %w", derr))
		}
		return nil, err
	}
	log.Info("lab up", "nodes", spec.Nodes, "pods", len(c.st.Pods), "took", time.Since(began).Round(time.Millisecond))
	return c, nil
}

// exists reports whether anything of the lab is there: state or namespaces.
func exists(name string) bool {
	if _, err := os.Stat(labDir(name)); err == nil {
		return true
	}
	return len(labNamespaces(name)) > 0
}

// create allocates a slot and the lab directory, then builds the lab.
func create(ctx context.Context, spec Spec, log *slog.Logger) (*Cluster, error) {
	st := &state{Spec: spec, Dir: labDir(spec.Name)}
	unlock, err := flock(filepath.Join(StateDir, ".lock"))
	if err != nil {
		return nil, err
	}
	if spec.HostAccess {
		st.Slot, err = freeSlot()
	}
	if err == nil {
		err = os.MkdirAll(st.Dir, 0o755)
	}
	if err == nil {
		err = writeState(st)
	}
	unlock()
	if err != nil {
		return nil, err
	}
	c := &Cluster{name: spec.Name, log: log, st: st}
	if err := c.build(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// freeSlot finds a /26 no other lab with host access uses.
func freeSlot() (int, error) {
	used := map[int]bool{}
	names, _ := List()
	for _, n := range names {
		if st, err := readState(n); err == nil && st.Spec.HostAccess {
			used[st.Slot] = true
		}
	}
	for s := range hostSlots {
		if !used[s] {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%d labs with host access run already (%v); that is all 192.168.56.0/24 holds", hostSlots, names)
}

// build makes the namespaces, links and processes of the lab, saving the
// state after each step so that Down finds everything.
func (c *Cluster) build(ctx context.Context) error {
	st := c.st
	spec := st.Spec
	lay := slotLayout(st.Slot)
	st.HubNetNS = spec.Name + "-hub"
	st.Bridge = spec.Name + "-br"
	st.HubAddr = lay.Hub
	bits := strconv.Itoa(lay.Prefix.Bits())
	hostBits := bits
	underlayPods := spec.underlayLab()
	if underlayPods {
		bits = strconv.Itoa(underlayBits)
		if spec.NetConfig == "" {
			spec.NetConfig = UnderlayNetConfig(spec.Backend, st.Slot)
			st.Spec = spec
		}
	}

	bin, err := findBin(ctx, spec.Bin, st.Dir)
	if err != nil {
		return err
	}
	st.Bin = bin
	// libcni finds the plugin by its type, "twill".
	cniBin := filepath.Join(st.Dir, "cni-bin")
	if err := os.MkdirAll(cniBin, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join(bin, "twill-cni"), filepath.Join(cniBin, "twill")); err != nil {
		return fmt.Errorf("link the CNI plugin: %w", err)
	}

	if c.qemu() {
		if err := c.prepareVMs(ctx); err != nil {
			return err
		}
	}

	// The hub: the underlay bridge, where etcd also listens.
	hub := st.HubNetNS
	steps := [][]string{
		{"ip", "netns", "add", hub},
		{"ip", "-n", hub, "link", "set", "lo", "up"},
		{"ip", "-n", hub, "link", "add", st.Bridge, "type", "bridge"},
		{"ip", "-n", hub, "addr", "add", lay.Hub.String() + "/" + bits, "dev", st.Bridge},
		{"ip", "-n", hub, "link", "set", st.Bridge, "up"},
	}
	if err := runAll(ctx, steps); err != nil {
		return fmt.Errorf("make the underlay: %w", err)
	}
	if spec.HostAccess {
		st.HostLink, st.HostAddr = spec.Name+"-host", lay.Host
		if err := writeState(st); err != nil {
			return err
		}
		steps = [][]string{
			{"ip", "link", "add", st.HostLink, "type", "veth", "peer", "name", "host", "netns", hub},
			{"ip", "-n", hub, "link", "set", "host", "master", st.Bridge, "up"},
			{"ip", "addr", "add", lay.Host.String() + "/" + hostBits, "dev", st.HostLink},
			{"ip", "link", "set", st.HostLink, "up"},
		}
		if err := runAll(ctx, steps); err != nil {
			return fmt.Errorf("join the host to the underlay: %w", err)
		}
	}
	for i := 1; i <= spec.Nodes; i++ {
		n := nodeState{Name: "n" + strconv.Itoa(i), IP: lay.nodeAddr(i)}
		n.NetNS = spec.Name + "-" + n.Name
		n.HubLink = n.Name
		n.Dir = filepath.Join(st.Dir, n.Name)
		n.SubnetFile = filepath.Join(n.Dir, "subnet.env")
		n.LogPath = filepath.Join(n.Dir, "twilld.log")
		st.Nodes = append(st.Nodes, n)
		if err := writeState(st); err != nil {
			return err
		}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		if c.qemu() {
			if err := c.makeVM(ctx, i-1, bits); err != nil {
				return err
			}
			continue
		}
		if err := attach(ctx, hub, st.Bridge, n.HubLink, n.NetNS, n.IP, bits); err != nil {
			return fmt.Errorf("make node %s: %w", n.Name, err)
		}
		// Nodes route pods' packets; the host's own namespace is left as
		// it is.
		if err := run(ctx, "ip", "netns", "exec", n.NetNS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
			return fmt.Errorf("make node %s: %w", n.Name, err)
		}
		// Underlay pods take the node's default gateway as theirs: the
		// hub plays the segment's router.
		if underlayPods {
			if err := run(ctx, "ip", "-n", n.NetNS, "route", "add", "default", "via", lay.Hub.String()); err != nil {
				return fmt.Errorf("make node %s: %w", n.Name, err)
			}
		}
	}
	if spec.Outside {
		st.OutsideNS, st.OutsideIP = spec.Name+"-out", lay.Outside
		if err := writeState(st); err != nil {
			return err
		}
		if err := attach(ctx, hub, st.Bridge, "out", st.OutsideNS, st.OutsideIP, bits); err != nil {
			return fmt.Errorf("make the outside: %w", err)
		}
	}

	// A system image lab is bare: what runs on it is Ansible's to install.
	if spec.SystemImage != "" {
		return c.bootSystemVMs(ctx)
	}

	// etcd, in the hub. The unix socket reaches it from any namespace.
	st.EtcdURL = fmt.Sprintf("http://%s", net.JoinHostPort(lay.Hub.String(), strconv.Itoa(etcdPort)))
	st.EtcdSocket = filepath.Join(st.Dir, "etcd.sock")
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	cfg := filepath.Join(st.Dir, "net-config.json")
	if err := os.WriteFile(cfg, []byte(spec.NetConfig), 0o644); err != nil {
		return err
	}
	args := []string{filepath.Join(bin, "twillctl"), "config", "put", "--etcd-endpoints", c.EtcdEndpoint()}
	if spec.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix", spec.EtcdPrefix)
	}
	if err := run(ctx, append(args, cfg)...); err != nil {
		return fmt.Errorf("put the network config: %w", err)
	}

	if c.qemu() {
		if err := c.bootVMs(ctx); err != nil {
			return err
		}
		errs := make([]error, len(st.Nodes))
		var wg sync.WaitGroup
		for i, n := range st.Nodes {
			wg.Go(func() { errs[i] = c.vmStartDaemon(ctx, n.Name) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return c.addPods(ctx)
	}
	// The nodes' daemons start together and become ready together.
	offsets := make([]int64, len(st.Nodes))
	for i := range st.Nodes {
		p, off, err := startIn(st.Nodes[i].NetNS, filepath.Join(bin, "twilld"), c.twilldArgs(st.Nodes[i]), st.Nodes[i].LogPath)
		if err != nil {
			return err
		}
		st.Nodes[i].Daemon, offsets[i] = p, off
		if err := writeState(st); err != nil {
			return err
		}
	}
	var errs []error
	for i, n := range st.Nodes {
		if err := waitLog(ctx, n.Daemon, n.LogPath, offsets[i], twilldReady, 60*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.addPods(ctx)
}

// addPods adds Spec.PodsPerNode pods to every node, named after their
// node: n1p1, n1p2 on n1, n2p1 on n2, ...
func (c *Cluster) addPods(ctx context.Context) error {
	st, spec := c.st, c.st.Spec
	for _, n := range st.Nodes {
		for k := 1; k <= spec.PodsPerNode; k++ {
			if _, err := c.AddPod(ctx, n.Name, n.Name+"p"+strconv.Itoa(k)); err != nil {
				return err
			}
		}
	}
	return nil
}

func runAll(ctx context.Context, steps [][]string) error {
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// attach makes namespace ns with eth0 at addr on the hub's bridge; the
// veth's other end is hubLink in the hub.
func attach(ctx context.Context, hub, bridge, hubLink, ns string, addr netip.Addr, bits string) error {
	return runAll(ctx, [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", hub, "link", "add", hubLink, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", hub, "link", "set", hubLink, "master", bridge, "up"},
		{"ip", "-n", ns, "addr", "add", addr.String() + "/" + bits, "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
	})
}

// findBin finds (or builds) the directory with the three binaries.
func findBin(ctx context.Context, bin, labDir string) (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"twilld", "twillctl", "twill-cni"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if !has(abs) {
			return "", fmt.Errorf("%s lacks twilld, twillctl or twill-cni", abs)
		}
		return abs, nil
	}
	if exe, err := os.Executable(); err == nil && has(filepath.Dir(exe)) {
		return filepath.Dir(exe), nil
	}
	if abs, err := filepath.Abs("bin"); err == nil && has(abs) {
		return abs, nil
	}
	dir := filepath.Join(labDir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/",
		"github.com/twillnet/twill/cmd/twilld", "github.com/twillnet/twill/cmd/twillctl", "github.com/twillnet/twill/cmd/twill-cni")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the binaries (or give Spec.Bin): %w: %s", err, out)
	}
	return dir, nil
}

func (c *Cluster) twilldArgs(n nodeState) []string {
	spec := c.st.Spec
	args := []string{
		"--etcd-endpoints", c.st.EtcdURL,
		"--public-ip", n.IP.String(),
		"--iface", "eth0",
		"--node-name", spec.Name + "-" + n.Name,
		"--subnet-file", n.SubnetFile,
		"--listen", net.JoinHostPort(n.IP.String(), strconv.Itoa(DashboardPort)),
	}
	if spec.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix", spec.EtcdPrefix)
	}
	if spec.IPMasq {
		args = append(args, "--ip-masq")
	}
	if spec.SubnetLeaseTTL > 0 {
		args = append(args, "--subnet-lease-ttl", spec.SubnetLeaseTTL.String())
	}
	if spec.RenewMargin > 0 {
		args = append(args, "--subnet-lease-renew-margin", spec.RenewMargin.String())
	}
	return append(args, spec.TwilldArgs...)
}

// Open attaches to a running lab by its state file.
func Open(name string) (*Cluster, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	st, err := readState(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab %q runs (no %s)", name, statePath(name))
	}
	if err != nil {
		return nil, err
	}
	return &Cluster{name: name, log: slog.New(slog.DiscardHandler), st: st}, nil
}

// List returns the names of the labs that have a state file.
func List() ([]string, error) {
	entries, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && ValidName(e.Name()) == nil {
			if _, err := os.Stat(statePath(e.Name())); err == nil {
				names = append(names, e.Name())
			}
		}
	}
	return names, nil
}

// labNamespaces lists the namespaces that belong to lab name, by the
// patterns the lab gives them (never by a bare prefix: "twt-cni-1" is not
// lab twt's), pods first, then nodes, then the rest.
func labNamespaces(name string) []string {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-(hub|out|n[0-9]+(-[a-z0-9.]+)?)$`)
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	rank := func(s string) int {
		switch {
		case strings.Count(s, "-") == 2:
			return 0 // a pod
		case strings.HasSuffix(s, "-hub"):
			return 2
		}
		return 1
	}
	slices.SortFunc(out, func(a, b string) int { return rank(a) - rank(b) })
	return out
}

// Down removes lab name: its processes (those in its state file, and any
// twilld or twillctl still running in its namespaces), namespaces, its link
// in the host's namespace and its directory. It finds what a crashed run
// left without a state file too, and does nothing if nothing is there.
func Down(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	var errs []error
	var procs []proc
	st, err := readState(name)
	if err == nil {
		for _, n := range st.Nodes {
			procs = append(procs, n.Daemon)
			if n.VM != nil {
				procs = append(procs, n.VM.QEMU)
			}
		}
		procs = append(procs, st.Etcd)
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err) // go on with the scan
	}
	// A system image lab's shared SSH connections run in its hub.
	if st != nil && st.Spec.SystemImage != "" {
		closeSSHMasters(ctx, labDir(name))
	}
	namespaces := labNamespaces(name)
	inodes := map[uint64]bool{}
	for _, ns := range namespaces {
		if ino, err := netnsInode(ns); err == nil {
			inodes[ino] = true
		}
	}
	found, others := procsIn(inodes, map[string]bool{"twilld": true, "twillctl": true, "twill-cni": true, qemuBinary: true})
	procs = append(procs, found...)
	// Daemons first, etcd last (they may want to talk to it on the way
	// out); all of one kind at once.
	isEtcd := func(p proc) bool { return filepath.Base(p.Exe) == "twillctl" }
	for _, etcdPhase := range []bool{false, true} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range procs {
			if isEtcd(p) != etcdPhase {
				continue
			}
			wg.Go(func() {
				if err := p.stop(ctx, syscall.SIGTERM, 5*time.Second); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if len(others) > 0 {
		errs = append(errs, fmt.Errorf("processes not started by the lab still run in its namespaces (left alone): %s", strings.Join(others, ", ")))
	}
	for _, ns := range namespaces {
		if err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	link := name + "-host"
	if _, err := net.InterfaceByName(link); err == nil {
		if err := run(ctx, "ip", "link", "del", link); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(labDir(name)); err != nil {
		errs = append(errs, fmt.Errorf("remove the lab directory: %w", err))
	}
	return errors.Join(errs...)
}

// update changes the state under the lab's lock, against the newest state
// on disk (another process may have added a pod).
func (c *Cluster) update(f func(st *state) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := flock(filepath.Join(labDir(c.name), "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if st, err := readState(c.name); err == nil {
		c.st = st
	} else {
		return err
	}
	if err := f(c.st); err != nil {
		return err
	}
	return writeState(c.st)
}

// snapshot returns the newest state.
func (c *Cluster) snapshot() *state {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, err := readState(c.name); err == nil {
		c.st = st
	}
	return c.st
}

// Name is the lab's name.
func (c *Cluster) Name() string { return c.name }

// Spec is the lab's spec, with defaults filled in.
func (c *Cluster) Spec() Spec { return c.snapshot().Spec }

// Nodes returns the nodes, with their subnets read from their subnet files
// now.
func (c *Cluster) Nodes() []Node {
	st := c.snapshot()
	out := make([]Node, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		out = append(out, c.node(n))
	}
	return out
}

func (c *Cluster) node(n nodeState) Node {
	node := Node{
		Name:         n.Name,
		DaemonName:   c.name + "-" + n.Name,
		NetNS:        n.NetNS,
		UnderlayIP:   n.IP,
		DashboardURL: fmt.Sprintf("http://%s", net.JoinHostPort(n.IP.String(), strconv.Itoa(DashboardPort))),
		PID:          n.Daemon.PID,
		Running:      n.Daemon.alive(),
		LogPath:      n.LogPath,
		SubnetFile:   n.SubnetFile,
	}
	if n.VM != nil && c.snapshot().Spec.SystemImage != "" {
		return node // no agent; Remote knows the node over SSH
	}
	if n.VM != nil {
		c.vmNodeView(n, &node)
		return node
	}
	c.readSubnet(n.SubnetFile, &node)
	return node
}

func (c *Cluster) readSubnet(path string, node *Node) {
	if f, err := subnetfile.Read(path); err == nil {
		node.Subnet = f.NodeSubnet()
	}
}

// Node returns one node by its name (n1), its daemon's name (<lab>-n1) or
// its namespace.
func (c *Cluster) Node(name string) (Node, error) {
	st := c.snapshot()
	i, err := findNode(st, c.name, name)
	if err != nil {
		return Node{}, err
	}
	return c.node(st.Nodes[i]), nil
}

func findNode(st *state, lab, name string) (int, error) {
	for i, n := range st.Nodes {
		if n.Name == name || n.NetNS == name || lab+"-"+n.Name == name {
			return i, nil
		}
	}
	names := make([]string, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		names = append(names, n.Name)
	}
	return 0, fmt.Errorf("lab %s has no node %q (nodes: %s)", lab, name, strings.Join(names, ", "))
}

// Pods returns the pods.
func (c *Cluster) Pods() []Pod { return slices.Clone(c.snapshot().Pods) }

// Exec runs argv in a namespace (a namespace name, or a node's or pod's
// name) and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	if c.qemu() {
		return c.vmRunExec(ctx, netns, argv...)
	}
	return hostExec(ctx, c.resolveNetNS(netns), argv...)
}

// hostExec runs argv in a network namespace of this host.
func hostExec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w", ns, strings.Join(argv, " "), err)
	}
	return out, nil
}

func (c *Cluster) resolveNetNS(name string) string {
	st := c.snapshot()
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
		return name
	}
	if i, err := findNode(st, c.name, name); err == nil {
		return st.Nodes[i].NetNS
	}
	for _, p := range st.Pods {
		if p.Name == name {
			return p.NetNS
		}
	}
	return name
}

// StartDaemon starts twilld on a node unless it runs, and waits until it is
// ready (it logged "ready", after writing its subnet file).
func (c *Cluster) StartDaemon(ctx context.Context, node string) error {
	if c.qemu() {
		return c.vmStartDaemon(ctx, node)
	}
	var n nodeState
	var off int64
	started := false
	err := c.update(func(st *state) error {
		i, err := findNode(st, c.name, node)
		if err != nil {
			return err
		}
		if st.Nodes[i].Daemon.alive() {
			return nil
		}
		n = st.Nodes[i]
		p, o, err := startIn(n.NetNS, filepath.Join(st.Bin, "twilld"), c.twilldArgs(n), n.LogPath)
		if err != nil {
			return err
		}
		st.Nodes[i].Daemon, n.Daemon, off, started = p, p, o, true
		return nil
	})
	if err != nil || !started {
		return err
	}
	c.log.Info("twilld started", "node", n.Name, "pid", n.Daemon.PID)
	if err := waitLog(ctx, n.Daemon, n.LogPath, off, twilldReady, 60*time.Second); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// StopDaemon stops a node's twilld with sig (SIGTERM: a clean stop;
// SIGKILL: a crash) and waits until it has ended. A daemon that does not
// end within 15 s of SIGTERM is an error (and is killed).
func (c *Cluster) StopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	st := c.snapshot()
	if c.qemu() {
		return c.vmStopDaemon(ctx, node, sig)
	}
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	p := st.Nodes[i].Daemon
	if err := p.signal(sig); err != nil {
		return err
	}
	if err := p.waitExit(ctx, 15*time.Second); err != nil {
		kerr := p.stop(ctx, syscall.SIGKILL, 5*time.Second)
		return errors.Join(fmt.Errorf("node %s: twilld did not end after %v: %w", st.Nodes[i].Name, sig, err), kerr)
	}
	c.log.Info("twilld stopped", "node", st.Nodes[i].Name, "signal", sig)
	return nil
}

// SetUnderlay takes a node's underlay link down or up. The bridge's end of
// the node's veth goes down, so the node sees its eth0 lose carrier, as
// when a cable is pulled, and its routes stay.
func (c *Cluster) SetUnderlay(ctx context.Context, node string, up bool) error {
	st := c.snapshot()
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	state := "down"
	if up {
		state = "up"
	}
	return run(ctx, "ip", "-n", st.HubNetNS, "link", "set", st.Nodes[i].HubLink, state)
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	st := c.st
	logPath := filepath.Join(st.Dir, "etcd.log")
	args := []string{"etcd", "--data-dir", filepath.Join(st.Dir, "etcd"),
		"--listen-client-urls", st.EtcdURL + ",unix://" + st.EtcdSocket}
	// A socket left by a killed etcd would stop the new one from listening.
	_ = os.Remove(st.EtcdSocket)
	p, off, err := startIn(st.HubNetNS, filepath.Join(st.Bin, "twillctl"), args, logPath)
	if err != nil {
		return err
	}
	st.Etcd = p
	if err := writeState(st); err != nil {
		return err
	}
	if err := waitLog(ctx, p, logPath, off, etcdReady, 60*time.Second); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	c.log.Info("etcd started", "url", st.EtcdURL, "pid", p.PID)
	return nil
}

// StartEtcd starts the lab's etcd again (its data is kept) unless it runs.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := flock(filepath.Join(labDir(c.name), "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState(c.name)
	if err != nil {
		return err
	}
	c.st = st
	if st.Etcd.alive() {
		return nil
	}
	return c.startEtcd(ctx)
}

// StopEtcd stops the lab's etcd and waits until it has ended: SIGTERM, and
// SIGKILL if it has not ended 2 s later (with the nodes' watches open a
// graceful stop takes etcd about 7 s; its write-ahead log makes the kill
// safe).
func (c *Cluster) StopEtcd(ctx context.Context) error {
	p := c.snapshot().Etcd
	if err := p.stop(ctx, syscall.SIGTERM, 2*time.Second); err != nil {
		return fmt.Errorf("stop etcd: %w", err)
	}
	c.log.Info("etcd stopped")
	return nil
}

// EtcdEndpoint is an etcd endpoint for the caller: a unix socket that
// reaches the lab's etcd from any network namespace (pass it to
// twillctl --etcd-endpoints).
func (c *Cluster) EtcdEndpoint() string { return "unix://" + c.snapshot().EtcdSocket }

// NodeEtcdEndpoint is the URL the nodes reach etcd at, over the underlay.
func (c *Cluster) NodeEtcdEndpoint() string { return c.snapshot().EtcdURL }

// EtcdPrefix is the etcd key prefix the lab uses.
func (c *Cluster) EtcdPrefix() string {
	if p := c.snapshot().Spec.EtcdPrefix; p != "" {
		return p
	}
	return etcd.DefaultPrefix
}

// EtcdPID is the PID of the lab's etcd (it may have been stopped).
func (c *Cluster) EtcdPID() (pid int, running bool) {
	p := c.snapshot().Etcd
	return p.PID, p.alive()
}

// HubNetNS is the namespace that holds the underlay bridge and etcd.
func (c *Cluster) HubNetNS() string { return c.snapshot().HubNetNS }

// HostAddr is the host's address on the underlay, with HostAccess.
func (c *Cluster) HostAddr() (netip.Addr, bool) {
	st := c.snapshot()
	return st.HostAddr, st.HostAddr.IsValid()
}

// Dir is the lab's directory.
func (c *Cluster) Dir() string { return labDir(c.name) }

// Outside returns the outside namespace and its address, if the lab has
// one.
func (c *Cluster) Outside() (netns string, addr netip.Addr, ok bool) {
	st := c.snapshot()
	return st.OutsideNS, st.OutsideIP, st.OutsideNS != ""
}

// Close releases the cluster's handles; the lab keeps running.
func (c *Cluster) Close() error { return c.closeAgents() }

// Driver is the lab's driver, netns or qemu.
func (c *Cluster) Driver() string { return c.snapshot().Spec.Driver }
