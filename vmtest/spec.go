package vmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// StateDir holds one directory per lab: its state file, logs, subnet files,
// CNI data and etcd data.
const StateDir = "/run/twill-lab"

// DefaultName is the lab name when Spec.Name is empty.
const DefaultName = "twill"

// DashboardPort is where a node's dashboard listens (on its underlay
// address).
const DashboardPort = 9180

// MaxNameLen is the longest lab name: the lab's link in the host's namespace
// is <name>-host, and Linux allows 15 characters.
const MaxNameLen = 10

// MaxNodes is the most nodes one lab has: node addresses are .11 to .48 of
// the lab's /26 slice of the underlay.
const MaxNodes = 38

// hostSlots is how many labs with host access can run side by side: each
// owns a /26 of 192.168.56.0/24 in the host's namespace.
const hostSlots = 4

// Spec describes a lab.
type Spec struct {
	// Name of the lab (default "twill"): lower-case letters and digits,
	// starting with a letter, at most MaxNameLen characters. It prefixes
	// every namespace, link and directory of the lab.
	Name string `json:"name"`
	// Driver is how nodes are made: "netns" (the default: each node a
	// network namespace of this machine) or "qemu" (each node a VM with its
	// own kernel, see qemu_linux.go).
	Driver string `json:"driver"`
	// Nodes is the number of nodes (default 1).
	Nodes int `json:"nodes"`
	// Backend is the backend type in the default network config.
	Backend string `json:"backend,omitempty"`
	// NetConfig is the whole network config JSON; empty means
	// {"Network":"10.244.0.0/16","Backend":{"Type":Backend}}.
	NetConfig string `json:"net_config,omitempty"`
	// PodsPerNode pods are added to every node by Up, named after their
	// node: n1p1, n1p2 on n1, n2p1, n2p2 on n2, ... (the scenarios' names).
	PodsPerNode int `json:"pods_per_node,omitempty"`
	// IPMasq runs twilld with --ip-masq.
	IPMasq bool `json:"ip_masq,omitempty"`
	// SubnetLeaseTTL and RenewMargin are passed to twilld when not 0.
	SubnetLeaseTTL time.Duration `json:"subnet_lease_ttl,omitempty"`
	RenewMargin    time.Duration `json:"renew_margin,omitempty"`
	// Outside adds a namespace on the underlay that plays the world
	// outside the cluster.
	Outside bool `json:"outside,omitempty"`
	// HostAccess joins the host's own namespace to the underlay with one
	// veth (<name>-host) and an address of the lab's slice, so that a
	// browser or twillctl on the host reaches the nodes. Tests leave it
	// off: then the lab changes nothing in the host's namespace.
	HostAccess bool `json:"host_access,omitempty"`
	// Store is the lease store: "etcd" (the default) or "kube": the hub
	// runs a real kube-apiserver (built by make kube) on the lab's etcd, the
	// lab registers each node as a Node with a podCIDR, and every twilld
	// runs with --kube-subnet-mgr (netns driver only).
	Store string `json:"store,omitempty"`
	// EtcdPrefix is the etcd key prefix (default: twilld's default).
	EtcdPrefix string `json:"etcd_prefix,omitempty"`
	// Bin is the directory with twilld, twillctl and twill-cni. Empty: the
	// directory of the running executable if it has them, else, in the
	// source tree, bin/ of make build if it is current with the source,
	// else one shared build in build/bin (internal/binaries).
	Bin string `json:"bin,omitempty"`
	// TwilldArgs are extra twilld flags for every node.
	TwilldArgs []string `json:"twilld_args,omitempty"`
	// Accel is the qemu driver's accelerator: "tcg" (software emulation),
	// "kvm", or "auto" (kvm if a plain guest boots with it, once tried and
	// remembered in the image directory). Empty: $TWILL_VM_ACCEL, else tcg.
	Accel string `json:"accel,omitempty"`
	// ConsoleDir keeps the qemu driver's console logs, one per VM, after
	// the lab is gone. Empty: $TMPDIR/twill-vm-consoles/<name>.
	ConsoleDir string `json:"console_dir,omitempty"`
	// ImageDir caches the VM kernel and initramfs (default: ImageDir()).
	ImageDir string `json:"image_dir,omitempty"`
	// SystemImage makes the qemu driver boot whole Debian systems instead
	// of the initramfs: the directory of an image made by
	// scripts/rollout-image.sh (disk.qcow2, vmlinuz, initrd.img and the
	// SSH key id_ed25519 that root logs in with). Each VM boots systemd and
	// sshd from its own copy-on-write layer of the disk. Such a lab is bare:
	// the driver starts no etcd and no twilld and adds no pods (Ansible
	// installs twill; see Cluster.Remote), and Up returns once every VM
	// answers over SSH.
	SystemImage string `json:"system_image,omitempty"`
}

