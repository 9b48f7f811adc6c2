package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// A Remote cluster is made of machines where twill was installed by the
// Ansible roles (ansible/): twilld is the systemd unit twilld with its
// settings in /etc/twill/twilld.env, pods are attached by the CNI plugin and
// conflist the role installed, and leases are read with twillctl on a node.
// The machines are reached over SSH only; Remote starts no machine and
// installs nothing. The vagrant driver (OpenVagrant) and the rollout test's
// system image lab (Cluster.Remote) are Remote clusters.

// Where the Ansible role puts things on a node (its defaults).
const (
	remoteEnvFile  = "/etc/twill/twilld.env"
	remoteConfList = "/etc/cni/net.d/10-twill.conflist"
	remoteCNIPath  = "/opt/cni/bin"
)

// RemoteSpec says how to reach the machines of a Remote cluster.
type RemoteSpec struct {
	// Name names the cluster in messages and reports.
	Name  string
	Nodes []RemoteNode
	// SSH is the command line up to the destination, e.g.
	// ["ssh", "-F", "ssh-config"]; the node's Host and the remote command
	// are appended.
	SSH []string
	// Sudo runs remote commands through sudo (a login that is not root).
	Sudo bool
	// SSHOnUnderlay says that SSH reaches the nodes over their underlay
	// link, so cutting that link (SetUnderlay) would cut the cluster off:
	// it is reported as unsupported.
	SSHOnUnderlay bool
	// Outside is a host outside the cluster on the nodes' underlay, in a
	// network namespace of this machine; nil: none.
	Outside *RemoteOutside
	// Dir keeps local copies of the nodes' subnet files (made if missing).
	Dir string
	// ControlTimeout bounds each command that is not a test's own (reading
	// state, starting and stopping units); 0: 60 s.
	ControlTimeout time.Duration
}

// RemoteNode is one machine of a Remote cluster.
type RemoteNode struct {
	// Name is the scenarios' name of the node: n1, n2, ...
	Name string
	// Host is the SSH destination.
	Host string
	// UnderlayIP is the address twilld registers (its public IP).
	UnderlayIP netip.Addr
}

// RemoteOutside is the host outside a Remote cluster.
type RemoteOutside struct {
	// NetNS is a network namespace of this machine; "" is this process's.
	NetNS string
	Addr  netip.Addr
}

// outsideName is the name Exec knows the outside host by.
const outsideName = "outside"

// Remote is a running Remote cluster. It is a Cluster and a LeaseLister;
// faults it cannot cause (a reboot, netem on the underlay) are not methods
// of it, so the scenarios report them as unsupported.
type Remote struct {
	spec RemoteSpec
	log  *slog.Logger
	mu   sync.Mutex
	pods []Pod
	// etcdStopped are the nodes where StopEtcd stopped etcd.
	etcdStopped []string
}

var (
	_ Cluster     = (*Remote)(nil)
	_ LeaseLister = (*Remote)(nil)
)

// NewRemote checks the spec and returns the cluster; it contacts no node.
func NewRemote(spec RemoteSpec, log *slog.Logger) (*Remote, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if len(spec.Nodes) == 0 {
		errs = append(errs, errors.New("no nodes"))
	}
	if len(spec.SSH) == 0 {
		errs = append(errs, errors.New("no ssh command"))
	}
	seen := map[string]bool{}
	for _, n := range spec.Nodes {
		if n.Name == "" || n.Host == "" || !n.UnderlayIP.IsValid() {
			errs = append(errs, fmt.Errorf("node %+v: want a name, a host and an underlay address", n))
		}
		if seen[n.Name] {
			errs = append(errs, fmt.Errorf("node %s twice", n.Name))
		}
		seen[n.Name] = true
	}
	if spec.Dir == "" {
		errs = append(errs, errors.New("no directory for the subnet files"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("remote cluster %s: %w", spec.Name, err)
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	if spec.ControlTimeout == 0 {
		spec.ControlTimeout = 60 * time.Second
	}
	return &Remote{spec: spec, log: log.With("cluster", spec.Name)}, nil
}

// Name is the cluster's name.
func (r *Remote) Name() string { return r.spec.Name }

func (r *Remote) node(name string) (RemoteNode, error) {
	for _, n := range r.spec.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return RemoteNode{}, fmt.Errorf("cluster %s has no node %q", r.spec.Name, name)
}

// ssh runs a shell script on a node (as root) with stdin, and returns its
// combined output.
func (r *Remote) ssh(ctx context.Context, n RemoteNode, stdin []byte, script string) ([]byte, error) {
	remote := "sh -c " + shellQuote(script)
	if r.spec.Sudo {
		remote = "sudo -n " + remote
	}
	argv := append(slices.Clone(r.spec.SSH), n.Host, remote)
	out, err := runToFile(ctx, stdin, argv...)
	if err != nil {
		return out, fmt.Errorf("on %s: %w", n.Name, err)
	}
	return out, nil
}

// Close ends the shared SSH connections (ssh -O exit), where the ssh
// command line shares them.
func (r *Remote) Close() error {
	if !slices.ContainsFunc(r.spec.SSH, func(a string) bool { return strings.HasPrefix(a, "ControlPath=") }) {
		return nil
	}
	var wg sync.WaitGroup
	for _, n := range r.spec.Nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			argv := append(slices.Clone(r.spec.SSH), "-O", "exit", n.Host)
			_, _ = runToFile(ctx, nil, argv...) // none left is fine
		})
	}
	wg.Wait()
	return nil
}

