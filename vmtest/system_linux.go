package vmtest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The system image driver (the qemu driver with Spec.SystemImage): each VM
// boots the Debian kernel, initramfs and disk of an image made by
// scripts/rollout-image.sh, with systemd and sshd, on a copy-on-write
// layer of its own. The image's guest takes its address and name from the
// kernel command line (lab.ip=, lab.hostname=). The host reaches the VMs
// over SSH from the hub namespace, as root with the image's key; there is
// no agent. Such a lab is bare: once Ansible has installed twill on it, it
// is driven as a Remote cluster (Lab.Remote).
type systemDriver struct {
	l *Lab
}

// systemVMMemory is a system VM's memory: systemd, etcd and twilld.
const systemVMMemory = "640"

// errSystemImage is what a system image lab answers for twill's daemons
// and pods: they are Ansible's.
var errSystemImage = fmt.Errorf("%w by a system image lab: Ansible installs twill on it, then drive it as Lab.Remote", errors.ErrUnsupported)

// sshKeyPath is where a system image lab keeps its copy of the image's SSH
// key (ssh wants it private to its owner).
func sshKeyPath(st *state) string { return filepath.Join(st.Dir, "id_ed25519") }

// prepare takes the kernel and initramfs of the system image and copies
// its SSH key into the lab.
func (d *systemDriver) prepare(ctx context.Context) error {
	st := d.l.st
	dir := st.Spec.SystemImage
	img := Image{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img")}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel-version")); err == nil {
		img.KernelVersion = strings.TrimSpace(string(b))
	}
	if err := copyFile(filepath.Join(dir, "id_ed25519"), sshKeyPath(st), 0o600); err != nil {
		return fmt.Errorf("the system image's SSH key: %w", err)
	}
	return prepareVMs(ctx, d.l, img)
}

// makeNode makes node i's disk layer and starts its VM: the tap on the
// hub's bridge, the console to a file. Node n<i> is host node<i>, as in
// the Ansible inventory inventories/qemu-lab.
func (d *systemDriver) makeNode(ctx context.Context, i int, bits int) error {
	st := d.l.st
	n := st.Nodes[i]
	vm := newVM(st, i)
	vm.Disk = filepath.Join(n.Dir, "disk.qcow2")
	disk := [][]string{{"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
		"-b", filepath.Join(st.Spec.SystemImage, "disk.qcow2"), vm.Disk}}
	host := "node" + strings.TrimPrefix(n.Name, "n")
	args := []string{
		"-name", st.Spec.Name + "-" + n.Name, "-m", systemVMMemory, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + vm.Console,
		"-kernel", st.Image.Kernel, "-initrd", st.Image.Initrd,
		"-append", fmt.Sprintf("console=ttyS0 root=/dev/vda rw quiet panic=-1 net.ifnames=0 lab.ip=%s/%d lab.hostname=%s", n.IP, bits, host),
		"-drive", "file=" + vm.Disk + ",format=qcow2,if=virtio",
		"-netdev", "tap,id=u0,ifname=" + n.HubLink + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=u0,mac=" + vm.MAC + ",romfile=",
	}
	return startVM(ctx, d.l, i, vm, disk, args)
}

