package vmtest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// A flannel node (Spec.FlannelNodes) runs flannel's own flanneld in its
// namespace (netns driver) or VM (qemu driver: flannel's wireguard backend
// needs the kernel's WireGuard) instead of twilld: the lab's etcd and prefix, eth0, the node's
// public addresses, its subnet file where twilld's would be. Its pods are
// attached as flannel's CNI plugin attaches them: it hands the pod to the
// reference bridge plugin (bridge cni0, the gateway on it, no masquerade
// when flanneld masquerades, the file's MTU) with host-local IPAM over the
// node's subnet and a route to the network (flannel's cni-plugin,
// flannel_linux.go); the lab writes that delegate config itself, from
// flannel's subnet file, since flannel's CNI plugin is not on the module
// proxy.

// flannelReady is what flanneld logs once its subnet file is written and
// its traffic rules are in place.
const flannelReady = "flannel is ready"

// flannelDir finds flanneld and the CNI plugins: Spec.FlannelBin, else
// build/flannel of the source tree.
func flannelDir(spec Spec) (string, error) {
	if spec.FlannelBin == "" {
		return binaries.FlannelDir()
	}
	dir, err := filepath.Abs(spec.FlannelBin)
	if err != nil {
		return "", err
	}
	for _, n := range binaries.FlannelNames {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return "", fmt.Errorf("flannel binaries: %w (%s builds them)", err, binaries.FlannelTarget)
		}
	}
	return dir, nil
}

// flannelArgs are flanneld's flags on node n. --ip-masq is always given,
// as kube-flannel runs flanneld: without it flannel's CNI plugin has the
// bridge plugin masquerade whatever leaves the node's subnet, other nodes'
// pods included (so a peer sees the node's address, not the pod's).
func flannelArgs(st *state, n nodeState) []string {
	args := []string{
		"--ip-masq",
		"--etcd-endpoints", st.EtcdURL,
		"--etcd-prefix", cmp.Or(st.Spec.EtcdPrefix, etcd.DefaultPrefix),
		"--iface", "eth0",
		"--public-ip", n.IP.String(),
		"--subnet-file", n.SubnetFile,
	}
	if n.IP6.IsValid() {
		args = append(args, "--public-ipv6", n.IP6.String())
	}
	return args
}

// flannelConflist is the CNI config of a flannel node's pods: what
// flannel's CNI plugin hands the bridge plugin for a node with subnet file
// f (kube-flannel's delegate settings: hairpin mode, the default gateway).
func flannelConflist(f subnetfile.File, dataDir string) ([]byte, error) {
	bridge, err := flannelBridge(f, dataDir)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"cniVersion": flannelCNIVersion, "name": flannelCNIName, "plugins": []any{bridge}})
}

// flannelNetConf is flannelConflist's one plugin as the bridge plugin
// reads it when run by hand (the qemu driver runs it in the VM): the
// plugin's config with the list's name and version, as libcni hands it.
func flannelNetConf(f subnetfile.File, dataDir string) ([]byte, error) {
	bridge, err := flannelBridge(f, dataDir)
	if err != nil {
		return nil, err
	}
	bridge["cniVersion"], bridge["name"] = flannelCNIVersion, flannelCNIName
	return json.Marshal(bridge)
}

// The network name and CNI version of a flannel node's pod config
// (kube-flannel's cbr0).
const (
	flannelCNIName    = "cbr0"
	flannelCNIVersion = "1.0.0"
)

// flannelBridge is the bridge plugin's config for a flannel node's pods.
func flannelBridge(f subnetfile.File, dataDir string) (map[string]any, error) {
	var ranges [][]map[string]string
	var routes []map[string]string
	if f.Subnet.IsValid() {
		ranges = append(ranges, []map[string]string{{"subnet": f.NodeSubnet().String()}})
		routes = append(routes, map[string]string{"dst": f.Network.String()})
	}
	if f.IPv6Subnet.IsValid() {
		ranges = append(ranges, []map[string]string{{"subnet": f.IPv6NodeSubnet().String()}})
		routes = append(routes, map[string]string{"dst": f.IPv6Network.String()})
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("flannel's subnet file has no subnet")
	}
	return map[string]any{
		"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
		"ipMasq": !f.IPMasq, "mtu": f.MTU,
		"ipam": map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": ranges, "routes": routes},
	}, nil
}

