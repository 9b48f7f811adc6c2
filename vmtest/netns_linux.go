package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/twillnet/twill/overlay/subnetfile"
)

// The netns driver makes each node a network namespace of this host,
// <lab>-<node>, with eth0 a veth whose other end is a port of the hub's
// bridge. twilld runs in it as a process of this host, and pods are
// namespaces <lab>-<node>-<pod> attached by the CNI plugin through libcni,
// run inside the node's namespace as a runtime would. The nodes share this
// host's kernel: no reboot, no netem.
type netnsDriver struct {
	l *Lab
}

// prepare links the CNI plugin where libcni finds it by its type, "twill".
func (d *netnsDriver) prepare(context.Context) error {
	st := d.l.st
	cniBin := filepath.Join(st.Dir, "cni-bin")
	if err := os.MkdirAll(cniBin, 0o755); err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join(st.Bin, "twill-cni"), filepath.Join(cniBin, "twill")); err != nil {
		return fmt.Errorf("link the CNI plugin: %w", err)
	}
	if len(st.Spec.FlannelNodes) == 0 {
		return nil
	}
	dir, err := flannelDir(st.Spec)
	if err != nil {
		return fmt.Errorf("flannel nodes %v: %w", st.Spec.FlannelNodes, err)
	}
	st.FlannelBin = dir
	for _, p := range []string{"bridge", "host-local"} {
		if err := os.Symlink(filepath.Join(dir, p), filepath.Join(cniBin, p)); err != nil {
			return fmt.Errorf("link the CNI plugin %s: %w", p, err)
		}
	}
	return nil
}

func (d *netnsDriver) makeNode(ctx context.Context, i int, bits int) error {
	st := d.l.st
	n := st.Nodes[i]
	if err := d.l.attach(ctx, n.HubLink, n.NetNS, n.IP, n.IP6, bits); err != nil {
		return err
	}
	// Nodes route pods' packets; the host's own namespace is left as it is.
	forward := "echo 1 > /proc/sys/net/ipv4/ip_forward"
	if n.IP6.IsValid() {
		forward += " && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"
	}
	if err := run(ctx, "ip", "netns", "exec", n.NetNS, "sh", "-c", forward); err != nil {
		return err
	}
	// Underlay pods take the node's default gateway as theirs: the hub
	// plays the segment's router.
	if st.Spec.underlayLab() {
		return run(ctx, "ip", "-n", n.NetNS, "route", "add", "default", "via", st.HubAddr.String())
	}
	return nil
}

func (d *netnsDriver) boot(context.Context) error { return nil }

func (d *netnsDriver) bare() bool { return false }

func (d *netnsDriver) startDaemon(ctx context.Context, node string) error {
	var n nodeState
	var off int64
	started := false
	ready := twilldReady
	err := d.l.update(func(st *state) error {
		i, err := findNode(st, d.l.name, node)
		if err != nil {
			return err
		}
		if st.Nodes[i].Daemon.alive() {
			return nil
		}
		n = st.Nodes[i]
		exe, args := filepath.Join(st.Bin, "twilld"), twilldArgs(st, n)
		if st.Spec.Flannel(n.Name) {
			exe, args, ready = filepath.Join(st.FlannelBin, "flanneld"), flannelArgs(st, n), flannelReady
		}
		p, o, err := startIn(n.NetNS, exe, args, n.LogPath)
		if err != nil {
			return err
		}
		st.Nodes[i].Daemon, n.Daemon, off, started = p, p, o, true
		return nil
	})
	if err != nil || !started {
		return err
	}
	d.l.log.Info(filepath.Base(n.Daemon.Exe)+" started", "node", n.Name, "pid", n.Daemon.PID)
	if err := waitLog(ctx, n.Daemon, n.LogPath, off, ready, 60*time.Second); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

func (d *netnsDriver) stopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	st := d.l.snapshot()
	i, err := findNode(st, d.l.name, node)
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
	d.l.log.Info("twilld stopped", "node", st.Nodes[i].Name, "signal", sig)
	return nil
}

// exec runs argv in the namespace target names: a namespace, or a node's
// or a pod's name.
func (d *netnsDriver) exec(ctx context.Context, target string, argv []string) ([]byte, error) {
	return hostExec(ctx, d.netns(target), argv...)
}