// Drivers are the known drivers.
var Drivers = []string{"netns", "qemu"}

// MaxVMs is the most VMs the qemu driver runs in one lab: each takes a
// core's worth of emulation under TCG.
const MaxVMs = 3

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// ValidName checks a lab name.
func ValidName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("lab name %q is too long: at most %d characters (interface names are limited to 15)", name, MaxNameLen)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q: want lower-case letters and digits, starting with a letter", name)
	}
	return nil
}

var podRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.]{0,31}$`)

// validPodName checks a pod name: it becomes part of a namespace name and a
// CNI container ID.
func validPodName(pod string) error {
	if !podRE.MatchString(pod) {
		return fmt.Errorf("pod name %q: want up to 32 lower-case letters, digits and dots", pod)
	}
	return nil
}

// withDefaults fills in defaults and checks the spec.
func (s Spec) withDefaults() (Spec, error) {
	if s.Name == "" {
		s.Name = DefaultName
	}
	if s.Driver == "" {
		s.Driver = "netns"
	}
	if s.Nodes == 0 {
		s.Nodes = 1
	}
	var errs []error
	if err := ValidName(s.Name); err != nil {
		errs = append(errs, err)
	}
	switch s.Driver {
	case "netns":
	case "qemu":
		if s.Nodes > MaxVMs {
			errs = append(errs, fmt.Errorf("%d nodes: the qemu driver runs at most %d VMs", s.Nodes, MaxVMs))
		}
		if s.Accel == "" {
			s.Accel = os.Getenv("TWILL_VM_ACCEL")
		}
		if s.Accel == "" {
			s.Accel = "tcg"
		}
		if s.Accel != "tcg" && s.Accel != "kvm" && s.Accel != "auto" {
			errs = append(errs, fmt.Errorf("accel %q: want tcg, kvm or auto", s.Accel))
		}
		if s.ConsoleDir == "" {
			s.ConsoleDir = filepath.Join(os.TempDir(), "twill-vm-consoles", s.Name)
		}
		if s.ImageDir == "" {
			s.ImageDir = ImageDir()
		}
		if s.SystemImage != "" {
			// qemu-img reads a relative backing file from the layer's
			// directory.
			if abs, err := filepath.Abs(s.SystemImage); err == nil {
				s.SystemImage = abs
			}
			for _, f := range []string{"disk.qcow2", "vmlinuz", "initrd.img", "id_ed25519"} {
				if _, err := os.Stat(filepath.Join(s.SystemImage, f)); err != nil {
					errs = append(errs, fmt.Errorf("system image: %w (scripts/rollout-image.sh makes one)", err))
				}
			}
			if s.PodsPerNode > 0 {
				errs = append(errs, errors.New("a system image lab has no twill until Ansible installs it: no pods from Up"))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("driver %q: want one of %v", s.Driver, Drivers))
	}
	switch s.Store {
	case "", "etcd":
	case "kube":
		if s.Driver != "netns" {
			errs = append(errs, fmt.Errorf("store kube: only the netns driver runs it, not %s", s.Driver))
		}
	default:
		errs = append(errs, fmt.Errorf("store %q: want etcd or kube", s.Store))
	}
	if s.SystemImage != "" && s.Driver != "qemu" {
		errs = append(errs, fmt.Errorf("a system image needs the qemu driver, not %s", s.Driver))
	}
	if s.Nodes < 1 || s.Nodes > MaxNodes {
		errs = append(errs, fmt.Errorf("%d nodes: want 1 to %d", s.Nodes, MaxNodes))
	}
	if s.PodsPerNode < 0 {
		errs = append(errs, fmt.Errorf("%d pods per node: want 0 or more", s.PodsPerNode))
	}
	if s.NetConfig == "" && isSublink(s.Backend) {
		// Filled in by the driver once the lab's slot, and so its
		// underlay pod range, is known (UnderlayNetConfig).
	} else if s.NetConfig == "" {
		if s.Backend == "" {
			errs = append(errs, errors.New("neither a backend nor a network config"))
		}
		b, err := json.Marshal(map[string]any{"Network": "10.244.0.0/16", "Backend": map[string]string{"Type": s.Backend}})
		if err != nil {
			errs = append(errs, err)
		}
		s.NetConfig = string(b)
	} else if !json.Valid([]byte(s.NetConfig)) {
		errs = append(errs, errors.New("network config is not JSON"))
	}
	return s, errors.Join(errs...)
}

// layout is the addressing of one lab's underlay: a /26 of 192.168.56.0/24.
type layout struct {
	Prefix  netip.Prefix // the slice, e.g. 192.168.56.0/26
	Hub     netip.Addr   // the bridge's address in the hub; etcd listens here
	Host    netip.Addr   // the host's address with HostAccess
	Outside netip.Addr   // the outside namespace
	// Pods is the range of the underlay left to pods of the underlay
	// backends (macvlan, ipvlan): the half of 192.168.56.0/24 that does not
	// hold the lab's slot, 192.168.56.128/25 for slots 0 and 1.
	Pods netip.Prefix
}

// underlayBits is the prefix length of a lab's segment when its pods sit on
// the underlay: the whole 192.168.56.0/24, so that the pod range (the other
// half of it) is on-link to nodes, hub and outside alike. Each lab's
// segment is a bridge in its own hub namespace, so labs never share it; the
// host's own link (HostAccess) keeps the slot's /26.
const underlayBits = 24

// isSublink says whether a backend type is a sublink backend (macvlan,
// ipvlan), which puts pods on the underlay.
func isSublink(backendType string) bool {
	return backendType == "macvlan" || backendType == "ipvlan"
}

// underlayLab says whether the spec's network config (or backend) puts pods
// on the underlay.
func (s Spec) underlayLab() bool {
	if s.NetConfig == "" {
		return isSublink(s.Backend)
	}
	var nc struct{ Backend struct{ Type string } }
	return json.Unmarshal([]byte(s.NetConfig), &nc) == nil && isSublink(nc.Backend.Type)
}

// UnderlayNetConfig is the default network config of an underlay lab in a
// slot: the slot's pod range in /28 slices (13 pods a node).
func UnderlayNetConfig(backendType string, slot int) string {
	b, _ := json.Marshal(map[string]any{"Network": slotLayout(slot).Pods.String(), "SubnetLen": 28,
		"Backend": map[string]string{"Type": backendType}})
	return string(b)
}

func slotLayout(slot int) layout {
	base := byte(slot * 64)
	a := func(n byte) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 56, base + n}) }
	return layout{
		Prefix:  netip.PrefixFrom(a(0), 26),
		Hub:     a(1),
		Host:    a(2),
		Outside: a(50),
		Pods:    netip.MustParsePrefix([]string{"192.168.56.128/25", "192.168.56.0/25"}[slot/2%2]),
	}
}

// nodeAddr is node i's (1-based) underlay address.
func (l layout) nodeAddr(i int) netip.Addr {
	b := l.Prefix.Addr().As4()
	b[3] += byte(10 + i)
	return netip.AddrFrom4(b)
}

// Node is one node of a lab.
type Node struct {
	// Name is the node's short name in the lab, n1, n2, ...
	Name string `json:"name"`
	// DaemonName is the name twilld registers (--node-name): <lab>-<Name>.
	DaemonName string `json:"daemon_name"`
	// NetNS is the node's network namespace, <lab>-<Name>.
	NetNS      string     `json:"netns"`
	UnderlayIP netip.Addr `json:"underlay"`
	// Subnet is the node's pod subnet from its subnet file (invalid while
	// there is none).
	Subnet       netip.Prefix `json:"subnet"`
	DashboardURL string       `json:"dashboard"`
	// PID of the node's twilld (0 when it was stopped) and whether it runs.
	PID        int    `json:"pid"`
	Running    bool   `json:"running"`
	LogPath    string `json:"log"`
	SubnetFile string `json:"subnet_file"`
}

// Pod is a pod: a network namespace attached to a node by the CNI plugin.
type Pod struct {
	Name string `json:"name"`
	Node string `json:"node"`
	// NetNS is the pod's namespace name, <lab>-<node>-<pod>; NetNSPath its
	// path under /run/netns.
	NetNS     string     `json:"netns"`
	NetNSPath string     `json:"netns_path"`
	Addr      netip.Addr `json:"addr"`
}

// ImageDir is where kernels and initramfs images are cached: $TWILL_VM_DIR,
// else $XDG_CACHE_HOME/twill-vm, else ~/.cache/twill-vm.
func ImageDir() string {
	if d := os.Getenv("TWILL_VM_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "twill-vm")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "twill-vm")
	}
	return filepath.Join(os.TempDir(), "twill-vm")
}
