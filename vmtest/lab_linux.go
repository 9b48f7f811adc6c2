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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/internal/filelock"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// state is what a lab keeps in its state file.
type state struct {
	Spec Spec   `json:"spec"`
	Slot int    `json:"slot"`
	Dir  string `json:"dir"`
	Bin  string `json:"bin"`
	// FlannelBin holds flanneld and the CNI plugins of flannel nodes.
	FlannelBin string     `json:"flannel_bin,omitempty"`
	HubNetNS   string     `json:"hub_netns"`
	Bridge     string     `json:"bridge"`
	HubAddr    netip.Addr `json:"hub_addr"`
	HubAddr6   netip.Addr `json:"hub_addr6,omitzero"`
	HostLink   string     `json:"host_link,omitempty"`
	HostAddr   netip.Addr `json:"host_addr,omitzero"`
	Etcd       proc       `json:"etcd"`
	EtcdURL    string     `json:"etcd_url"`
	EtcdSocket string     `json:"etcd_socket"`
	// The kube store's: the API server in the hub, the nodes' kubeconfig
	// and network config file.
	KubeAPI       proc        `json:"kube_apiserver,omitzero"`
	Kubeconfig    string      `json:"kubeconfig,omitempty"`
	NetConfigPath string      `json:"net_config_path,omitempty"`
	Nodes         []nodeState `json:"nodes"`
	Pods          []Pod       `json:"pods"`
	OutsideNS     string      `json:"outside_netns,omitempty"`
	OutsideIP     netip.Addr  `json:"outside_addr,omitzero"`
	OutsideIP6    netip.Addr  `json:"outside_addr6,omitzero"`
	// The qemu driver's: what the VMs boot and how.
	Image Image  `json:"image,omitzero"`
	Accel string `json:"accel,omitempty"`
	// The routed topology's (fabric_linux.go): the racks and the router.
	Racks  []rackState  `json:"racks,omitempty"`
	Router *routerState `json:"router,omitempty"`
}

type nodeState struct {
	Name       string     `json:"name"`
	NetNS      string     `json:"netns"`
	HubLink    string     `json:"hub_link"` // the underlay veth's (or tap's) end on the bridge
	IP         netip.Addr `json:"ip"`
	IP6        netip.Addr `json:"ip6,omitzero"`
	Daemon     proc       `json:"daemon"`
	SubnetFile string     `json:"subnet_file"`
	LogPath    string     `json:"log"`
	Dir        string     `json:"dir"`
	// StateDir is twilld's --state-dir (wireguard's key); empty for
	// twilld's default (the qemu driver's VMs keep it on their state disk).
	StateDir string `json:"state_dir,omitempty"`
	// Bridge is the hub's bridge the node's link is on (empty: the
	// hub's Bridge); Gateway its default route and ASN its rack's AS
	// (routed labs).
	Bridge  string     `json:"bridge,omitempty"`
	Gateway netip.Addr `json:"gateway,omitzero"`
	ASN     uint32     `json:"asn,omitempty"`
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

// Lab is a running lab: its hub (the underlay bridge, etcd, the outside)
// and its nodes, made and driven by the driver its spec names. Another
// process attaches to it by name (Open).
type Lab struct {
	name string
	log  *slog.Logger
	mu   sync.Mutex
	st   *state
	drv  driver
}

var (
	_ Cluster        = (*Lab)(nil)
	_ NodeRebooter   = (*Lab)(nil)
	_ UnderlayShaper = (*Lab)(nil)
)

// newLab makes the handle of lab name with state st, and chooses its
// driver.
func newLab(name string, st *state, log *slog.Logger) (*Lab, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Lab{name: name, log: log, st: st}
	d, err := newDriver(l, st.Spec)
	if err != nil {
		return nil, err
	}
	l.drv = d
	return l, nil
}

// Up brings up a lab as spec says and returns when every node's twilld is
// ready and every pod attached. A lab of the same name that exists already
// (running or left over) is removed first, so Up always gives a fresh lab.
// If Up fails, it removes what it made.
func Up(ctx context.Context, spec Spec, log *slog.Logger) (*Lab, error) {
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
	l, err := create(ctx, spec, log)
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := Down(dctx, name); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed start: %w", derr))
		}
		return nil, err
	}
	log.Info("lab up", "nodes", spec.Nodes, "pods", len(l.st.Pods), "took", time.Since(began).Round(time.Millisecond))
	return l, nil
}

