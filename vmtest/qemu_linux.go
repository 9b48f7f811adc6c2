package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/twillnet/twill/overlay/subnetfile"
	"github.com/twillnet/twill/vmtest/agent"
)

// The qemu driver makes each node a VM: the Debian kernel and the project's
// initramfs (image_linux.go) under qemu-system-x86_64, its eth0 a tap
// device on the lab's underlay bridge in the hub namespace, where etcd
// listens as for the netns driver. The host reaches each VM through the
// agent on a virtio-serial port (vmtest/agent), never over the VM's
// network; the VM's console goes to a log file kept after the lab is gone.
// A small ext4 disk per VM keeps twilld's subnet file across reboots.
type qemuDriver struct {
	l *Lab
	// The connections to the VMs' agents, by node name.
	amu    sync.Mutex
	agents map[string]*agent.Client
}

// Where things are inside a VM.
const (
	vmSubnetFile = "/var/lib/twill/subnet.env"
	vmTwilldLog  = "/var/log/twilld.log"
	// A kube lab's kubeconfig (certificates inline) and network config,
	// copied in from the lab's directory before each start of twilld.
	vmKubeconfig    = "/var/lib/twill/kubeconfig"
	vmNetConfigFile = "/var/lib/twill/net-conf.json"
	vmCNIData       = "/var/lib/cni/twill"
	// vmMemory holds the kernel, the initramfs twice while it unpacks
	// (the archive and its files: 161 MB each with the Kubernetes store
	// in twilld, which no longer unpacked in 512 MiB: "Initramfs
	// unpacking failed: write error"), and the pods' traffic.
	vmMemory = "768"
)

// qemuBinary is the emulator the driver runs.
const qemuBinary = "qemu-system-x86_64"

// vmNode is the qemu driver's part of a node's state.
type vmNode struct {
	QEMU    proc   `json:"qemu"`
	Socket  string `json:"agent_socket"`
	Console string `json:"console"`
	Disk    string `json:"disk"`
	MAC     string `json:"mac"`
	// DaemonPID is twilld's PID inside the VM (0: not started).
	DaemonPID int    `json:"daemon_pid"`
	BootID    string `json:"boot_id"`
}

// prepare builds (or finds) the image and picks the accelerator; with
// flannel nodes it makes the lab's flannel disk (flannel_linux.go).
func (d *qemuDriver) prepare(ctx context.Context) error {
	st := d.l.st
	img, err := BuildImage(ctx, st.Spec.ImageDir, st.Bin, d.l.log)
	if err != nil {
		return fmt.Errorf("the VM image: %w", err)
	}
	if len(st.Spec.FlannelNodes) > 0 {
		dir, err := flannelDir(st.Spec)
		if err != nil {
			return fmt.Errorf("flannel nodes %v: %w", st.Spec.FlannelNodes, err)
		}
		st.FlannelBin = dir
		if err := makeFlannelDisk(ctx, dir, d.flannelDisk()); err != nil {
			return fmt.Errorf("flannel nodes %v: %w", st.Spec.FlannelNodes, err)
		}
	}
	return prepareVMs(ctx, d.l, img)
}

// flannelDisk is the lab's disk with flanneld and the CNI plugins.
func (d *qemuDriver) flannelDisk() string { return filepath.Join(d.l.st.Dir, "flannel.img") }

// prepareVMs records the image the VMs boot, picks the accelerator and
// makes the console directory; both VM drivers' prepare end with it.
func prepareVMs(ctx context.Context, l *Lab, img Image) error {
	st := l.st
	st.Image = img
	st.Accel = st.Spec.Accel
	if st.Accel == "auto" {
		st.Accel = probeAccel(ctx, st.Spec.ImageDir, st.Image)
		l.log.Info("accelerator", "accel", st.Accel)
	}
	if err := os.RemoveAll(st.Spec.ConsoleDir); err != nil {
		return err
	}
	if err := os.MkdirAll(st.Spec.ConsoleDir, 0o755); err != nil {
		return fmt.Errorf("console directory: %w", err)
	}
	return writeState(st)
}