// control runs a script that is the cluster's own business, bounded by
// ControlTimeout.
func (r *Remote) control(ctx context.Context, n RemoteNode, script string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.spec.ControlTimeout)
	defer cancel()
	return r.ssh(ctx, n, nil, script)
}

// nodeScript prints whether twilld is active and the node's subnet file.
const nodeScript = `set -a; . ` + remoteEnvFile + ` 2>/dev/null; set +a
echo "$(systemctl is-active twilld)"
cat "${TWILLD_SUBNET_FILE:-/run/twill/subnet.env}" 2>/dev/null; true`

// view reads a node's state: whether twilld runs and its subnet (the
// subnet file is copied to Dir, where Node.SubnetFile points).
func (r *Remote) view(ctx context.Context, n RemoteNode) Node {
	node := Node{Name: n.Name, DaemonName: n.Host, NetNS: n.Name, UnderlayIP: n.UnderlayIP,
		SubnetFile: filepath.Join(r.spec.Dir, n.Name+".subnet.env")}
	out, err := r.control(ctx, n, nodeScript)
	if err != nil {
		r.log.Warn("read node state", "node", n.Name, "err", err, "out", strings.TrimSpace(string(out)))
		return node
	}
	state, body, _ := strings.Cut(string(out), "\n")
	node.Running = state == "active"
	if strings.TrimSpace(body) == "" {
		_ = os.Remove(node.SubnetFile)
		return node
	}
	if err := os.WriteFile(node.SubnetFile, []byte(body), 0o644); err == nil {
		if f, err := subnetfile.Read(node.SubnetFile); err == nil {
			node.Subnet = f.NodeSubnet()
		}
	}
	return node
}

// Nodes returns the nodes with their state read now.
func (r *Remote) Nodes() []Node {
	out := make([]Node, len(r.spec.Nodes))
	var wg sync.WaitGroup
	for i, n := range r.spec.Nodes {
		wg.Go(func() { out[i] = r.view(context.Background(), n) })
	}
	wg.Wait()
	return out
}

// Node returns one node with its state read now.
func (r *Remote) Node(name string) (Node, error) {
	n, err := r.node(name)
	if err != nil {
		return Node{}, err
	}
	return r.view(context.Background(), n), nil
}

// Pods returns the pods added through this cluster.
func (r *Remote) Pods() []Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pods)
}

// pluginConf turns the conflist into the single plugin's config, as a
// runtime does, and names the plugin binary.
func pluginConf(conflist []byte) (conf []byte, plugin string, err error) {
	var cl struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &cl); err != nil {
		return nil, "", fmt.Errorf("read the conflist: %w", err)
	}
	if len(cl.Plugins) != 1 {
		return nil, "", fmt.Errorf("the conflist has %d plugins, want 1", len(cl.Plugins))
	}
	p := cl.Plugins[0]
	plugin, _ = p["type"].(string)
	if plugin == "" || strings.ContainsAny(plugin, "/ ") {
		return nil, "", fmt.Errorf("the conflist's plugin type %q", plugin)
	}
	p["cniVersion"], p["name"] = cl.CNIVersion, cl.Name
	conf, err = json.Marshal(p)
	return conf, plugin, err
}

