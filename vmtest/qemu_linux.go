package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/twillnet/twill/vmtest/agent"
)

// The qemu driver makes each node a VM: the Debian kernel and the project's
// initramfs (image_linux.go) under qemu-system-x86_64, its eth0 a tap
// device on the lab's underlay bridge in the hub namespace, where etcd
// listens as for the netns driver. The host reaches each VM through the
// agent on a virtio-serial port (vmtest/agent), never over the VM's
// network; the VM's console goes to a log file kept after the lab is gone.
// A small ext4 disk per VM keeps twilld's subnet file across reboots.

// Where things are inside a VM.
const (
	vmSubnetFile = "/var/lib/twill/subnet.env"
	vmTwilldLog  = "/var/log/twilld.log"
	vmCNIData    = "/var/lib/cni/twill"
	vmMemory     = "512"
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

// qemu reports whether the lab is the qemu driver's. (Not to be called
// with c.mu held, as inside update.)
func (c *Cluster) qemu() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Spec.Driver == "qemu"
}

// prepareVMs builds (or finds) the image and picks the accelerator.
func (c *Cluster) prepareVMs(ctx context.Context) error {
	st := c.st
	if st.Spec.SystemImage != "" {
		if err := c.prepareSystemImage(); err != nil {
			return err
		}
	} else {
		img, err := BuildImage(ctx, st.Spec.ImageDir, st.Bin, c.log)
		if err != nil {
			return fmt.Errorf("the VM image: %w", err)
		}
		st.Image = img
	}
	st.Accel = st.Spec.Accel
	if st.Accel == "auto" {
		st.Accel = probeAccel(ctx, st.Spec.ImageDir, st.Image)
		c.log.Info("accelerator", "accel", st.Accel)
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

// makeVM makes node n's tap, disk and VM and starts it; bootVMs waits.
func (c *Cluster) makeVM(ctx context.Context, i int, bits string) error {
	st := c.st
	n := &st.Nodes[i]
	vm := &vmNode{
		Socket:  filepath.Join(n.Dir, "agent.sock"),
		Console: filepath.Join(st.Spec.ConsoleDir, n.Name+".console.log"),
		Disk:    filepath.Join(n.Dir, "state.img"),
		MAC:     fmt.Sprintf("52:54:00:56:%02x:%02x", st.Slot, i+1),
	}
	n.VM = vm
	n.LogPath = vm.Console
	if err := writeState(st); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "-n", st.HubNetNS, "tuntap", "add", "dev", n.HubLink, "mode", "tap"},
		{"ip", "-n", st.HubNetNS, "link", "set", n.HubLink, "master", st.Bridge, "up"},
		{"truncate", "-s", "16M", vm.Disk},
		{"mkfs.ext4", "-q", "-F", "-L", "twill", vm.Disk},
	}
	system := st.Spec.SystemImage != ""
	if system {
		vm.Disk = filepath.Join(n.Dir, "disk.qcow2")
		steps = append(steps[:2], []string{"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
			"-b", filepath.Join(st.Spec.SystemImage, "disk.qcow2"), vm.Disk})
	}
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
	args := append(accel,
		"-name", st.Spec.Name+"-"+n.Name, "-m", vmMemory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:"+vm.Console,
		"-kernel", st.Image.Kernel, "-initrd", st.Image.Initrd,
		"-append", fmt.Sprintf("console=ttyS0 quiet twill.name=%s-%s twill.ip=%s/%s", st.Spec.Name, n.Name, n.IP, bits),
		"-netdev", "tap,id=u0,ifname="+n.HubLink+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=u0,mac="+vm.MAC+",romfile=",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+vm.Socket+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+agent.PortName,
		"-drive", "file="+vm.Disk+",format=raw,if=virtio",
	)
	if system {
		args = append(accel, systemVMArgs(st.Spec.Name, st.Image, n, vm, bits)...)
	}
	p, _, err := startIn(st.HubNetNS, qemu, args, filepath.Join(n.Dir, "qemu.log"))
	if err != nil {
		return err
	}
	vm.QEMU = p
	return writeState(st)
}

// bootVMs waits until every VM's agent answers.
func (c *Cluster) bootVMs(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.st.Nodes))
	boot := make([]string, len(c.st.Nodes))
	for i, n := range c.st.Nodes {
		wg.Go(func() { boot[i], errs[i] = c.waitBoot(ctx, n, "") })
	}
	wg.Wait()
	for i := range c.st.Nodes {
		c.st.Nodes[i].VM.BootID = boot[i]
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return writeState(c.st)
}