// probeAccel boots the kernel once with KVM and an init that does not
// exist: if the kernel gets as far as looking for it, KVM works for a
// plain guest. The answer is remembered in dir.
func probeAccel(ctx context.Context, dir string, img Image) string {
	memo := filepath.Join(dir, "accel")
	if b, err := os.ReadFile(memo); err == nil {
		return strings.TrimSpace(string(b))
	}
	accel := "tcg"
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		out, _ := exec.CommandContext(pctx, qemuBinary, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
			"-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", img.Kernel,
			"-append", "console=ttyS0 panic=-1 rdinit=/twill-probe").CombinedOutput()
		cancel()
		if strings.Contains(string(out), "twill-probe") {
			accel = "kvm"
		}
	}
	_ = os.WriteFile(memo, []byte(accel+"\n"), 0o644)
	return accel
}

// newVM is node i's VM state before it is started: its files and MAC.
func newVM(st *state, i int) *vmNode {
	n := st.Nodes[i]
	return &vmNode{
		Socket:  filepath.Join(n.Dir, "agent.sock"),
		Console: filepath.Join(st.Spec.ConsoleDir, n.Name+".console.log"),
		MAC:     fmt.Sprintf("52:54:00:56:%02x:%02x", st.Slot, i+1),
	}
}

// startVM makes node i's tap on the hub's bridge, runs the steps that
// make its disk, and starts QEMU in the hub with the accelerator and args;
// both VM drivers' makeNode end with it.
func startVM(ctx context.Context, l *Lab, i int, vm *vmNode, disk [][]string, args []string) error {
	st := l.st
	n := &st.Nodes[i]
	n.VM = vm
	n.LogPath = vm.Console
	if err := writeState(st); err != nil {
		return err
	}
	steps := append([][]string{
		{"ip", "-n", st.HubNetNS, "tuntap", "add", "dev", n.HubLink, "mode", "tap"},
		{"ip", "-n", st.HubNetNS, "link", "set", n.HubLink, "master", st.bridge(*n), "up"},
	}, disk...)
	if err := runAll(ctx, steps); err != nil {
		return fmt.Errorf("make VM %s: %w", n.Name, err)
	}
	accel := []string{"-accel", "tcg", "-cpu", "max"}
	if st.Accel == "kvm" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	qemu, err := exec.LookPath(qemuBinary)
	if err != nil {
		return fmt.Errorf("%w (install %s)", err, VMPackages)
	}
	p, _, err := startIn(st.HubNetNS, qemu, append(accel, args...), filepath.Join(n.Dir, "qemu.log"))
	if err != nil {
		return err
	}
	vm.QEMU = p
	return writeState(st)
}

// makeNode makes node i's tap, disk and VM and starts it; boot waits.
func (d *qemuDriver) makeNode(ctx context.Context, i int, bits int) error {
	st := d.l.st
	n := st.Nodes[i]
	vm := newVM(st, i)
	vm.Disk = filepath.Join(n.Dir, "state.img")
	disk := [][]string{
		{"truncate", "-s", "16M", vm.Disk},
		{"mkfs.ext4", "-q", "-F", "-L", "twill", vm.Disk},
	}
	args := []string{
		"-name", st.Spec.Name + "-" + n.Name, "-m", vmMemory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:" + vm.Console,
		"-kernel", st.Image.Kernel, "-initrd", st.Image.Initrd,
		"-append", fmt.Sprintf("console=ttyS0 quiet twill.name=%s-%s twill.ip=%s/%d%s", st.Spec.Name, n.Name, n.IP, bits, ip6Arg(n)),
		"-netdev", "tap,id=u0,ifname=" + n.HubLink + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=u0,mac=" + vm.MAC + ",romfile=",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path=" + vm.Socket + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agent.PortName,
		"-drive", "file=" + vm.Disk + ",format=raw,if=virtio",
	}
	if st.Spec.Flannel(n.Name) { // the second virtio disk: vmFlannelDev
		args = append(args, "-drive", "file="+d.flannelDisk()+",format=raw,if=virtio,readonly=on")
	}
	return startVM(ctx, d.l, i, vm, disk, args)
}