// cniScript runs the CNI plugin $3 on the node with the config in
// $PLUGIN_CONF; $1 is the command, $2 the pod. ADD first makes the pod's
// namespace, removing one left over by an earlier run; DEL removes it.
const cniScript = `set -e
pod=$2 plugin=$3
cni() {
	CNI_COMMAND=$1 CNI_CONTAINERID=$pod CNI_NETNS=/run/netns/$pod CNI_IFNAME=eth0 CNI_PATH=` + remoteCNIPath + ` \
		` + remoteCNIPath + `/"$plugin"
}
case $1 in
ADD)
	if [ -e /run/netns/$pod ]; then
		cni DEL <"$PLUGIN_CONF" >/dev/null || true
		ip netns del $pod
	fi
	ip netns add $pod
	ip -n $pod link set lo up
	cni ADD <"$PLUGIN_CONF"
	;;
DEL)
	cni DEL <"$PLUGIN_CONF" >/dev/null
	ip netns del $pod
	;;
esac`

// cni runs the CNI plugin on node n for pod, with the plugin config made
// from the node's conflist (read first), and returns the plugin's output.
func (r *Remote) cni(ctx context.Context, n RemoteNode, command, pod string) ([]byte, error) {
	list, err := r.control(ctx, n, "cat "+remoteConfList)
	if err != nil {
		return nil, fmt.Errorf("read the CNI conflist on %s: %w: %s", n.Name, err, strings.TrimSpace(string(list)))
	}
	conf, plugin, err := pluginConf(list)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", remoteConfList, n.Name, err)
	}
	// The plugin config goes in on stdin, kept in a file for the two
	// plugin runs of an ADD over a leftover.
	script := `PLUGIN_CONF=$(mktemp); trap 'rm -f "$PLUGIN_CONF"' EXIT; cat >"$PLUGIN_CONF"; set -- ` +
		shellQuoteAll([]string{command, pod, plugin}) + "\n" + cniScript
	ctx, cancel := context.WithTimeout(ctx, r.spec.ControlTimeout)
	defer cancel()
	out, err := r.ssh(ctx, n, conf, script)
	if err != nil {
		return out, fmt.Errorf("CNI %s of pod %s on %s: %w: %s", command, pod, n.Name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// AddPod makes a pod on a node: a network namespace named after the pod,
// attached by the node's CNI plugin as a container runtime would.
func (r *Remote) AddPod(ctx context.Context, node, pod string) (Pod, error) {
	if err := validPodName(pod); err != nil {
		return Pod{}, err
	}
	n, err := r.node(node)
	if err != nil {
		return Pod{}, err
	}
	out, err := r.cni(ctx, n, "ADD", pod)
	if err != nil {
		return Pod{}, err
	}
	res, err := types100.NewResult(out)
	if err != nil {
		return Pod{}, fmt.Errorf("CNI result of pod %s: %w: %s", pod, err, strings.TrimSpace(string(out)))
	}
	cur, err := types100.NewResultFromResult(res)
	if err != nil {
		return Pod{}, fmt.Errorf("CNI result of pod %s: %w", pod, err)
	}
	p := Pod{Name: pod, Node: node, NetNS: pod, NetNSPath: "/run/netns/" + pod}
	a, err := addrsOf(cur)
	if err != nil {
		return Pod{}, fmt.Errorf("pod %s: %w", pod, err)
	}
	a.set(&p)
	r.mu.Lock()
	r.pods = slices.DeleteFunc(r.pods, func(q Pod) bool { return q.Name == pod })
	r.pods = append(r.pods, p)
	r.mu.Unlock()
	return p, nil
}

// DelPod detaches a pod (CNI DEL) and removes its namespace.
func (r *Remote) DelPod(ctx context.Context, pod string) error {
	r.mu.Lock()
	i := slices.IndexFunc(r.pods, func(q Pod) bool { return q.Name == pod })
	var p Pod
	if i >= 0 {
		p = r.pods[i]
	}
	r.mu.Unlock()
	if i < 0 {
		return fmt.Errorf("cluster %s has no pod %q", r.spec.Name, pod)
	}
	n, err := r.node(p.Node)
	if err != nil {
		return err
	}
	if _, err := r.cni(ctx, n, "DEL", pod); err != nil {
		return err
	}
	r.mu.Lock()
	r.pods = slices.DeleteFunc(r.pods, func(q Pod) bool { return q.Name == pod })
	r.mu.Unlock()
	return nil
}

// remoteBinary maps a twill binary, named by any path, to where the role
// installed it on a node.
func remoteBinary(argv0 string) string {
	switch filepath.Base(argv0) {
	case "twilld", "twillctl":
		return "/usr/local/bin/" + filepath.Base(argv0)
	case "twill-cni":
		return remoteCNIPath + "/twill"
	}
	return argv0
}

// Exec runs argv on a node (by name), in a pod's namespace on its node (by
// the pod's name), or, for "outside", on the outside host; it returns the
// combined output. twill's binaries, named by any path, run from the
// node's installed copies.
func (r *Remote) Exec(ctx context.Context, target string, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	if target == outsideName && r.spec.Outside != nil {
		if r.spec.Outside.NetNS == "" {
			out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
			if err != nil {
				return out, fmt.Errorf("outside: %s: %w", strings.Join(argv, " "), err)
			}
			return out, nil
		}
		return hostExec(ctx, r.spec.Outside.NetNS, argv...)
	}
	argv = slices.Clone(argv)
	argv[0] = remoteBinary(argv[0])
	n, err := r.node(target)
	if err != nil {
		r.mu.Lock()
		i := slices.IndexFunc(r.pods, func(q Pod) bool { return q.Name == target || q.NetNS == target })
		var p Pod
		if i >= 0 {
			p = r.pods[i]
		}
		r.mu.Unlock()
		if i < 0 {
			return nil, fmt.Errorf("cluster %s has no node or pod %q", r.spec.Name, target)
		}
		if n, err = r.node(p.Node); err != nil {
			return nil, err
		}
		argv = append([]string{"ip", "netns", "exec", p.NetNS}, argv...)
	}
	out, err := r.ssh(ctx, n, nil, "exec "+shellQuoteAll(argv))
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w", target, strings.Join(argv, " "), err)
	}
	return out, nil
}

// StartDaemon starts the twilld unit unless it runs; systemctl returns once
// twilld has told systemd it is ready (Type=notify).
func (r *Remote) StartDaemon(ctx context.Context, node string) error {
	n, err := r.node(node)
	if err != nil {
		return err
	}
	out, err := r.control(ctx, n, `systemctl start twilld || { journalctl -u twilld -n 15 --no-pager; exit 1; }`)
	if err != nil {
		return fmt.Errorf("start twilld on %s: %w: %s", node, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StopDaemon stops twilld with sig: SIGTERM is systemctl stop; another
// signal is sent to it, and the unit is then stopped so that systemd does
// not restart it (Restart=on-failure).
func (r *Remote) StopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	n, err := r.node(node)
	if err != nil {
		return err
	}
	script := "systemctl stop twilld"
	if sig != syscall.SIGTERM {
		script = fmt.Sprintf("systemctl kill --signal=%d twilld; sleep 0.5; systemctl stop twilld", int(sig))
	}
	if out, err := r.control(ctx, n, script); err != nil {
		return fmt.Errorf("stop twilld on %s: %w: %s", node, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// SetUnderlay takes the interface with the node's underlay address down or
// up. Unsupported when SSH itself runs over it.
func (r *Remote) SetUnderlay(ctx context.Context, node string, up bool) error {
	if r.spec.SSHOnUnderlay {
		return fmt.Errorf("underlay down/up: %w by this cluster (it reaches its nodes over their underlay link)", errors.ErrUnsupported)
	}
	n, err := r.node(node)
	if err != nil {
		return err
	}
	state := "down"
	if up {
		state = "up"
	}
	script := fmt.Sprintf(`dev=$(ip -o -4 addr show | awk '$4 ~ /^%s\// { print $2; exit }'); [ -n "$dev" ] || { echo "no interface has %s" >&2; exit 1; }; ip link set dev "$dev" %s`,
		strings.ReplaceAll(n.UnderlayIP.String(), ".", `\.`), n.UnderlayIP, state)
	if up {
		// A link that is down has its address still.
		script = fmt.Sprintf(`dev=$(ip -o -4 addr show | awk '$4 ~ /^%s\// { print $2; exit }'); ip link set dev "$dev" up`,
			strings.ReplaceAll(n.UnderlayIP.String(), ".", `\.`))
	}
	if out, err := r.control(ctx, n, script); err != nil {
		return fmt.Errorf("underlay %s on %s: %w: %s", state, node, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StopEtcd stops etcd on every node where it runs.
func (r *Remote) StopEtcd(ctx context.Context) error {
	var stopped []string
	var errs []error
	for _, n := range r.spec.Nodes {
		out, err := r.control(ctx, n, `if systemctl -q is-active etcd; then systemctl stop etcd && echo stopped; fi`)
		if err != nil {
			errs = append(errs, fmt.Errorf("stop etcd on %s: %w: %s", n.Name, err, strings.TrimSpace(string(out))))
		}
		if strings.TrimSpace(string(out)) == "stopped" {
			stopped = append(stopped, n.Name)
		}
	}
	r.mu.Lock()
	r.etcdStopped = append(r.etcdStopped, stopped...)
	r.mu.Unlock()
	if len(stopped) == 0 && len(errs) == 0 {
		return fmt.Errorf("stop etcd: no node of %s runs etcd", r.spec.Name)
	}
	return errors.Join(errs...)
}

// StartEtcd starts etcd again where StopEtcd stopped it, on all those nodes
// at once (a member waits for the others' quorum).
func (r *Remote) StartEtcd(ctx context.Context) error {
	r.mu.Lock()
	names := r.etcdStopped
	r.etcdStopped = nil
	r.mu.Unlock()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		n, err := r.node(name)
		if err != nil {
			errs[i] = err
			continue
		}
		wg.Go(func() {
			if out, err := r.control(ctx, n, "systemctl start etcd"); err != nil {
				errs[i] = fmt.Errorf("start etcd on %s: %w: %s", name, err, strings.TrimSpace(string(out)))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// EtcdEndpoint is empty: etcd is reached through the nodes (Leases).
func (r *Remote) EtcdEndpoint() string { return "" }

// EtcdPrefix is empty: the nodes' twillctl knows it (Leases).
func (r *Remote) EtcdPrefix() string { return "" }

// Outside returns the outside host, if the cluster has one.
func (r *Remote) Outside() (string, netip.Addr, bool) {
	if r.spec.Outside == nil {
		return "", netip.Addr{}, false
	}
	return outsideName, r.spec.Outside.Addr, true
}

// Leases lists the leases in etcd, read with twillctl and twilld's own
// settings on the first node that answers.
func (r *Remote) Leases(ctx context.Context) ([]lease.Lease, error) {
	var errs []error
	for _, n := range r.spec.Nodes {
		out, err := r.control(ctx, n, `set -a; . `+remoteEnvFile+`; set +a; exec /usr/local/bin/twillctl leases -o json 2>&1`)
		if err != nil {
			errs = append(errs, fmt.Errorf("twillctl leases on %s: %w: %s", n.Name, err, strings.TrimSpace(string(out))))
			continue
		}
		var ls []lease.Lease
		if err := json.Unmarshal(out, &ls); err != nil {
			errs = append(errs, fmt.Errorf("twillctl leases on %s: %w: %s", n.Name, err, strings.TrimSpace(string(out))))
			continue
		}
		return ls, nil
	}
	return nil, errors.Join(errs...)
}

// podAddrs are a pod's addresses: the first of each family a CNI result
// gives it (an IPv6-only pod has no IPv4 one).
type podAddrs struct{ v4, v6 netip.Addr }

// set gives p the addresses.
func (a podAddrs) set(p *Pod) { p.Addr, p.Addr6 = a.v4, a.v6 }

// addrsOf reads a CNI result's addresses; it fails if there is none.
func addrsOf(r *types100.Result) (podAddrs, error) {
	var a podAddrs
	for _, ip := range r.IPs {
		ad, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		ad = ad.Unmap()
		if ad.Is4() && !a.v4.IsValid() {
			a.v4 = ad
		} else if ad.Is6() && !a.v6.IsValid() {
			a.v6 = ad
		}
	}
	if !a.v4.IsValid() && !a.v6.IsValid() {
		return a, fmt.Errorf("CNI result has no address: %v", r.IPs)
	}
	return a, nil
}
