package vmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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
	// IPFamily is the pods' address families: "" or "ipv4" (IPv4 only),
	// "dual" (IPv4 and IPv6), "ipv6" (IPv6 only). With IPv6 the underlay
	// gets IPv6 too (fd00:56:0:<slot>::/64 beside the slot's IPv4 /26;
	// etcd stays on IPv4), the default network config enables it
	// (IPv6Network fd00:10:244::/56 in /64s) and the outside host has an
	// IPv6 address.
	IPFamily string `json:"ip_family,omitempty"`
	// HostAccess joins the host's own namespace to the underlay with one
	// veth (<name>-host) and an address of the lab's slice, so that a
	// browser or twillctl on the host reaches the nodes. Tests leave it
	// off: then the lab changes nothing in the host's namespace.
	HostAccess bool `json:"host_access,omitempty"`
	// Store is the lease store: "etcd" (the default) or "kube": the hub
	// runs a real kube-apiserver (built by make kube) on the lab's etcd, the
	// lab registers each node as a Node with a podCIDR, and every twilld
	// runs with --kube-subnet-mgr (netns and qemu drivers; a VM's twilld
	// gets copies of the kubeconfig and the network config).
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
	// FlannelNodes run flannel's own flanneld instead of twilld (netns and
	// qemu drivers), by node name: the same etcd, prefix, interface and public
	// addresses, its subnet file where twilld's would be, and pods
	// attached by the reference bridge and host-local CNI plugins as
	// flannel's CNI plugin configures them (flannel_linux.go).
	FlannelNodes []string `json:"flannel_nodes,omitempty"`
	// FlannelBin is the directory with flanneld, bridge and host-local.
	// Empty: build/flannel of the source tree (make flannel).
	FlannelBin string `json:"flannel_bin,omitempty"`
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
	// Routed puts the nodes in L3 subnets of their own (racks) joined only
	// by a router, the hub, instead of on one segment (nil: one segment).
	Routed *Routed `json:"routed,omitempty"`
	// NodeArgs are extra twilld flags for single nodes, by node name (n1),
	// after TwilldArgs.
	NodeArgs map[string][]string `json:"node_args,omitempty"`
}

// Routed is the routed topology (fabric_linux.go; scenarios give it as
// cluster.routed, by the yaml names): the lab's /26 is split
// into /28s, the first the hub's own segment (etcd, the host's link, the
// outside), the others one rack each; node i is in rack (i-1) % Racks and
// routes everything off its rack through the hub's address on it.
type Routed struct {
	// Router is the routing daemon the hub runs: "bird" (BIRD 2), "frr"
	// (FRR's zebra and bgpd), or "" (none: the hub only forwards, and
	// pods reach each other only through a tunnel). With a router and the
	// bgp backend every node peers with it (twilld --bgp-peer, the hub's
	// address and ASN).
	Router string `json:"router,omitempty" yaml:"router"`
	// Racks is how many racks (default 2, at most MaxRacks).
	Racks int `json:"racks,omitempty" yaml:"racks"`
	// ASN is the router's AS (default 64512, the bgp backend's).
	ASN uint32 `json:"asn,omitempty" yaml:"asn"`
	// RackASNs are the AS of each rack's nodes (an AS per rack: eBGP with
	// the router; twilld --bgp-asn). Empty: every node in ASN (iBGP, the
	// router a route reflector).
	RackASNs []uint32 `json:"rack_asns,omitempty" yaml:"rackASNs"`
}

// Routers are the routing daemons a routed lab's hub can run.
var Routers = []string{"bird", "frr"}

// MaxRacks is the most racks a routed lab has: /28s of its /26 besides the
// hub's own.
const MaxRacks = 3

// rackNodes is the most nodes in one rack: .2 to .14 of its /28.
const rackNodes = 13

