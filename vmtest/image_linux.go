package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/twillnet/twill/internal/filelock"
)

// KernelVersion is the Debian kernel the qemu driver boots; the one place
// where it is pinned. The package is linux-image-<KernelVersion>-unsigned,
// fetched with apt-get download.
const KernelVersion = "6.1.0-56-cloud-amd64"

// vmModules are the kernel modules the VMs load at boot (with their
// dependencies, in the order modprobe --show-depends gives).
var vmModules = []string{
	"virtio_pci", "virtio_net", "virtio_console", "virtio_blk", "crc32c_generic",
	"tun", "vxlan", "veth", "bridge", "ipip", "ipvlan", "macvlan",
	"nf_tables", "nft_masq", "nft_chain_nat", "nft_ct", "sch_netem",
	// The udp kernel path on 6.1 (no tcx): the clsact qdisc and the bpf
	// classifier, both modules in Debian's kernel.
	"sch_ingress", "cls_bpf",
	// netlink.NewHandleAt opens an XFRM socket too: without xfrm_user twilld
	// fails with "protocol not supported".
	"xfrm_user",
	// Kernel WireGuard (modprobe adds udp_tunnel, ip6_udp_tunnel and the
	// curve25519, chacha and poly1305 libraries it needs on 6.1).
	"wireguard",
}

// vmTools are the host programs put into the initramfs, with the libraries
// ldd names: where the guest finds them, and the Debian package that has
// them (for the message when one is missing).
var vmTools = []struct{ guest, pkg string }{
	{"/sbin/ip", "iproute2"},
	{"/sbin/bridge", "iproute2"},
	{"/sbin/tc", "iproute2"},
	{"/usr/sbin/nft", "nftables"},
	{"/bin/ping", "iputils-ping"},
}

// hostTools are the programs the qemu driver runs on the host.
var hostTools = []struct{ name, pkg string }{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"busybox", "busybox-static"},
	{"cpio", "cpio"},
	{"depmod", "kmod"},
	{"modprobe", "kmod"},
	{"mkfs.ext4", "e2fsprogs"},
	{"apt-get", "apt"},
	{"dpkg", "dpkg"},
	{"ldd", "libc-bin"},
}

// VMPackages are the Debian packages the qemu driver needs on the host.
const VMPackages = "qemu-system-x86 busybox-static cpio kmod e2fsprogs iproute2 nftables iputils-ping"

// Image is what a VM boots: a kernel and an initramfs.
type Image struct {
	Kernel        string `json:"kernel"`
	Initrd        string `json:"initrd"`
	KernelVersion string `json:"kernel_version"`
}