// boot waits until every VM's agent answers.
func (d *qemuDriver) boot(ctx context.Context) error {
	st := d.l.st
	var wg sync.WaitGroup
	errs := make([]error, len(st.Nodes))
	boot := make([]string, len(st.Nodes))
	for i, n := range st.Nodes {
		wg.Go(func() { boot[i], errs[i] = d.waitBoot(ctx, n, "") })
	}
	wg.Wait()
	for i := range st.Nodes {
		st.Nodes[i].VM.BootID = boot[i]
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return writeState(st)
}

func (d *qemuDriver) bare() bool { return false }

// waitBoot waits until node n's agent answers with a boot ID other than
// old, and fails early if QEMU ends.
func (d *qemuDriver) waitBoot(ctx context.Context, n nodeState, old string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	t0 := time.Now()
	for {
		if !n.VM.QEMU.alive() {
			return "", qemuEnded(n)
		}
		cl, err := d.agent(ctx, n)
		if err == nil {
			hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
			id, herr := cl.Hello(hctx)
			hcancel()
			if herr == nil && id != old {
				d.l.log.Info("VM booted", "node", n.Name, "took", time.Since(t0).Round(100*time.Millisecond))
				return id, nil
			}
			err = herr
		}
		if ctx.Err() != nil {
			con, _ := os.ReadFile(n.VM.Console)
			return "", fmt.Errorf("VM %s did not boot (agent: %v); its console %s ends:\n%s", n.Name, err, n.VM.Console, tail(con, 15))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// qemuEnded is the error for node n's QEMU having ended, with its log and
// the end of the console.
func qemuEnded(n nodeState) error {
	log, _ := os.ReadFile(filepath.Join(n.Dir, "qemu.log"))
	con, _ := os.ReadFile(n.VM.Console)
	return fmt.Errorf("VM %s: QEMU ended: %s\nits console %s ends:\n%s", n.Name, strings.TrimSpace(string(log)), n.VM.Console, tail(con, 15))
}

// agent returns the connection to node n's agent, dialing it if needed.
// QEMU's socket takes one connection at a time: a lab is driven by one
// process at a time.
func (d *qemuDriver) agent(ctx context.Context, n nodeState) (*agent.Client, error) {
	d.amu.Lock()
	defer d.amu.Unlock()
	if cl, ok := d.agents[n.Name]; ok && cl.Alive() {
		return cl, nil
	}
	cl, err := agent.Dial(ctx, n.VM.Socket)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", n.Name, err)
	}
	if d.agents == nil {
		d.agents = map[string]*agent.Client{}
	}
	d.agents[n.Name] = cl
	return cl, nil
}

// vmExec runs argv as root in node n's VM.
func (d *qemuDriver) vmExec(ctx context.Context, n nodeState, env []string, stdin []byte, argv ...string) ([]byte, error) {
	cl, err := d.agent(ctx, n)
	if err != nil {
		return nil, err
	}
	out, err := cl.Exec(ctx, argv, env, stdin)
	if err != nil {
		return out, fmt.Errorf("in VM %s: %w", n.Name, err)
	}
	return out, nil
}

// vmShell runs a shell script in node n's VM.
func (d *qemuDriver) vmShell(ctx context.Context, n nodeState, script string) ([]byte, error) {
	return d.vmExec(ctx, n, nil, nil, "/bin/sh", "-c", script)
}

// startDaemon starts twilld (flanneld on a flannel node, from its disk) in
// a node's VM and waits until it is ready. Either logs to vmTwilldLog,
// which the VM mirrors to its console.
func (d *qemuDriver) startDaemon(ctx context.Context, node string) error {
	st := d.l.snapshot()
	i, err := findNode(st, d.l.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	if n.VM.DaemonPID > 0 && d.vmAlive(ctx, n, n.VM.DaemonPID) {
		return nil
	}
	inVM := n
	inVM.SubnetFile = vmSubnetFile
	inVM.StateDir = "" // twilld's default, /var/lib/twill: the VM's state disk
	if st.Spec.Store == "kube" {
		// The VM sees none of the host's files: its twilld gets copies.
		if st, err = d.copyKubeFiles(ctx, n, st); err != nil {
			return err
		}
	}
	name, ready, setup := "twilld", twilldReady, ""
	cmd := "/bin/twilld " + shellQuoteAll(twilldArgs(st, inVM))
	if st.Spec.Flannel(n.Name) {
		// The flannel disk is mounted once per boot (vmCNI runs its
		// CNI plugins from there); flanneld runs nft and iptables by
		// name.
		name, ready = "flanneld", flannelReady
		setup = fmt.Sprintf(`mkdir -p %[1]s; grep -q ' %[1]s ' /proc/mounts || mount -t ext4 -o ro %[2]s %[1]s || exit 1; export %[3]s; `,
			vmFlannelDir, vmFlannelDev, strings.Join(vmFlannelEnv, " "))
		cmd = vmFlannelDir + "/flanneld " + shellQuoteAll(flannelArgs(st, inVM))
	}
	// setsid: the daemon leaves the agent's process group, so it outlives
	// the shell; busybox init reaps it when it ends.
	script := fmt.Sprintf(`%[3]soff=$(stat -c %%s %[1]s); setsid %[2]s >> %[1]s 2>&1 < /dev/null & echo "$! $off"`,
		vmTwilldLog, cmd, setup)
	out, err := d.vmShell(ctx, n, script)
	if err != nil {
		return fmt.Errorf("start %s on %s: %w: %s", name, n.Name, err, out)
	}
	var pid int
	var off int64
	if _, err := fmt.Sscan(string(out), &pid, &off); err != nil {
		return fmt.Errorf("start %s on %s: %q", name, n.Name, out)
	}
	if err := d.l.update(func(st *state) error {
		st.Nodes[i].VM.DaemonPID = pid
		return nil
	}); err != nil {
		return err
	}
	d.l.log.Info(name+" started", "node", n.Name, "pid", pid)
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	check := fmt.Sprintf(`tail -c +%d %s | grep -q %s && echo ready; kill -0 %d 2>/dev/null && echo alive; true`, off+1, vmTwilldLog, shellQuote(ready), pid)
	for {
		out, err := d.vmShell(wctx, n, check)
		if err == nil && strings.Contains(string(out), "ready") {
			return nil
		}
		if err == nil && !strings.Contains(string(out), "alive") || wctx.Err() != nil {
			logTail, _ := d.vmShell(context.WithoutCancel(ctx), n, fmt.Sprintf("tail -c +%d %s | tail -n 15", off+1, vmTwilldLog))
			why := "ended before it was ready"
			if err == nil && strings.Contains(string(out), "alive") || wctx.Err() != nil {
				why = "not ready after 90s"
			}
			return fmt.Errorf("node %s: %s (pid %d in the VM) %s; its log ends:\n%s", n.Name, name, pid, why, logTail)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// copyKubeFiles writes a kube lab's kubeconfig and network config into
// node n's VM and returns st with their paths there.
func (d *qemuDriver) copyKubeFiles(ctx context.Context, n nodeState, st *state) (*state, error) {
	inVM := *st
	for _, f := range []struct{ host, vm string }{{st.Kubeconfig, vmKubeconfig}, {st.NetConfigPath, vmNetConfigFile}} {
		data, err := os.ReadFile(f.host)
		if err != nil {
			return nil, fmt.Errorf("store kube: %w", err)
		}
		script := fmt.Sprintf("mkdir -p %s && umask 077 && cat > %s", shellQuote(path.Dir(f.vm)), shellQuote(f.vm))
		if out, err := d.vmExec(ctx, n, nil, data, "/bin/sh", "-c", script); err != nil {
			return nil, fmt.Errorf("store kube: copy %s to %s: %w: %s", f.host, f.vm, err, out)
		}
	}
	inVM.Kubeconfig, inVM.NetConfigPath = vmKubeconfig, vmNetConfigFile
	return &inVM, nil
}

// vmAlive reports whether pid runs in node n's VM.
func (d *qemuDriver) vmAlive(ctx context.Context, n nodeState, pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := d.vmExec(ctx, n, nil, nil, "/bin/kill", "-0", strconv.Itoa(pid))
	return err == nil
}

// stopDaemon signals twilld in a VM and waits until it has ended.
func (d *qemuDriver) stopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	st := d.l.snapshot()
	i, err := findNode(st, d.l.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	pid := n.VM.DaemonPID
	if pid <= 0 {
		return nil
	}
	script := fmt.Sprintf(`kill -%d %d 2>/dev/null || exit 0; i=0; while kill -0 %d 2>/dev/null; do i=$((i+1)); [ $i -gt 150 ] && { kill -9 %d; echo timeout; exit 1; }; sleep 0.1; done`, int(sig), pid, pid, pid)
	name := "twilld"
	if st.Spec.Flannel(n.Name) {
		name = "flanneld"
	}
	if out, err := d.vmShell(ctx, n, script); err != nil {
		return fmt.Errorf("node %s: %s did not end after %v: %w: %s", n.Name, name, sig, err, out)
	}
	d.l.log.Info(name+" stopped", "node", n.Name, "signal", sig)
	return nil
}

// view fills in what only the VM knows: the subnet file (copied to the
// host, where Node.SubnetFile points) and whether twilld runs.
func (d *qemuDriver) view(n nodeState, node *Node) {
	node.PID = n.VM.DaemonPID
	node.Running = false
	node.LogPath = n.VM.Console
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid := n.VM.DaemonPID
	if pid <= 0 {
		pid = 1 << 30 // no such process
	}
	out, err := d.vmShell(ctx, n, fmt.Sprintf(`kill -0 %d 2>/dev/null && echo RUNNING; cat %s 2>/dev/null; true`, pid, vmSubnetFile))
	if err != nil {
		return
	}
	body, running := strings.CutPrefix(string(out), "RUNNING\n")
	node.Running = running && n.VM.DaemonPID > 0
	if strings.TrimSpace(body) == "" {
		_ = os.Remove(n.SubnetFile)
		node.Subnet = netip.Prefix{}
		return
	}
	if err := os.WriteFile(n.SubnetFile, []byte(body), 0o644); err == nil {
		readSubnet(n.SubnetFile, node)
	}
}

// vmCNIConf is the CNI plugin's config inside a VM.
func vmCNIConf() []byte {
	b, _ := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "twill", "type": "twill", "subnetFile": vmSubnetFile,
		"bridge": "cni0", "dataDir": vmCNIData, "isGateway": true, "hairpinMode": true,
	})
	return b
}

// vmCNI runs the CNI plugin in node n's VM, as a runtime would: twill's,
// or on a flannel node the bridge plugin with the config flannel's CNI
// plugin would hand it, from flanneld's subnet file in the VM.
func (d *qemuDriver) vmCNI(ctx context.Context, n nodeState, command string, p Pod) ([]byte, error) {
	env := []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + p.Name, "CNI_NETNS=" + p.NetNSPath,
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	plugin, conf := "/opt/cni/bin/twill", vmCNIConf()
	if d.l.st.Spec.Flannel(n.Name) {
		b, err := d.vmExec(ctx, n, nil, nil, "/bin/cat", vmSubnetFile)
		if err != nil {
			return nil, fmt.Errorf("flannel's subnet file on %s: %w: %s", n.Name, err, b)
		}
		f, err := subnetfile.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("flannel's subnet file on %s: %w", n.Name, err)
		}
		if conf, err = flannelNetConf(f, vmFlannelCNIData); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		plugin, env[len(env)-1] = vmFlannelDir+"/bridge", "CNI_PATH="+vmFlannelDir
	}
	out, err := d.vmExec(ctx, n, env, conf, plugin)
	if err != nil {
		return nil, fmt.Errorf("CNI %s of pod %s on %s: %w: %s", command, p.Name, n.Name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// attachPod makes pod p's namespace in node n's VM and attaches it.
func (d *qemuDriver) attachPod(ctx context.Context, n nodeState, p Pod) (podAddrs, error) {
	if out, err := d.vmExec(ctx, n, nil, nil, "/sbin/ip", "netns", "add", p.NetNS); err != nil {
		return podAddrs{}, fmt.Errorf("%w: %s", err, out)
	}
	out, err := d.vmCNI(ctx, n, "ADD", p)
	if err != nil {
		_, derr := d.vmExec(context.WithoutCancel(ctx), n, nil, nil, "/sbin/ip", "netns", "del", p.NetNS)
		return podAddrs{}, errors.Join(err, derr)
	}
	res, err := types100.NewResult(out)
	if err != nil {
		return podAddrs{}, fmt.Errorf("CNI result: %w", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return podAddrs{}, fmt.Errorf("CNI result: %w", err)
	}
	return addrsOf(r)
}

// detachPod detaches pod p (CNI DEL) and deletes its namespace.
func (d *qemuDriver) detachPod(ctx context.Context, n nodeState, p Pod) error {
	_, err := d.vmCNI(ctx, n, "DEL", p)
	out, derr := d.vmExec(ctx, n, nil, nil, "/sbin/ip", "netns", "del", p.NetNS)
	if derr != nil {
		derr = fmt.Errorf("%w: %s", derr, out)
	}
	return errors.Join(err, derr)
}

// exec runs argv where target names: a namespace of the lab's on this host
// (the hub, the outside), a node (its VM's own namespace), or a pod (its
// namespace in its node's VM). A twill binary named by any path runs from
// the VM's own copy.
func (d *qemuDriver) exec(ctx context.Context, target string, argv []string) ([]byte, error) {
	st := d.l.snapshot()
	if st.isHubNetNS(target) {
		return hostExec(ctx, target, argv...)
	}
	n, podNS, err := vmTarget(st, d.l.name, target)
	if err != nil {
		return nil, err
	}
	argv = append([]string(nil), argv...)
	switch filepath.Base(argv[0]) {
	case "twilld", "twillctl", "twill-cni":
		argv[0] = "/bin/" + filepath.Base(argv[0])
	}
	if podNS != "" {
		argv = append([]string{"/sbin/ip", "netns", "exec", podNS}, argv...)
	}
	out, err := d.vmExec(ctx, n, nil, nil, argv...)
	if err != nil {
		return out, fmt.Errorf("in %s: %w", target, err)
	}
	return out, nil
}

// vmTarget resolves a node's or a pod's name to its node and, for a pod,
// its namespace in the node's VM.
func vmTarget(st *state, lab, name string) (n nodeState, podNS string, err error) {
	if i, err := findNode(st, lab, name); err == nil {
		return st.Nodes[i], "", nil
	}
	for _, p := range st.Pods {
		if p.Name == name || p.NetNS == name {
			i, err := findNode(st, lab, p.Node)
			if err != nil {
				return n, "", err
			}
			return st.Nodes[i], p.NetNS, nil
		}
	}
	return n, "", fmt.Errorf("lab %s has no node, pod or namespace %q", lab, name)
}

// rebootNode reboots a node's VM (a hard reset after a sync), waits until
// it is back, starts twilld and attaches its pods again (the pods'
// namespaces lived in the old boot).
func (d *qemuDriver) rebootNode(ctx context.Context, node string) error {
	st := d.l.snapshot()
	i, err := findNode(st, d.l.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	old := n.VM.BootID
	if _, err := d.vmShell(ctx, n, "sync; (sleep 0.2; reboot -f) >/dev/null 2>&1 &"); err != nil {
		return fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	id, err := d.waitBoot(ctx, n, old)
	if err != nil {
		return err
	}
	if err := d.l.update(func(st *state) error {
		st.Nodes[i].VM.BootID, st.Nodes[i].VM.DaemonPID = id, 0
		return nil
	}); err != nil {
		return err
	}
	if err := d.l.routeNode(ctx, n); err != nil {
		return err
	}
	if err := d.startDaemon(ctx, n.Name); err != nil {
		return err
	}
	return d.l.update(func(st *state) error {
		for k, p := range st.Pods {
			if p.Node != n.Name {
				continue
			}
			addrs, err := d.attachPod(ctx, st.Nodes[i], p)
			if err != nil {
				return fmt.Errorf("attach pod %s again after the reboot: %w", p.Name, err)
			}
			addrs.set(&st.Pods[k])
		}
		return nil
	})
}

// setUnderlayLoss puts netem on the VM's eth0, or removes it.
func (d *qemuDriver) setUnderlayLoss(ctx context.Context, node string, lossPercent float64, delay time.Duration) error {
	st := d.l.snapshot()
	i, err := findNode(st, d.l.name, node)
	if err != nil {
		return err
	}
	argv := []string{"/sbin/tc", "qdisc", "del", "dev", "eth0", "root"}
	if lossPercent > 0 || delay > 0 {
		argv = []string{"/sbin/tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
			"loss", strconv.FormatFloat(lossPercent, 'f', -1, 64) + "%", "delay", strconv.FormatInt(delay.Microseconds(), 10) + "us"}
	}
	out, err := d.vmExec(ctx, st.Nodes[i], nil, nil, argv...)
	// Deleting fails when there is no netem to delete.
	if err != nil && argv[2] != "del" {
		return fmt.Errorf("netem on %s: %w: %s", node, err, out)
	}
	return nil
}

// down returns the VMs' QEMUs.
func (d *qemuDriver) down(context.Context) []proc { return qemuProcs(d.l.st) }

func qemuProcs(st *state) []proc {
	var procs []proc
	for _, n := range st.Nodes {
		if n.VM != nil {
			procs = append(procs, n.VM.QEMU)
		}
	}
	return procs
}

// close closes the connections to the VMs' agents.
func (d *qemuDriver) close() error {
	d.amu.Lock()
	defer d.amu.Unlock()
	var errs []error
	for name, cl := range d.agents {
		errs = append(errs, cl.Close())
		delete(d.agents, name)
	}
	return errors.Join(errs...)
}

// ip6Arg is the kernel command line's twill.ip6 for a node of a lab with
// IPv6 (the VM's rc.boot adds the address); "" without.
func ip6Arg(n nodeState) string {
	if !n.IP6.IsValid() {
		return ""
	}
	return fmt.Sprintf(" twill.ip6=%s/64", n.IP6)
}