// create allocates a slot and the lab directory, then builds the lab.
func create(ctx context.Context, spec Spec, log *slog.Logger) (*Lab, error) {
	st := &state{Spec: spec, Dir: labDir(spec.Name)}
	l, err := newLab(spec.Name, st, log)
	if err != nil {
		return nil, err
	}
	unlock, err := filelock.Lock(filepath.Join(StateDir, ".lock"))
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
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// build makes the hub, has the driver make the nodes, starts etcd and the
// daemons and adds the pods, saving the state after each step so that
// Down finds everything.
func (l *Lab) build(ctx context.Context) error {
	st := l.st
	lay := slotLayout(st.Slot)
	bits := lay.Prefix.Bits()
	if st.Spec.Routed != nil {
		lay, bits = routedLayout(st.Slot), rackBits
	}
	if st.Spec.underlayLab() {
		bits = underlayBits
		if st.Spec.NetConfig == "" {
			st.Spec.NetConfig = UnderlayNetConfig(st.Spec.Backend, st.Slot)
		}
	}
	bin, err := findBin(ctx, st.Spec.Bin)
	if err != nil {
		return err
	}
	st.Bin = bin
	if err := l.drv.prepare(ctx); err != nil {
		return err
	}
	if err := l.makeHub(ctx, lay, bits); err != nil {
		return err
	}
	if st.Spec.Routed != nil {
		if err := l.makeRacks(ctx, lay); err != nil {
			return err
		}
	}
	for i := range st.Spec.Nodes {
		name := NodeName(i + 1)
		dir := filepath.Join(st.Dir, name)
		st.Nodes = append(st.Nodes, nodeState{Name: name, NetNS: st.Spec.Name + "-" + name, HubLink: name,
			IP: lay.nodeAddr(i + 1), Dir: dir, SubnetFile: filepath.Join(dir, "subnet.env"), LogPath: filepath.Join(dir, "twilld.log"),
			StateDir: filepath.Join(dir, "state")})
		if st.Spec.IPv6() {
			st.Nodes[i].IP6 = lay.addr6(st.Nodes[i].IP)
		}
		if st.Spec.Routed != nil {
			st.placeNode(i, &st.Nodes[i])
		}
		if err := writeState(st); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := l.drv.makeNode(ctx, i, bits); err != nil {
			return fmt.Errorf("make node %s: %w", name, err)
		}
	}
	if st.Spec.Outside {
		if err := l.makeOutside(ctx, lay, bits); err != nil {
			return err
		}
	}
	// A bare lab's twill is Ansible's to install.
	if l.drv.bare() {
		return l.drv.boot(ctx)
	}
	if r := st.Spec.Routed; r != nil && r.Router != "" {
		if err := l.startRouter(ctx, false); err != nil {
			return err
		}
	}
	if err := l.startEtcd(ctx); err != nil {
		return err
	}
	if st.Spec.Store == "kube" {
		if err := l.startKubeAPI(ctx); err != nil {
			return err
		}
	} else if err := l.putNetConfig(ctx); err != nil {
		return err
	}
	if err := l.drv.boot(ctx); err != nil {
		return err
	}
	if err := l.routeNodes(ctx); err != nil {
		return err
	}
	// The nodes' daemons start together and become ready together.
	errs := make([]error, len(st.Nodes))
	var wg sync.WaitGroup
	for i, n := range st.Nodes {
		wg.Go(func() { errs[i] = l.drv.startDaemon(ctx, n.Name) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.addPods(ctx)
}

// addPods adds Spec.PodsPerNode pods to every node, named after their
// node: n1p1, n1p2 on n1, n2p1 on n2, ...
func (l *Lab) addPods(ctx context.Context) error {
	st := l.snapshot()
	for _, n := range st.Nodes {
		for k := 1; k <= st.Spec.PodsPerNode; k++ {
			if _, err := l.AddPod(ctx, n.Name, n.Name+"p"+strconv.Itoa(k)); err != nil {
				return err
			}
		}
	}
	return nil
}

// findBin finds the directory with the three binaries: bin if given, else
// the running executable's directory if it has them (twillctl's, as make
// build and an install lay them out), else internal/binaries': bin/ of
// make build when it is current with the source, else one shared build.
func findBin(ctx context.Context, bin string) (string, error) {
	has := func(dir string) bool {
		for _, b := range binaries.Names {
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
	dir, err := binaries.Dir(ctx)
	if err != nil {
		return "", fmt.Errorf("twill's binaries (or give Spec.Bin): %w", err)
	}
	return dir, nil
}

// twilldArgs are twilld's flags on node n of the lab with state st.
func twilldArgs(st *state, n nodeState) []string {
	spec := st.Spec
	args := []string{"--etcd-endpoints", st.EtcdURL}
	if spec.Store == "kube" {
		args = kubeTwilldArgs(st)
	}
	args = append(args,
		"--public-ip", n.IP.String(),
		"--iface", "eth0",
		"--node-name", spec.Name+"-"+n.Name,
		"--subnet-file", n.SubnetFile,
		"--listen", net.JoinHostPort(n.IP.String(), strconv.Itoa(DashboardPort)),
	)
	if n.StateDir != "" {
		args = append(args, "--state-dir", n.StateDir)
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
	args = append(args, bgpRouterArgs(st, n)...)
	args = append(args, spec.TwilldArgs...)
	return append(args, spec.NodeArgs[n.Name]...)
}

// Open attaches to a running lab by its state file.
func Open(name string) (*Lab, error) {
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
	return newLab(name, st, nil)
}

// update changes the state under the lab's lock, against the newest state
// on disk (another process may have added a pod).
func (l *Lab) update(f func(st *state) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	unlock, err := filelock.Lock(filepath.Join(labDir(l.name), "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState(l.name)
	if err != nil {
		return err
	}
	l.st = st
	if err := f(l.st); err != nil {
		return err
	}
	return writeState(l.st)
}

// snapshot returns the newest state.
func (l *Lab) snapshot() *state {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, err := readState(l.name); err == nil {
		l.st = st
	}
	return l.st
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.name }

// Spec is the lab's spec, with defaults filled in.
func (l *Lab) Spec() Spec { return l.snapshot().Spec }

// Driver is the lab's driver, netns or qemu.
func (l *Lab) Driver() string { return l.snapshot().Spec.Driver }

// Dir is the lab's directory.
func (l *Lab) Dir() string { return labDir(l.name) }

// Nodes returns the nodes, with their subnets read now.
func (l *Lab) Nodes() []Node {
	st := l.snapshot()
	out := make([]Node, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		out = append(out, l.node(n))
	}
	return out
}

// Node returns one node by its name (n1), its daemon's name (<lab>-n1) or
// its namespace.
func (l *Lab) Node(name string) (Node, error) {
	st := l.snapshot()
	i, err := findNode(st, l.name, name)
	if err != nil {
		return Node{}, err
	}
	return l.node(st.Nodes[i]), nil
}

func (l *Lab) node(n nodeState) Node {
	node := Node{
		Name:         n.Name,
		DaemonName:   l.name + "-" + n.Name,
		NetNS:        n.NetNS,
		UnderlayIP:   n.IP,
		UnderlayIP6:  n.IP6,
		DashboardURL: fmt.Sprintf("http://%s", net.JoinHostPort(n.IP.String(), strconv.Itoa(DashboardPort))),
		PID:          n.Daemon.PID,
		Running:      n.Daemon.alive(),
		LogPath:      n.LogPath,
		SubnetFile:   n.SubnetFile,
	}
	l.drv.view(n, &node)
	return node
}

// readSubnet sets node's subnet from the subnet file at path.
func readSubnet(path string, node *Node) {
	if f, err := subnetfile.Read(path); err == nil {
		node.Subnet, node.Subnet6 = f.NodeSubnet(), f.IPv6NodeSubnet()
	}
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
func (l *Lab) Pods() []Pod { return slices.Clone(l.snapshot().Pods) }

// AddPod makes a pod namespace <lab>-<node>-<pod> on node and attaches it
// with the CNI plugin, exactly as a runtime does (on the node: in its
// namespace, or in its VM).
func (l *Lab) AddPod(ctx context.Context, node, pod string) (Pod, error) {
	if err := validPodName(pod); err != nil {
		return Pod{}, err
	}
	var p Pod
	err := l.update(func(st *state) error {
		i, err := findNode(st, l.name, node)
		if err != nil {
			return err
		}
		for _, q := range st.Pods {
			if q.Name == pod {
				return fmt.Errorf("lab %s has a pod %s already (on %s)", l.name, pod, q.Node)
			}
		}
		n := st.Nodes[i]
		p = Pod{Name: pod, Node: n.Name, NetNS: n.NetNS + "-" + pod}
		p.NetNSPath = filepath.Join("/run/netns", p.NetNS)
		addrs, err := l.drv.attachPod(ctx, n, p)
		if err != nil {
			return fmt.Errorf("add pod %s on %s: %w", pod, n.Name, err)
		}
		addrs.set(&p)
		st.Pods = append(st.Pods, p)
		return nil
	})
	if err != nil {
		return Pod{}, err
	}
	l.log.Info("pod added", "pod", p.Name, "node", p.Node, "addr", p.Addr, "addr6", p.Addr6)
	return p, nil
}

// DelPod detaches a pod (CNI DEL) and deletes its namespace.
func (l *Lab) DelPod(ctx context.Context, pod string) error {
	var errs []error
	err := l.update(func(st *state) error {
		k := slices.IndexFunc(st.Pods, func(q Pod) bool { return q.Name == pod })
		if k < 0 {
			return fmt.Errorf("lab %s has no pod %q", l.name, pod)
		}
		p := st.Pods[k]
		if i, err := findNode(st, l.name, p.Node); err != nil {
			errs = append(errs, err)
		} else if err := l.drv.detachPod(ctx, st.Nodes[i], p); err != nil {
			errs = append(errs, fmt.Errorf("delete pod %s: %w", pod, err))
		}
		st.Pods = slices.Delete(st.Pods, k, k+1)
		return nil
	})
	if err != nil {
		return err
	}
	l.log.Info("pod deleted", "pod", pod)
	return errors.Join(errs...)
}

// Exec runs argv on a node, in a pod's namespace, or in a namespace of the
// lab's on this host (the hub, the outside), each by its name, and returns
// its combined output.
func (l *Lab) Exec(ctx context.Context, target string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	return l.drv.exec(ctx, target, argv)
}

// StartDaemon starts twilld on a node unless it runs, and waits until it is
// ready (it logged "ready", after writing its subnet file).
func (l *Lab) StartDaemon(ctx context.Context, node string) error {
	return l.drv.startDaemon(ctx, node)
}

// StopDaemon stops a node's twilld with sig (SIGTERM: a clean stop;
// SIGKILL: a crash) and waits until it has ended. A daemon that does not
// end within 15 s of SIGTERM is an error (and is killed).
func (l *Lab) StopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	return l.drv.stopDaemon(ctx, node, sig)
}

// RebootNode reboots a node's VM (a hard reset after a sync, as a power
// cycle would leave it), waits until it is back, starts twilld and
// attaches its pods again. Only the qemu driver can.
func (l *Lab) RebootNode(ctx context.Context, node string) error {
	if r, ok := l.drv.(rebooter); ok {
		return r.rebootNode(ctx, node)
	}
	return fmt.Errorf("reboot-node: %w by the %s driver (only VMs with the agent are rebooted)", errors.ErrUnsupported, l.Driver())
}

// SetUnderlayLoss makes a node's underlay link lose lossPercent of its
// packets and delay each by delay (netem); zeros remove it. Only the qemu
// driver can: this host's kernel has no netem.
func (l *Lab) SetUnderlayLoss(ctx context.Context, node string, lossPercent float64, delay time.Duration) error {
	if s, ok := l.drv.(shaper); ok {
		return s.setUnderlayLoss(ctx, node, lossPercent, delay)
	}
	return fmt.Errorf("underlay-loss: %w by the %s driver (netem is not in this host's kernel)", errors.ErrUnsupported, l.Driver())
}

// Close releases the lab's handles in this process; the lab keeps running.
func (l *Lab) Close() error { return l.drv.close() }