// waitBoot waits until node n's agent answers with a boot ID other than
// old, and fails early if QEMU ends.
func (c *Cluster) waitBoot(ctx context.Context, n nodeState, old string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	t0 := time.Now()
	for {
		if !n.VM.QEMU.alive() {
			log, _ := os.ReadFile(filepath.Join(n.Dir, "qemu.log"))
			con, _ := os.ReadFile(n.VM.Console)
			return "", fmt.Errorf("VM %s: QEMU ended: %s\nits console %s ends:\n%s", n.Name, strings.TrimSpace(string(log)), n.VM.Console, tail(con, 15))
		}
		cl, err := c.agent(ctx, n)
		if err == nil {
			hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
			id, herr := cl.Hello(hctx)
			hcancel()
			if herr == nil && id != old {
				c.log.Info("VM booted", "node", n.Name, "took", time.Since(t0).Round(100*time.Millisecond))
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

// agent returns the connection to node n's agent, dialing it if needed.
// QEMU's socket takes one connection at a time: a lab is driven by one
// process at a time.
func (c *Cluster) agent(ctx context.Context, n nodeState) (*agent.Client, error) {
	c.amu.Lock()
	defer c.amu.Unlock()
	if cl, ok := c.agents[n.Name]; ok && cl.Alive() {
		return cl, nil
	}
	cl, err := agent.Dial(ctx, n.VM.Socket)
	if err != nil {
		return nil, fmt.Errorf("VM %s: %w", n.Name, err)
	}
	if c.agents == nil {
		c.agents = map[string]*agent.Client{}
	}
	c.agents[n.Name] = cl
	return cl, nil
}

// vmExec runs argv as root in node n's VM.
func (c *Cluster) vmExec(ctx context.Context, n nodeState, env []string, stdin []byte, argv ...string) ([]byte, error) {
	cl, err := c.agent(ctx, n)
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
func (c *Cluster) vmShell(ctx context.Context, n nodeState, script string) ([]byte, error) {
	return c.vmExec(ctx, n, nil, nil, "/bin/sh", "-c", script)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// vmTwilldArgs are twilld's flags inside a VM.
func (c *Cluster) vmTwilldArgs(n nodeState) []string {
	n.SubnetFile = vmSubnetFile
	return c.twilldArgs(n)
}

// vmStartDaemon starts twilld in node i's VM and waits until it is ready.
func (c *Cluster) vmStartDaemon(ctx context.Context, node string) error {
	st := c.snapshot()
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	if n.VM.DaemonPID > 0 && c.vmAlive(ctx, n, n.VM.DaemonPID) {
		return nil
	}
	var q []string
	for _, a := range c.vmTwilldArgs(n) {
		q = append(q, shellQuote(a))
	}
	// setsid: twilld leaves the agent's process group, so it outlives the
	// shell; busybox init reaps it when it ends.
	script := fmt.Sprintf(`off=$(stat -c %%s %[1]s); setsid /bin/twilld %[2]s >> %[1]s 2>&1 < /dev/null & echo "$! $off"`,
		vmTwilldLog, strings.Join(q, " "))
	out, err := c.vmShell(ctx, n, script)
	if err != nil {
		return fmt.Errorf("start twilld on %s: %w: %s", n.Name, err, out)
	}
	var pid int
	var off int64
	if _, err := fmt.Sscan(string(out), &pid, &off); err != nil {
		return fmt.Errorf("start twilld on %s: %q", n.Name, out)
	}
	if err := c.update(func(st *state) error {
		st.Nodes[i].VM.DaemonPID = pid
		return nil
	}); err != nil {
		return err
	}
	c.log.Info("twilld started", "node", n.Name, "pid", pid)
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	check := fmt.Sprintf(`tail -c +%d %s | grep -q %s && echo ready; kill -0 %d 2>/dev/null && echo alive; true`, off+1, vmTwilldLog, twilldReady, pid)
	for {
		out, err := c.vmShell(wctx, n, check)
		if err == nil && strings.Contains(string(out), "ready") {
			return nil
		}
		if err == nil && !strings.Contains(string(out), "alive") || wctx.Err() != nil {
			logTail, _ := c.vmShell(context.WithoutCancel(ctx), n, fmt.Sprintf("tail -c +%d %s | tail -n 15", off+1, vmTwilldLog))
			why := "ended before it was ready"
			if err == nil && strings.Contains(string(out), "alive") || wctx.Err() != nil {
				why = "not ready after 90s"
			}
			return fmt.Errorf("node %s: twilld (pid %d in the VM) %s; its log ends:\n%s", n.Name, pid, why, logTail)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// vmAlive reports whether pid runs in node n's VM.
func (c *Cluster) vmAlive(ctx context.Context, n nodeState, pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := c.vmExec(ctx, n, nil, nil, "/bin/kill", "-0", strconv.Itoa(pid))
	return err == nil
}

// vmStopDaemon signals twilld in a VM and waits until it has ended.
func (c *Cluster) vmStopDaemon(ctx context.Context, node string, sig syscall.Signal) error {
	st := c.snapshot()
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	pid := n.VM.DaemonPID
	if pid <= 0 {
		return nil
	}
	script := fmt.Sprintf(`kill -%d %d 2>/dev/null || exit 0; i=0; while kill -0 %d 2>/dev/null; do i=$((i+1)); [ $i -gt 150 ] && { kill -9 %d; echo timeout; exit 1; }; sleep 0.1; done`, int(sig), pid, pid, pid)
	if out, err := c.vmShell(ctx, n, script); err != nil {
		return fmt.Errorf("node %s: twilld did not end after %v: %w: %s", n.Name, sig, err, out)
	}
	c.log.Info("twilld stopped", "node", n.Name, "signal", sig)
	return nil
}

// vmNodeView fills in what only the VM knows: the subnet file (copied to
// the host, where Node.SubnetFile points) and whether twilld runs.
func (c *Cluster) vmNodeView(n nodeState, node *Node) {
	node.NetNS = c.name + "-" + n.Name
	node.PID = n.VM.DaemonPID
	node.Running = false
	node.LogPath = n.VM.Console
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid := n.VM.DaemonPID
	if pid <= 0 {
		pid = 1 << 30 // no such process
	}
	out, err := c.vmShell(ctx, n, fmt.Sprintf(`kill -0 %d 2>/dev/null && echo RUNNING; cat %s 2>/dev/null; true`, pid, vmSubnetFile))
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
		c.readSubnet(n.SubnetFile, node)
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

// vmCNI runs the CNI plugin in node n's VM, as a runtime would.
func (c *Cluster) vmCNI(ctx context.Context, n nodeState, command string, p Pod) ([]byte, error) {
	env := []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + p.Name, "CNI_NETNS=" + p.NetNSPath,
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	out, err := c.vmExec(ctx, n, env, vmCNIConf(), "/opt/cni/bin/twill")
	if err != nil {
		return nil, fmt.Errorf("CNI %s of pod %s on %s: %w: %s", command, p.Name, n.Name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// vmAttachPod makes pod p's namespace in node n's VM and attaches it.
func (c *Cluster) vmAttachPod(ctx context.Context, n nodeState, p Pod) (netip.Addr, error) {
	if out, err := c.vmExec(ctx, n, nil, nil, "/sbin/ip", "netns", "add", p.NetNS); err != nil {
		return netip.Addr{}, fmt.Errorf("add pod %s: %w: %s", p.Name, err, out)
	}
	out, err := c.vmCNI(ctx, n, "ADD", p)
	if err != nil {
		_, derr := c.vmExec(context.WithoutCancel(ctx), n, nil, nil, "/sbin/ip", "netns", "del", p.NetNS)
		return netip.Addr{}, errors.Join(err, derr)
	}
	res, err := types100.NewResult(out)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result of pod %s: %w", p.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result of pod %s: %w", p.Name, err)
	}
	for _, ip := range r.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("CNI result of pod %s has no IPv4 address: %v", p.Name, r.IPs)
}

// vmDetachPod detaches pod p (CNI DEL) and deletes its namespace.
func (c *Cluster) vmDetachPod(ctx context.Context, n nodeState, p Pod) error {
	_, err := c.vmCNI(ctx, n, "DEL", p)
	out, derr := c.vmExec(ctx, n, nil, nil, "/sbin/ip", "netns", "del", p.NetNS)
	if derr != nil {
		derr = fmt.Errorf("%w: %s", derr, out)
	}
	return errors.Join(err, derr)
}

// vmTarget resolves a name given to Exec: a namespace of the lab's on this
// host (the hub, the outside), or a node (its VM's own namespace), or a pod
// (its namespace in its node's VM).
func (c *Cluster) vmTarget(name string) (hostNS string, n nodeState, podNS string, err error) {
	st := c.snapshot()
	if name == st.HubNetNS || (st.OutsideNS != "" && name == st.OutsideNS) {
		return name, n, "", nil
	}
	if i, err := findNode(st, c.name, name); err == nil {
		return "", st.Nodes[i], "", nil
	}
	for _, p := range st.Pods {
		if p.Name == name || p.NetNS == name {
			i, err := findNode(st, c.name, p.Node)
			if err != nil {
				return "", n, "", err
			}
			return "", st.Nodes[i], p.NetNS, nil
		}
	}
	return "", n, "", fmt.Errorf("lab %s has no node, pod or namespace %q", c.name, name)
}

// vmRunExec is Exec for the qemu driver. A twill binary named by any path
// runs from the VM's own copy.
func (c *Cluster) vmRunExec(ctx context.Context, name string, argv ...string) ([]byte, error) {
	hostNS, n, podNS, err := c.vmTarget(name)
	if err != nil {
		return nil, err
	}
	if hostNS != "" {
		return hostExec(ctx, hostNS, argv...)
	}
	argv = append([]string(nil), argv...)
	switch filepath.Base(argv[0]) {
	case "twilld", "twillctl", "twill-cni":
		argv[0] = "/bin/" + filepath.Base(argv[0])
	}
	if podNS != "" {
		argv = append([]string{"/sbin/ip", "netns", "exec", podNS}, argv...)
	}
	out, err := c.vmExec(ctx, n, nil, nil, argv...)
	if err != nil {
		return out, fmt.Errorf("in %s: %w", name, err)
	}
	return out, nil
}

// RebootNode reboots a node's VM (a hard reset after a sync, as a power
// cycle would leave it), waits until it is back, starts twilld and
// attaches its pods again (the pods' namespaces lived in the old boot).
// Only the qemu driver can do it.
func (c *Cluster) RebootNode(ctx context.Context, node string) error {
	if !c.qemu() {
		return fmt.Errorf("reboot-node: %w by the %s driver (its nodes share this machine's kernel)", errors.ErrUnsupported, c.st.Spec.Driver)
	}
	st := c.snapshot()
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	n := st.Nodes[i]
	old := n.VM.BootID
	if _, err := c.vmShell(ctx, n, "sync; (sleep 0.2; reboot -f) >/dev/null 2>&1 &"); err != nil {
		return fmt.Errorf("reboot %s: %w", n.Name, err)
	}
	id, err := c.waitBoot(ctx, n, old)
	if err != nil {
		return err
	}
	if err := c.update(func(st *state) error {
		st.Nodes[i].VM.BootID, st.Nodes[i].VM.DaemonPID = id, 0
		return nil
	}); err != nil {
		return err
	}
	if err := c.vmStartDaemon(ctx, n.Name); err != nil {
		return err
	}
	return c.update(func(st *state) error {
		for k, p := range st.Pods {
			if p.Node != n.Name {
				continue
			}
			addr, err := c.vmAttachPod(ctx, st.Nodes[i], p)
			if err != nil {
				return fmt.Errorf("attach pod %s again after the reboot: %w", p.Name, err)
			}
			st.Pods[k].Addr = addr
		}
		return nil
	})
}

// SetUnderlayLoss makes a node's underlay link lose lossPercent of its
// packets and delay each by delay (netem on the VM's eth0); zeros remove
// it. Only the qemu driver can do it: this host's kernel has no netem.
func (c *Cluster) SetUnderlayLoss(ctx context.Context, node string, lossPercent float64, delay time.Duration) error {
	if !c.qemu() {
		return fmt.Errorf("underlay-loss: %w by the %s driver (netem is not in this host's kernel)", errors.ErrUnsupported, c.st.Spec.Driver)
	}
	st := c.snapshot()
	i, err := findNode(st, c.name, node)
	if err != nil {
		return err
	}
	argv := []string{"/sbin/tc", "qdisc", "del", "dev", "eth0", "root"}
	if lossPercent > 0 || delay > 0 {
		argv = []string{"/sbin/tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
			"loss", strconv.FormatFloat(lossPercent, 'f', -1, 64) + "%", "delay", strconv.FormatInt(delay.Microseconds(), 10) + "us"}
	}
	out, err := c.vmExec(ctx, st.Nodes[i], nil, nil, argv...)
	// Deleting fails when there is no netem to delete.
	if err != nil && argv[2] != "del" {
		return fmt.Errorf("netem on %s: %w: %s", node, err, out)
	}
	return nil
}

// closeAgents closes the connections to the VMs' agents.
func (c *Cluster) closeAgents() error {
	c.amu.Lock()
	defer c.amu.Unlock()
	var errs []error
	for name, cl := range c.agents {
		errs = append(errs, cl.Close())
		delete(c.agents, name)
	}
	return errors.Join(errs...)
}