// On the qemu driver a flannel node's VM gets flanneld and the CNI plugins
// on a read-only disk of their own (the lab's flannel.img, the VM's second
// virtio disk), which startDaemon mounts at vmFlannelDir: the image every
// VM boots is the same with flannel nodes or without, as twilld reaches
// the VMs in it. flanneld keeps its WireGuard key where flannel keeps it
// (VMFlannelKeyFile).
const (
	vmFlannelDir     = "/opt/flannel"
	vmFlannelDev     = "/dev/vdb"
	vmFlannelCNIData = "/var/lib/cni/flannel"
)

// flanneld runs iptables even in nftables mode (to clear old rules, and
// it ends when there is none): the flannel disk carries this host's
// iptables, nft flavour (xtables-nft-multi, by the names go-iptables runs),
// its libraries and its extensions, found through vmFlannelEnv.
const (
	xtablesMulti = "/usr/sbin/xtables-nft-multi"
	xtablesLib   = "/usr/lib/x86_64-linux-gnu/xtables"
)

var xtablesNames = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// vmFlannelEnv is the environment flanneld runs with in a VM: nft from the
// image, iptables from the flannel disk.
var vmFlannelEnv = []string{
	"PATH=" + vmFlannelDir + "/sbin:/sbin:/usr/sbin:/bin:/usr/bin",
	"LD_LIBRARY_PATH=" + vmFlannelDir + "/lib",
	"XTABLES_LIBDIR=" + vmFlannelDir + "/xtables",
}

// makeFlannelDisk writes an ext4 image at out that holds FlannelNames from
// dir, and iptables (sbin/, lib/, xtables/).
func makeFlannelDisk(ctx context.Context, dir, out string) error {
	stage := out + ".d"
	if err := os.RemoveAll(stage); err != nil {
		return err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	var size int64
	for _, n := range binaries.FlannelNames {
		src, dst := filepath.Join(dir, n), filepath.Join(stage, n)
		fi, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("flannel disk: %w", err)
		}
		size += fi.Size()
		if os.Link(src, dst) != nil {
			if err := copyFile(src, dst, 0o755); err != nil {
				return fmt.Errorf("flannel disk: copy %s: %w", n, err)
			}
		}
	}
	n, err := stageIPTables(ctx, stage)
	if err != nil {
		return fmt.Errorf("flannel disk: %w", err)
	}
	size += n
	mib := size>>20 + size>>22 + 16 // the files, a quarter more, and room for ext4's own
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "flannel", "-d", stage, out, fmt.Sprintf("%dM", mib)); err != nil {
		return fmt.Errorf("flannel disk: %w", err)
	}
	return nil
}

// stageIPTables copies this host's iptables into stage and says how many
// bytes it took.
func stageIPTables(ctx context.Context, stage string) (int64, error) {
	if _, err := os.Stat(xtablesMulti); err != nil {
		return 0, fmt.Errorf("flanneld runs iptables: %w (install iptables)", err)
	}
	libs, err := libraries(ctx, xtablesMulti)
	if err != nil {
		return 0, err
	}
	exts, _ := filepath.Glob(filepath.Join(xtablesLib, "*.so"))
	var size int64
	cp := func(src, dst string) error {
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		size += fi.Size()
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return copyFile(src, dst, 0o755)
	}
	var errs []error
	errs = append(errs, cp(xtablesMulti, filepath.Join(stage, "sbin", filepath.Base(xtablesMulti))))
	for _, name := range xtablesNames {
		errs = append(errs, os.Symlink(filepath.Base(xtablesMulti), filepath.Join(stage, "sbin", name)))
	}
	for _, l := range libs {
		errs = append(errs, cp(l, filepath.Join(stage, "lib", filepath.Base(l))))
	}
	for _, e := range exts {
		errs = append(errs, cp(e, filepath.Join(stage, "xtables", filepath.Base(e))))
	}
	return size, errors.Join(errs...)
}