func (d *netnsDriver) netns(name string) string {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
		return name
	}
	st := d.l.snapshot()
	if i, err := findNode(st, d.l.name, name); err == nil {
		return st.Nodes[i].NetNS
	}
	for _, p := range st.Pods {
		if p.Name == name {
			return p.NetNS
		}
	}
	return name
}

func (d *netnsDriver) attachPod(ctx context.Context, n nodeState, p Pod) (podAddrs, error) {
	if err := run(ctx, "ip", "netns", "add", p.NetNS); err != nil {
		return podAddrs{}, err
	}
	addrs, err := d.cniAdd(ctx, n, p)
	if err != nil {
		return podAddrs{}, errors.Join(err, run(context.WithoutCancel(ctx), "ip", "netns", "del", p.NetNS))
	}
	return addrs, nil
}

func (d *netnsDriver) detachPod(ctx context.Context, n nodeState, p Pod) error {
	var errs []error
	if rt, list, err := d.cni(n); err != nil {
		errs = append(errs, err)
	} else if err := rt.DelNetworkList(ctx, list, podRuntime(p)); err != nil {
		errs = append(errs, fmt.Errorf("CNI DEL: %w", err))
	}
	if err := run(ctx, "ip", "netns", "del", p.NetNS); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *netnsDriver) view(n nodeState, node *Node) { readSubnet(n.SubnetFile, node) }

func (d *netnsDriver) down(context.Context) []proc {
	var procs []proc
	for _, n := range d.l.st.Nodes {
		procs = append(procs, n.Daemon)
		removeUDPPins(n.NetNS)
	}
	return procs
}

// removeUDPPins removes what a udp twilld pinned for the namespace netns
// (its kernel path outlives it, for the next twilld to take over; see
// kernelpath.PinDir: /sys/fs/bpf/twill/<the namespace's inode>), as
// twilld --cleanup would: the namespace goes with the lab, the pins would
// stay on this machine's bpffs. A twilld still running keeps its programs
// until it ends.
func removeUDPPins(netns string) {
	fi, err := os.Stat(filepath.Join("/run/netns", netns))
	if err != nil {
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		_ = os.RemoveAll(filepath.Join("/sys/fs/bpf/twill", strconv.FormatUint(st.Ino, 10)))
	}
}

func (d *netnsDriver) close() error { return nil }

// nodeExec runs CNI plugins inside a node's namespace, as the node's
// container runtime would (ip netns exec, so no thread of this process
// changes namespace).
type nodeExec struct {
	*invoke.DefaultExec
	netns string
}

func (e nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.netns, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// A plugin reports its error as JSON on stdout.
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Msg != "" {
			return nil, &perr
		}
		return nil, fmt.Errorf("run %s in %s: %w: %s", filepath.Base(pluginPath), e.netns, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

const conflist = `{
  "cniVersion": "1.1.0",
  "name": "twill",
  "plugins": [{"type": "twill", "subnetFile": %q, "bridge": "cni0", "dataDir": %q, "isGateway": true, "hairpinMode": true}]
}`

// cni returns the CNI runtime and network list of a node.
func (d *netnsDriver) cni(n nodeState) (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	conf := fmt.Appendf(nil, conflist, n.SubnetFile, filepath.Join(n.Dir, "cni"))
	if d.l.st.Spec.Flannel(n.Name) {
		f, err := subnetfile.Read(n.SubnetFile)
		if err != nil {
			return nil, nil, fmt.Errorf("flannel's subnet file of node %s: %w", n.Name, err)
		}
		if conf, err = flannelConflist(f, filepath.Join(n.Dir, "cni")); err != nil {
			return nil, nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, nil, fmt.Errorf("CNI config of node %s: %w", n.Name, err)
	}
	exe := nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, netns: n.NetNS}
	rt := libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(labDir(d.l.name), "cni-bin")}, filepath.Join(n.Dir, "cni-cache"), exe)
	return rt, list, nil
}

func podRuntime(p Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.Name, NetNS: p.NetNSPath, IfName: "eth0"}
}

func (d *netnsDriver) cniAdd(ctx context.Context, n nodeState, p Pod) (podAddrs, error) {
	rt, list, err := d.cni(n)
	if err != nil {
		return podAddrs{}, err
	}
	res, err := rt.AddNetworkList(ctx, list, podRuntime(p))
	if err != nil {
		return podAddrs{}, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return podAddrs{}, fmt.Errorf("CNI result: %w", err)
	}
	return addrsOf(r)
}