// CheckVMTools reports, in one error that says what to install, the host
// programs the qemu driver lacks.
func CheckVMTools() error {
	var missing, pkgs []string
	for _, t := range hostTools {
		if _, err := exec.LookPath(t.name); err != nil {
			missing = append(missing, t.name)
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
		}
	}
	for _, t := range vmTools {
		if _, err := os.Stat(t.guest); err != nil {
			missing = append(missing, t.guest)
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("the qemu driver needs %s; install them with: apt-get install %s",
		strings.Join(missing, ", "), strings.Join(pkgs, " "))
}

// BuildImage returns the kernel and initramfs for the VMs, under dir. The
// kernel is fetched once; the initramfs is rebuilt only when one of its
// inputs (the twill binaries in bin, the host tools, the modules, the boot
// scripts) changes: its name carries the hash of them all.
func BuildImage(ctx context.Context, dir, bin string, log *slog.Logger) (Image, error) {
	if err := CheckVMTools(); err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, fmt.Errorf("image directory: %w", err)
	}
	unlock, err := filelock.Lock(filepath.Join(dir, ".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	kdir, err := fetchKernel(ctx, dir, log)
	if err != nil {
		return Image{}, err
	}
	img := Image{Kernel: filepath.Join(kdir, "boot", "vmlinuz-"+KernelVersion), KernelVersion: KernelVersion}
	img.Initrd, err = buildInitrd(ctx, dir, kdir, bin, log)
	return img, err
}

// fetchKernel downloads and unpacks the kernel package unless it is there.
func fetchKernel(ctx context.Context, dir string, log *slog.Logger) (string, error) {
	kdir := filepath.Join(dir, "kernel-"+KernelVersion)
	if _, err := os.Stat(filepath.Join(kdir, ".done")); err == nil {
		return kdir, nil
	}
	pkg := "linux-image-" + KernelVersion + "-unsigned"
	log.Info("fetching the VM kernel", "package", pkg)
	tmp, err := os.MkdirTemp(dir, "kernel-tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// apt-get download writes into the working directory.
	dl := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s (the VMs' kernel; apt-get update may help): %w: %s", pkg, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	x := filepath.Join(tmp, "x")
	if err := run(ctx, "dpkg", "-x", debs[0], x); err != nil {
		return "", fmt.Errorf("unpack the kernel: %w", err)
	}
	// The package has no modules.dep.
	if err := run(ctx, "depmod", "-b", x, KernelVersion); err != nil {
		return "", fmt.Errorf("index the kernel's modules: %w", err)
	}
	if err := os.WriteFile(filepath.Join(x, ".done"), []byte(pkg+"\n"), 0o644); err != nil {
		return "", err
	}
	_ = os.RemoveAll(kdir)
	if err := os.Rename(x, kdir); err != nil {
		return "", fmt.Errorf("keep the kernel: %w", err)
	}
	return kdir, nil
}

// initrdFile is one file of the initramfs: copied from src, or with the
// given content, or a symlink to link.
type initrdFile struct {
	src     string
	content []byte
	link    string
	mode    os.FileMode
}

// moduleOrder lists the modules' files (relative to the kernel directory)
// in the order they load.
func moduleOrder(ctx context.Context, kdir string) ([]string, error) {
	var order []string
	for _, m := range vmModules {
		out, err := exec.CommandContext(ctx, "modprobe", "-d", kdir, "-S", KernelVersion, "--show-depends", m).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("modprobe --show-depends %s: %w: %s", m, err, bytes.TrimSpace(out))
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 2 || f[0] != "insmod" {
				continue // builtin
			}
			rel, err := filepath.Rel(kdir, f[1])
			if err != nil {
				return nil, err
			}
			if !slices.Contains(order, rel) {
				order = append(order, rel)
			}
		}
	}
	return order, nil
}

// libraries lists the shared libraries ldd names for a program.
func libraries(ctx context.Context, prog string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", prog).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", prog, err, bytes.TrimSpace(out))
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// initrdFiles lists every file of the initramfs by its guest path.
func initrdFiles(ctx context.Context, kdir, bin string) (map[string]initrdFile, error) {
	files := map[string]initrdFile{}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, err
	}
	files["/bin/busybox"] = initrdFile{src: busybox, mode: 0o755}
	progs := []string{busybox}
	for _, t := range vmTools {
		files[t.guest] = initrdFile{src: t.guest, mode: 0o755}
		progs = append(progs, t.guest)
	}
	if p, err := exec.LookPath("iperf3"); err == nil {
		files["/usr/bin/iperf3"] = initrdFile{src: p, mode: 0o755}
		progs = append(progs, p)
	}
	for _, p := range progs {
		libs, err := libraries(ctx, p)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			files[l] = initrdFile{src: l, mode: 0o755}
		}
	}
	// busybox gives everything else; the programs above keep their own
	// names (busybox's ip and ping lack what the checks use).
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, name := range strings.Fields(string(out)) {
		g := "/" + name
		base := filepath.Base(g)
		if _, ok := files[g]; ok || base == "ip" || base == "ping" || base == "tc" || base == "init" || base == "linuxrc" {
			continue
		}
		files[g] = initrdFile{link: "/bin/busybox"}
	}
	for _, b := range []string{"twilld", "twillctl", "twill-cni"} {
		files["/bin/"+b] = initrdFile{src: filepath.Join(bin, b), mode: 0o755}
	}
	files["/opt/cni/bin/twill"] = initrdFile{link: "/bin/twill-cni"}
	order, err := moduleOrder(ctx, kdir)
	if err != nil {
		return nil, err
	}
	for _, rel := range order {
		files["/"+rel] = initrdFile{src: filepath.Join(kdir, rel), mode: 0o644}
	}
	list := strings.Join(order, "\n") + "\n"
	files["/etc/modules.order"] = initrdFile{content: []byte(list), mode: 0o644}
	files["/init"] = initrdFile{link: "/bin/busybox"}
	files["/etc/inittab"] = initrdFile{content: []byte(inittab), mode: 0o644}
	files["/etc/rc.boot"] = initrdFile{content: []byte(rcBoot), mode: 0o755}
	files["/etc/passwd"] = initrdFile{content: []byte("root:x:0:0:root:/root:/bin/sh\n"), mode: 0o644}
	files["/etc/group"] = initrdFile{content: []byte("root:x:0:\n"), mode: 0o644}
	files["/var/run"] = initrdFile{link: "/run"}
	return files, nil
}

// inittab makes busybox init (PID 1: it reaps orphans such as twilld after
// the agent's shell ends) run the boot script, then keep the agent running.
const inittab = `::sysinit:/etc/rc.boot
::respawn:/bin/twillctl vm agent
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
`

// rcBoot brings a VM up: filesystems, modules, its underlay address from
// the kernel command line (twill.name, twill.ip, and twill.ip6 in a lab
// with IPv6, which turns IPv6 forwarding on too), the state disk, and
// twilld's log mirrored to the console. busybox sh prefers its own ip
// applet, so iproute2 is called by its path.
const rcBoot = `#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var/log /var/lib/twill /var/lib/cni /dev/pts
while read m; do insmod /$m || echo "twill-vm: insmod $m failed"; done < /etc/modules.order
arg() { for w in $(cat /proc/cmdline); do case $w in $1=*) echo "${w#*=}";; esac; done; }
hostname "$(arg twill.name)"
/sbin/ip link set lo up
/sbin/ip addr add "$(arg twill.ip)" dev eth0
/sbin/ip link set eth0 up
echo 1 > /proc/sys/net/ipv4/ip_forward
ip6="$(arg twill.ip6)"
if [ -n "$ip6" ]; then
	/sbin/ip addr add "$ip6" dev eth0 nodad
	echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
fi
if [ -b /dev/vda ]; then mount -t ext4 /dev/vda /var/lib/twill || echo "twill-vm: the state disk did not mount"; fi
touch /var/log/twilld.log
tail -F /var/log/twilld.log > /dev/console 2>&1 &
echo "twill-vm: booted $(hostname) at $(cut -d' ' -f1 /proc/uptime)s"
`

// buildInitrd builds the initramfs unless one with the same inputs exists.
func buildInitrd(ctx context.Context, dir, kdir, bin string, log *slog.Logger) (string, error) {
	files, err := initrdFiles(ctx, kdir, bin)
	if err != nil {
		return "", err
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	h := sha256.New()
	fmt.Fprintf(h, "kernel %s\n", KernelVersion)
	for _, p := range paths {
		f := files[p]
		fmt.Fprintf(h, "%s %o %q ", p, f.mode, f.link)
		switch {
		case f.src != "":
			if err := hashFile(h, f.src); err != nil {
				return "", err
			}
		default:
			h.Write(f.content)
		}
		h.Write([]byte{'\n'})
	}
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	// Not compressed: under TCG, unpacking a gzip'd initramfs takes the
	// guest 4-5 s longer than copying a plain one.
	out := filepath.Join(dir, "initrd-"+sum+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	log.Info("building the VM initramfs", "hash", sum)
	stage, err := os.MkdirTemp(dir, "initrd-tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "root", "var/lib", "var/log"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return "", err
		}
	}
	for _, p := range paths {
		f := files[p]
		dst := filepath.Join(stage, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		switch {
		case f.link != "":
			err = os.Symlink(f.link, dst)
		case f.src != "":
			err = copyFile(f.src, dst, f.mode)
		default:
			err = os.WriteFile(dst, f.content, f.mode)
		}
		if err != nil {
			return "", fmt.Errorf("initramfs %s: %w", p, err)
		}
		// The twill binaries are a third smaller without symbols, and
		// strip is there on most machines that build Go.
		if strings.HasPrefix(p, "/bin/twill") && f.src != "" {
			if strip, err := exec.LookPath("strip"); err == nil {
				_ = exec.CommandContext(ctx, strip, dst).Run()
			}
		}
	}
	tmp := out + ".tmp"
	pack := exec.CommandContext(ctx, "sh", "-c", `find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > "$0"`, tmp)
	pack.Dir = stage
	if b, err := pack.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pack the initramfs: %w: %s", err, bytes.TrimSpace(b))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	// Older images are of no use any more.
	old, _ := filepath.Glob(filepath.Join(dir, "initrd-*.cpio*"))
	for _, o := range old {
		if o != out {
			_ = os.Remove(o)
		}
	}
	return out, nil
}

func hashFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("initramfs input: %w", err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return errors.Join(out.Close())
}