// boot waits until every VM answers over SSH, and fails early if a QEMU
// ends.
func (d *systemDriver) boot(ctx context.Context) error {
	st := d.l.st
	if err := writeState(st); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(st.Nodes))
	for i, n := range st.Nodes {
		wg.Go(func() { errs[i] = d.waitSSH(ctx, n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *systemDriver) bare() bool { return true }

// systemBootTimeout is how long a system VM may take until sshd answers.
const systemBootTimeout = 180 * time.Second

func (d *systemDriver) waitSSH(ctx context.Context, n nodeState) error {
	ctx, cancel := context.WithTimeout(ctx, systemBootTimeout)
	defer cancel()
	t0 := time.Now()
	args := append(sshArgs(d.l.st, false), n.IP.String(), "true")
	for {
		if !n.VM.QEMU.alive() {
			return qemuEnded(n)
		}
		// One attempt may hang in the handshake while the guest is still
		// starting sshd; it gets a bound of its own.
		actx, acancel := context.WithTimeout(ctx, 15*time.Second)
		err := run(actx, args...)
		acancel()
		if err == nil {
			d.l.log.Info("VM answers over SSH", "node", n.Name, "took", time.Since(t0).Round(100*time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			con, _ := os.ReadFile(n.VM.Console)
			return fmt.Errorf("VM %s: no SSH after %v (%v); its console %s ends:\n%s", n.Name, systemBootTimeout, err, n.VM.Console, tail(con, 15))
		}
		time.Sleep(time.Second)
	}
}

func (d *systemDriver) startDaemon(context.Context, string) error { return errSystemImage }

func (d *systemDriver) stopDaemon(context.Context, string, syscall.Signal) error {
	return errSystemImage
}

func (d *systemDriver) attachPod(context.Context, nodeState, Pod) (podAddrs, error) {
	return podAddrs{}, errSystemImage
}

func (d *systemDriver) detachPod(context.Context, nodeState, Pod) error { return errSystemImage }

// exec runs argv in the hub or the outside, or over SSH on a node.
func (d *systemDriver) exec(ctx context.Context, target string, argv []string) ([]byte, error) {
	st := d.l.snapshot()
	if st.isHubNetNS(target) {
		return hostExec(ctx, target, argv...)
	}
	i, err := findNode(st, d.l.name, target)
	if err != nil {
		return nil, err
	}
	out, err := runToFile(ctx, nil, append(sshArgs(st, true), st.Nodes[i].IP.String(), shellQuoteAll(argv))...)
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w", target, strings.Join(argv, " "), err)
	}
	return out, nil
}

// view leaves the node as it is: only Remote knows the node, over SSH.
func (d *systemDriver) view(nodeState, *Node) {}

// down closes the shared SSH connections, which run in the hub, and
// returns the VMs' QEMUs.
func (d *systemDriver) down(ctx context.Context) []proc {
	closeSSHMasters(ctx, d.l.st.Dir)
	return qemuProcs(d.l.st)
}

func (d *systemDriver) close() error { return nil }

// sshArgs is the ssh command line, up to the destination, that reaches the
// lab's VMs from the hub namespace. Host keys are new with every VM, so
// they are neither checked nor kept. With shared, one connection per VM
// is kept open for a minute (ssh's ControlPersist; Remote.Close ends it),
// so that a run of commands does not pay for a handshake each under
// emulation.
func sshArgs(st *state, shared bool) []string {
	argv := []string{"ip", "netns", "exec", st.HubNetNS, "ssh", "-q", "-i", sshKeyPath(st),
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=10", "-l", "root"}
	if shared {
		argv = append(argv, "-o", "ControlMaster=auto", "-o", "ControlPath="+filepath.Join(st.Dir, "ssh-%C"), "-o", "ControlPersist=60s")
	}
	return argv
}

// Remote returns the nodes of a system image lab as a Remote cluster, for
// once Ansible has installed twill on them: reached over SSH from the hub
// namespace, with the hub (its address on the bridge) as the host outside
// the cluster.
func (l *Lab) Remote(log *slog.Logger) (*Remote, error) {
	if _, ok := l.drv.(*systemDriver); !ok {
		return nil, fmt.Errorf("lab %s: only a system image lab is a Remote cluster", l.name)
	}
	st := l.snapshot()
	spec := RemoteSpec{
		Name:           l.name,
		SSH:            sshArgs(st, true),
		SSHOnUnderlay:  true,
		Outside:        &RemoteOutside{NetNS: st.HubNetNS, Addr: st.HubAddr},
		Dir:            filepath.Join(st.Dir, "remote"),
		ControlTimeout: 30 * time.Second,
	}
	for _, n := range st.Nodes {
		spec.Nodes = append(spec.Nodes, RemoteNode{Name: n.Name, Host: n.IP.String(), UnderlayIP: n.IP})
	}
	return NewRemote(spec, log)
}

var sshMasterPID = regexp.MustCompile(`pid=([0-9]+)`)

// ansibleControlDir is where the rollout test points Ansible's shared SSH
// connections (ANSIBLE_SSH_CONTROL_PATH_DIR), in a system image lab's
// directory.
const ansibleControlDir = "ansible-cp"

// closeSSHMasters ends the shared SSH connections of a system image lab:
// those whose control sockets are the lab's own (sshArgs: ssh-*) or
// Ansible's (ansible-cp/*): ssh -O exit, then a wait until the master is
// gone, so that Down does not find it in the lab's hub namespace.
func closeSSHMasters(ctx context.Context, dir string) {
	own, _ := filepath.Glob(filepath.Join(dir, "ssh-*"))
	ansible, _ := filepath.Glob(filepath.Join(dir, ansibleControlDir, "*"))
	var wg sync.WaitGroup
	for _, sock := range append(own, ansible...) {
		if fi, err := os.Lstat(sock); err != nil || fi.Mode()&fs.ModeSocket == 0 {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ssh", "-o", "ControlPath="+sock, "-O", "check", "lab").CombinedOutput()
			m := sshMasterPID.FindSubmatch(out)
			if err != nil || m == nil {
				return // no master behind it
			}
			pid, _ := strconv.Atoi(string(m[1]))
			_ = exec.CommandContext(ctx, "ssh", "-o", "ControlPath="+sock, "-O", "exit", "lab").Run()
			for range 50 {
				if _, state, err := procStat(pid); err != nil || state == 'Z' {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
}