func (r *Routed) withDefaults(nodes int) []error {
	var errs []error
	if r.Racks == 0 {
		r.Racks = 2
	}
	if r.ASN == 0 {
		r.ASN = 64512
	}
	if r.Router != "" && !slices.Contains(Routers, r.Router) {
		errs = append(errs, fmt.Errorf("routed.router %q: want one of %v, or none", r.Router, Routers))
	}
	if r.Racks < 1 || r.Racks > MaxRacks {
		errs = append(errs, fmt.Errorf("routed.racks = %d: want 1 to %d", r.Racks, MaxRacks))
	} else if nodes > r.Racks*rackNodes {
		errs = append(errs, fmt.Errorf("%d nodes in %d racks: at most %d a rack", nodes, r.Racks, rackNodes))
	}
	if len(r.RackASNs) != 0 && len(r.RackASNs) != r.Racks {
		errs = append(errs, fmt.Errorf("routed.rack_asns %v: want one AS per rack (%d)", r.RackASNs, r.Racks))
	}
	for i, a := range r.RackASNs {
		if a == 0 {
			errs = append(errs, fmt.Errorf("routed.rack_asns[%d] = 0: an AS number is 1 to 4294967295", i))
		}
	}
	return errs
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
		if s.SystemImage != "" {
			errs = append(errs, errors.New("store kube: a system image lab's twill is Ansible's to configure, not the lab's"))
		}
	default:
		errs = append(errs, fmt.Errorf("store %q: want etcd or kube", s.Store))
	}
	if s.SystemImage != "" && s.Driver != "qemu" {
		errs = append(errs, fmt.Errorf("a system image needs the qemu driver, not %s", s.Driver))
	}
	if s.Routed != nil {
		r := *s.Routed
		r.RackASNs = slices.Clone(r.RackASNs)
		errs = append(errs, r.withDefaults(s.Nodes)...)
		s.Routed = &r
		if s.underlayLab() {
			errs = append(errs, errors.New("a routed lab has no segment for underlay pods: macvlan and ipvlan need the flat one"))
		}
		if s.SystemImage != "" {
			errs = append(errs, errors.New("a routed lab boots the initramfs VMs, not a system image"))
		}
	}
	for _, node := range slices.Sorted(maps.Keys(s.NodeArgs)) {
		if err := ValidNode(node, s.Nodes); err != nil {
			errs = append(errs, fmt.Errorf("node_args: %w", err))
		}
	}
	for _, node := range s.FlannelNodes {
		if err := ValidNode(node, s.Nodes); err != nil {
			errs = append(errs, fmt.Errorf("flannel_nodes: %w", err))
		}
	}
	if len(s.FlannelNodes) > 0 && s.SystemImage != "" {
		errs = append(errs, fmt.Errorf("flannel nodes %v: the qemu driver runs flanneld in its own VMs, not on a system image", s.FlannelNodes))
	}
	if len(s.FlannelNodes) > 0 && s.Store == "kube" {
		errs = append(errs, fmt.Errorf("flannel nodes %v: the lab runs flanneld on the etcd store only, not %s", s.FlannelNodes, s.Store))
	}
	if s.Nodes < 1 || s.Nodes > MaxNodes {
		errs = append(errs, fmt.Errorf("%d nodes: want 1 to %d", s.Nodes, MaxNodes))
	}
	switch s.IPFamily {
	case "", "ipv4", "dual", "ipv6":
	default:
		errs = append(errs, fmt.Errorf("ip family %q: want ipv4, dual or ipv6", s.IPFamily))
	}
	if s.IPv6() && s.underlayLab() {
		errs = append(errs, fmt.Errorf("ip family %s: the underlay backends carry IPv4 only", s.IPFamily))
	}
	if s.IPv6() && s.Routed != nil {
		errs = append(errs, fmt.Errorf("ip family %s: a routed lab's racks are IPv4 only", s.IPFamily))
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
		backend := map[string]any{"Type": s.Backend}
		if s.Backend == "bgp" && s.Routed != nil && s.Routed.Router != "" {
			// Gateway BGP: the nodes peer with the router only. With the
			// mesh too, a node would prefer the direct path to a node of
			// another rack, whose next hop is not on its rack.
			backend["NodeMesh"] = false
		}
		nc := map[string]any{"Network": "10.244.0.0/16", "Backend": backend}
		if s.IPv6() {
			nc["EnableIPv6"], nc["IPv6Network"] = true, PodNetwork6.String()
		}
		if s.IPFamily == "ipv6" {
			nc["EnableIPv4"] = false
			delete(nc, "Network")
		}
		b, err := json.Marshal(nc)
		if err != nil {
			errs = append(errs, err)
		}
		s.NetConfig = string(b)
	} else if !json.Valid([]byte(s.NetConfig)) {
		errs = append(errs, errors.New("network config is not JSON"))
	}
	return s, errors.Join(errs...)
}

// NodeName is the name of a lab's i-th node (from 1): n1, n2, ...
func NodeName(i int) string { return "n" + strconv.Itoa(i) }

// ValidNode checks that name is a node of a lab of nodes nodes: one of
// n1..nN exactly as NodeName writes them (not n01, N1 or n0). It is the one
// rule for node names, at a spec's validation and at a scenario's parse
// alike; the error names the value and the nodes the lab has, and the
// caller puts the field in front.
func ValidNode(name string, nodes int) error {
	for i := 1; i <= nodes; i++ {
		if name == NodeName(i) {
			return nil
		}
	}
	var has string
	switch {
	case nodes < 1:
		has = "no nodes"
	case nodes == 1:
		has = "n1 only"
	default:
		has = NodeName(1) + ".." + NodeName(nodes)
	}
	return fmt.Errorf("node %q: no such node (the lab has %s)", name, has)
}

// Flannel says whether node runs flanneld instead of twilld.
func (s Spec) Flannel(node string) bool { return slices.Contains(s.FlannelNodes, node) }

// IPv6 reports whether the lab's pods have IPv6 (IPFamily dual or ipv6).
func (s Spec) IPv6() bool { return s.IPFamily == "dual" || s.IPFamily == "ipv6" }

// PodNetwork6 is the IPv6 pod network of the default network config.
var PodNetwork6 = netip.MustParsePrefix("fd00:10:244::/56")

// layout is the addressing of one lab's underlay: a /26 of 192.168.56.0/24,
// and with IPv6 the slot's /64 of fd00:56::/48.
type layout struct {
	// Prefix6 is the slot's IPv6 underlay, fd00:56:0:<slot>::/64; the hub,
	// the outside and the nodes take the same last number as in IPv4
	// (::1, ::50, ::11, ...).
	Prefix6 netip.Prefix
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

// backendType is the type of the spec's backend, from the network config
// or Backend.
func (s Spec) backendType() string {
	if s.NetConfig == "" {
		return s.Backend
	}
	var nc struct{ Backend struct{ Type string } }
	if json.Unmarshal([]byte(s.NetConfig), &nc) != nil {
		return ""
	}
	return nc.Backend.Type
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
		Prefix6: netip.MustParsePrefix(fmt.Sprintf("fd00:56:0:%x::/64", slot)),
		Prefix:  netip.PrefixFrom(a(0), 26),
		Hub:     a(1),
		Host:    a(2),
		Outside: a(50),
		Pods:    netip.MustParsePrefix([]string{"192.168.56.128/25", "192.168.56.0/25"}[slot/2%2]),
	}
}

// addr6 is the IPv6 underlay address of the host whose IPv4 underlay
// address is a: the same last number, written as decimal digits.
func (l layout) addr6(a netip.Addr) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("%s%d", l.Prefix6.Addr(), a.As4()[3]))
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
	// UnderlayIP6 is the node's IPv6 underlay address (a lab with IPv6).
	UnderlayIP6 netip.Addr `json:"underlay6,omitzero"`
	// Subnet is the node's pod subnet from its subnet file (invalid while
	// there is none).
	Subnet netip.Prefix `json:"subnet"`
	// Subnet6 is its IPv6 pod subnet, from the same file (a lab with IPv6).
	Subnet6      netip.Prefix `json:"subnet6,omitzero"`
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
	NetNS     string `json:"netns"`
	NetNSPath string `json:"netns_path"`
	// Addr and Addr6 are the pod's IPv4 and IPv6 addresses; the one of a
	// family the lab's pods do not have is zero.
	Addr  netip.Addr `json:"addr"`
	Addr6 netip.Addr `json:"addr6,omitzero"`
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
