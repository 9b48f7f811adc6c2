// Package scenarios reads scenario files (scenarios/*.yaml) and plays them
// against a vmtest cluster: it brings up the cluster a scenario names, adds
// its pods, runs its steps (checks and faults) in order, prints each step with
// its result and timing, and writes a JSON report. The first failed check
// stops the scenario with the evidence.
//
// It drives the cluster as a user would, through vmtest and the real
// binaries; it must not import overlay/daemon or reach into twilld.
package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/twillnet/twill/vmtest"
)

// Scenario is one scenario file.
type Scenario struct {
	Name        string      `yaml:"name"`
	Description string      `yaml:"description"`
	Cluster     ClusterSpec `yaml:"cluster"`
	Steps       []Step      `yaml:"-"`
	// Drivers lists the drivers the scenario runs on (default: all). A
	// scenario whose backend needs a kernel feature this host lacks (ipip,
	// ipvlan) names only the drivers that boot their own kernel.
	Drivers []string `yaml:"drivers"`
	file    string
}

// ClusterSpec is the cluster a scenario asks for.
type ClusterSpec struct {
	Nodes   int    `yaml:"nodes"`
	Backend string `yaml:"backend"`
	// Backends plays the scenario once per backend listed (instead of
	// Backend); each play is named <name>-<backend>.
	Backends    []string `yaml:"backends"`
	NetConfig   string   `yaml:"netConfig"`
	PodsPerNode int      `yaml:"podsPerNode"`
	IPMasq      bool     `yaml:"ipMasq"`
	// Store is the lease store: etcd (the default) or kube (a real
	// kube-apiserver in the hub; twilld --kube-subnet-mgr).
	Store   string `yaml:"store"`
	Outside bool   `yaml:"outside"`
	// IPFamily is the pods' address families: ipv4 (the default), dual or
	// ipv6 (vmtest.Spec.IPFamily).
	IPFamily       string   `yaml:"ipFamily"`
	SubnetLeaseTTL Duration `yaml:"subnetLeaseTTL"`
	RenewMargin    Duration `yaml:"renewMargin"`
	// Routed puts the nodes in racks joined by a router (vmtest.Routed).
	Routed *vmtest.Routed `yaml:"routed"`
	// NodeArgs are extra twilld flags by node name (n1).
	NodeArgs map[string][]string `yaml:"nodeArgs"`
	// FlannelNodes run flannel's flanneld instead of twilld (the netns
	// and qemu drivers; make flannel builds it), by node name.
	FlannelNodes []string `yaml:"flannelNodes"`
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration time.Duration

// UnmarshalYAML reads "10s", "1m30s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 10s", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 10s", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// Step is one check or fault, with its parameters.
type Step struct {
	Kind string
	Line int

	Node   string   // lease, restart-daemon, kill-daemon, start-daemon, stop-node, start-node, delete-route, wait-lease-expiry
	Peer   string   // delete-route: whose subnet's route
	From   string   // tcp, mtu, outside, ping
	To     string   // tcp, mtu, ping, outside-to-pod
	Size   int64    // tcp: bytes
	Holds  *bool    // lease: true or false
	Within Duration // checks: how long to retry before failing; wait-*: the limit
	For    Duration // sleep
	Expect string   // ping: "ok" or "fail"
	Loss   float64  // underlay-loss: percent of packets lost
	Delay  Duration // underlay-loss: added latency

	Bits     int      // put-lease: the prefix length of the key (0: the node's own key)
	Value    string   // put-lease: the value, a text/template over the node's lease
	TTL      Duration // put-lease: the etcd lease of the key (0: keep the node's, or none)
	Count    *int     // send-spoofed: datagrams to send; log: lines that must match (nil: at least one)
	MaxLost  int      // ping-watch-end: most echo requests that may go unanswered (-1: any, with max-gap alone)
	MaxGap   Duration // ping-watch-end: the longest gap between replies allowed (0: any)
	Contains string   // log: the text a line must contain

	value *template.Template // Value, parsed
	Path  string             // data-path: "kernel" or "userspace"
	// PathMTU is mtu's path MTU when a hop on the way has a smaller one
	// than the source pod (0: the source pod's MTU is the path's).
	PathMTU int
	// Family is the address family of ping-all, ping, tcp, mtu, outside
	// and underlay-encrypted: ipv4 or ipv6, one the cluster's pods have.
	// Empty: ping-all
	// runs in each of the cluster's families, the others in its first
	// (IPv4 where the pods have it).
	Family string
}

// stepKinds lists the step kinds and the parameters each takes.
var stepKinds = map[string][]string{
	"ping-all":       {"within", "family"},
	"ping":           {"from", "to", "expect", "within", "family"},
	"tcp":            {"from", "to", "size", "within", "family"},
	"mtu":            {"from", "to", "within", "family", "path-mtu"},
	"outside":        {"from", "within", "family"},
	"host-to-pods":   {"within"},
	"outside-to-pod": {"to", "within"},
	"lease":          {"node", "holds", "within"},
	"routes":         {"within"},
	"node-leases":    {"node", "within"},
	"bgp-sessions":   {"within"},
	// A lab with a router (cluster.routed): its sessions and routes, a
	// graceful restart of it; no tunnel devices on the nodes; a stopped
	// node's subnet gone everywhere, timed.
	"router-routes":     {"within"},
	"restart-router":    {},
	"no-tunnel":         {},
	"withdrawn":         {"node", "within"},
	"ipip-routes":       {"within"},
	"restart-daemon":    {"node"},
	"kill-daemon":       {"node"},
	"stop-daemon":       {"node"},
	"start-daemon":      {"node"},
	"stop-node":         {"node"},
	"start-node":        {"node"},
	"etcd-down":         {},
	"etcd-up":           {},
	"delete-route":      {"node", "peer"},
	"wait-lease-expiry": {"node", "within"},
	"sleep":             {"for"},
	// Kubernetes store: delete a node's Node object (kubectl delete node).
	"delete-kube-node": {"node"},
	// udp: which path carried the bytes (the nodes' API); wireguard:
	// which WireGuard runs. node: only that node.
	"data-path": {"path", "node"},
	// Faults that need a node with a kernel and a link of its own (the
	// qemu driver); partition and heal work on every driver.
	"reboot-node":   {"node"},
	"partition":     {"node"},
	"heal":          {"node"},
	"underlay-loss": {"node", "loss", "delay"},
	// Hostile input and repairs (issue 14); see docs/scenarios.md.
	"put-lease":        {"node", "bits", "value", "ttl"},
	"delete-nft-table": {"node"},
	"nft-table":        {"node", "within"},
	"delete-device":    {"node"},
	"send-spoofed":     {"to", "count"},
	"ping-watch":       {"from", "to"},
	"ping-watch-end":   {"from", "to", "max-lost", "max-gap"},
	"readyz":           {"node", "expect", "within"},
	"log":              {"node", "contains", "count", "within"},
	// Marked datagrams pod to pod with the underlay captured: no plain
	// text on the wire (and WireGuard messages on wireguard).
	"underlay-encrypted": {"from", "to", "family"},
	// wireguard: every node's WireGuard device (twill's and flannel's, as
	// the kernel holds it) against the leases; a flannel node's key made
	// anew (its key file deleted, flanneld restarted).
	"wireguard-peers": {"within"},
	"new-key":         {"node", "within"},
}

// nodeTo lists the steps whose "to" names a node, not a pod.
var nodeTo = []string{"send-spoofed"}

// Load reads and validates a scenario file.
func Load(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.file = path
	return s, nil
}

// Parse reads and validates a scenario.
func Parse(data []byte) (*Scenario, error) {
	var raw struct {
		Scenario `yaml:",inline"`
		Steps    []yaml.Node `yaml:"steps"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	s := raw.Scenario
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("scenario: name: missing"))
	}
	c := &s.Cluster
	if c.Nodes < 1 || c.Nodes > 8 {
		errs = append(errs, fmt.Errorf("scenario: cluster.nodes = %d: want 1..8", c.Nodes))
	}
	switch {
	case c.Backend == "" && c.NetConfig == "" && len(c.Backends) == 0:
		errs = append(errs, errors.New("scenario: cluster.backend: missing (or give cluster.backends or cluster.netConfig)"))
	case len(c.Backends) > 0 && (c.Backend != "" || c.NetConfig != ""):
		errs = append(errs, errors.New("scenario: cluster.backends: give either backends or backend/netConfig, not both"))
	}
	for _, n := range slices.Sorted(maps.Keys(c.NodeArgs)) {
		if err := vmtest.ValidNode(n, c.Nodes); err != nil {
			errs = append(errs, fmt.Errorf("scenario: cluster.nodeArgs: %w", err))
		}
	}
	for _, n := range c.FlannelNodes {
		if err := vmtest.ValidNode(n, c.Nodes); err != nil {
			errs = append(errs, fmt.Errorf("scenario: cluster.flannelNodes: %w", err))
		}
	}
	switch c.IPFamily {
	case "", "ipv4", "dual", "ipv6":
	default:
		errs = append(errs, fmt.Errorf("scenario: cluster.ipFamily = %q: want ipv4, dual or ipv6", c.IPFamily))
	}
	if c.Store != "" && c.Store != "etcd" && c.Store != "kube" {
		errs = append(errs, fmt.Errorf("scenario: cluster.store = %q: want etcd or kube", c.Store))
	}
	if c.PodsPerNode < 0 || c.PodsPerNode > 20 {
		errs = append(errs, fmt.Errorf("scenario: cluster.podsPerNode = %d: want 0..20", c.PodsPerNode))
	}
	if len(raw.Steps) == 0 {
		errs = append(errs, errors.New("scenario: steps: none given"))
	}
	for i := range raw.Steps {
		st, err := parseStep(&raw.Steps[i], c)
		if err != nil {
			errs = append(errs, fmt.Errorf("scenario: steps[%d]: %w", i, err))
			continue
		}
		s.Steps = append(s.Steps, st)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &s, nil
}

func parseStep(n *yaml.Node, c *ClusterSpec) (Step, error) {
	// A step is "- kind" or "- kind: {params}".
	var kind string
	params := map[string]yaml.Node{}
	switch n.Kind {
	case yaml.ScalarNode:
		kind = n.Value
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			return Step{}, fmt.Errorf("line %d: a step is one kind with its parameters, e.g. \"- tcp: {from: n1p1, to: n2p1}\"", n.Line)
		}
		kind = n.Content[0].Value
		v := n.Content[1]
		switch {
		case v.Kind == yaml.MappingNode:
			if err := v.Decode(&params); err != nil {
				return Step{}, fmt.Errorf("line %d: %s: %w", n.Line, kind, err)
			}
		case v.Kind == yaml.ScalarNode && (v.Tag == "!!null" || v.Value == ""):
		case v.Kind == yaml.ScalarNode && kind == "sleep":
			params["for"] = *v
		default:
			return Step{}, fmt.Errorf("line %d: %s: parameters must be a mapping", v.Line, kind)
		}
	default:
		return Step{}, fmt.Errorf("line %d: a step is one kind with its parameters", n.Line)
	}
	known, ok := stepKinds[kind]
	if !ok {
		kinds := make([]string, 0, len(stepKinds))
		for k := range stepKinds {
			kinds = append(kinds, k)
		}
		return Step{}, fmt.Errorf("line %d: unknown step %q; known steps: %s", n.Line, kind, strings.Join(slices.Sorted(slices.Values(kinds)), ", "))
	}
	st := Step{Kind: kind, Line: n.Line, Expect: "ok"}
	for name, v := range params {
		if !slices.Contains(known, name) {
			return Step{}, fmt.Errorf("line %d: %s takes no parameter %q (it takes: %s)", v.Line, kind, name, strings.Join(known, ", "))
		}
		var err error
		switch name {
		case "node":
			err = v.Decode(&st.Node)
		case "peer":
			err = v.Decode(&st.Peer)
		case "from":
			err = v.Decode(&st.From)
		case "to":
			err = v.Decode(&st.To)
		case "expect":
			err = v.Decode(&st.Expect)
			if err == nil && st.Expect != "ok" && st.Expect != "fail" {
				err = fmt.Errorf("%q: want ok or fail", st.Expect)
			}
		case "family":
			err = v.Decode(&st.Family)
			if err == nil && !slices.Contains(c.families(), st.Family) {
				err = fmt.Errorf("%q: want one of the cluster's families %v (cluster.ipFamily %q)", st.Family, c.families(), c.IPFamily)
			}
		case "path":
			err = v.Decode(&st.Path)
			if err == nil && st.Path != "kernel" && st.Path != "userspace" && st.Path != "auto" {
				err = fmt.Errorf("%q: want kernel, userspace or auto (wireguard)", st.Path)
			}
		case "holds":
			var b bool
			err = v.Decode(&b)
			st.Holds = &b
		case "size":
			var s string
			if err = v.Decode(&s); err == nil {
				st.Size, err = parseSize(s)
			}
		case "within":
			err = st.Within.UnmarshalYAML(&v)
		case "for":
			err = st.For.UnmarshalYAML(&v)
		case "delay":
			err = st.Delay.UnmarshalYAML(&v)
		case "loss":
			var s string
			if err = v.Decode(&s); err == nil {
				st.Loss, err = parsePercent(s)
			}
		case "bits":
			err = decodeInt(&v, &st.Bits, 8, 32)
		case "ttl":
			err = st.TTL.UnmarshalYAML(&v)
			if err == nil && st.TTL <= 0 {
				err = fmt.Errorf("%q: want a positive duration", v.Value)
			}
		case "value":
			if err = v.Decode(&st.Value); err == nil {
				st.value, err = parseLeaseTemplate(st.Value)
			}
		case "count":
			lo := 0
			if kind == "send-spoofed" {
				lo = 1
			}
			var c int
			err = decodeInt(&v, &c, lo, 100000)
			st.Count = &c
		case "path-mtu":
			err = decodeInt(&v, &st.PathMTU, 68, 65535)
		case "max-gap":
			err = st.MaxGap.UnmarshalYAML(&v)
			if err == nil && st.MaxGap <= 0 {
				err = fmt.Errorf("%q: want a positive duration", v.Value)
			}
		case "max-lost":
			err = decodeInt(&v, &st.MaxLost, 0, 1<<30)
		case "contains":
			err = v.Decode(&st.Contains)
			if err == nil && st.Contains == "" {
				err = errors.New("empty: want the text a log line must contain")
			}
		}
		if err != nil {
			return Step{}, fmt.Errorf("line %d: %s.%s: %w", v.Line, kind, name, err)
		}
	}
	// Required parameters.
	need := map[string][]string{
		"tcp": {"from", "to"}, "mtu": {"from", "to"}, "outside": {"from"}, "ping": {"from", "to"}, "outside-to-pod": {"to"},
		"lease": {"node", "holds"}, "restart-daemon": {"node"}, "kill-daemon": {"node"}, "stop-daemon": {"node"}, "start-daemon": {"node"},
		"stop-node": {"node"}, "start-node": {"node"}, "delete-route": {"node"}, "wait-lease-expiry": {"node"}, "sleep": {"for"},
		"data-path": {"path"}, "reboot-node": {"node"}, "partition": {"node"}, "heal": {"node"}, "underlay-loss": {"node"},
		"put-lease": {"node", "value"}, "delete-nft-table": {"node"}, "delete-device": {"node"}, "send-spoofed": {"to"},
		"ping-watch": {"from", "to"}, "log": {"contains"}, "underlay-encrypted": {"from", "to"}, "withdrawn": {"node"}, "node-leases": {"node"},
		"new-key": {"node"},
	}
	for _, p := range need[kind] {
		if _, ok := params[p]; !ok {
			return Step{}, fmt.Errorf("line %d: %s needs %q", n.Line, kind, p)
		}
	}
	if st.Kind == "node-leases" && slices.Contains(c.FlannelNodes, st.Node) {
		return Step{}, fmt.Errorf("line %d: node-leases.node = %q: a flannel node has no twill API to ask", n.Line, st.Node)
	}
	if st.Kind == "new-key" && !slices.Contains(c.FlannelNodes, st.Node) {
		return Step{}, fmt.Errorf("line %d: new-key.node = %q: not a flannel node (new-key deletes flannel's key file, %s)", n.Line, st.Node, vmtest.VMFlannelKeyFile)
	}
	if st.Kind == "tcp" && st.Size == 0 {
		st.Size = 16 << 20
	}
	if st.Kind == "send-spoofed" && st.Count == nil {
		five := 5
		st.Count = &five
	}
	if _, lost := params["max-lost"]; st.Kind == "ping-watch-end" && st.MaxGap > 0 && !lost {
		st.MaxLost = -1 // the gap bounds the loss
	}
	if st.Kind == "ping-watch-end" && (st.From == "") != (st.To == "") {
		return Step{}, fmt.Errorf("line %d: ping-watch-end: give both from and to (one watch) or neither (every watch)", n.Line)
	}
	nodeRefs := []struct{ field, v string }{{"node", st.Node}, {"peer", st.Peer}}
	if slices.Contains(nodeTo, st.Kind) {
		nodeRefs = append(nodeRefs, struct{ field, v string }{"to", st.To})
		st.Node, st.To = st.To, ""
	}
	for _, ref := range nodeRefs {
		if ref.v == "" {
			continue
		}
		if err := vmtest.ValidNode(ref.v, c.Nodes); err != nil {
			return Step{}, fmt.Errorf("line %d: %s.%s: %w", n.Line, kind, ref.field, err)
		}
	}
	for _, ref := range []struct{ field, v string }{{"from", st.From}, {"to", st.To}} {
		if ref.v != "" && !validPod(ref.v, c.Nodes, c.PodsPerNode) {
			return Step{}, fmt.Errorf("line %d: %s.%s = %q: no such pod (pods are nIpJ, I in 1..%d, J in 1..%d)", n.Line, kind, ref.field, ref.v, c.Nodes, c.PodsPerNode)
		}
	}
	return st, nil
}

// Plays returns the scenario as it is played: once, or once per backend of
// cluster.backends, named <name>-<backend>.
func (s *Scenario) Plays() []*Scenario {
	if len(s.Cluster.Backends) == 0 {
		return []*Scenario{s}
	}
	out := make([]*Scenario, 0, len(s.Cluster.Backends))
	for _, b := range s.Cluster.Backends {
		v := *s
		v.Name = s.Name + "-" + b
		v.Cluster.Backend = b
		v.Cluster.Backends = nil
		out = append(out, &v)
	}
	return out
}

// PodName is the name of the j-th pod (from 1) on node i, as
// vmtest.Spec.PodsPerNode names them: n1p1.
func PodName(i, j int) string { return vmtest.NodeName(i) + "p" + strconv.Itoa(j) }

func validPod(name string, nodes, pods int) bool {
	for i := 1; i <= nodes; i++ {
		for j := 1; j <= pods; j++ {
			if name == PodName(i, j) {
				return true
			}
		}
	}
	return false
}

// parsePercent reads "20%" (0 to 100).
func parsePercent(s string) (float64, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	var f float64
	if _, err := fmt.Sscan(num, &f); !ok || err != nil || f < 0 || f > 100 {
		return 0, fmt.Errorf("%q: want a percentage such as 20%%", s)
	}
	return f, nil
}

// parseSize reads 64MiB, 1GiB, 512KiB or a number of bytes.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			var n int64
			if _, err := fmt.Sscan(num, &n); err != nil || n <= 0 {
				return 0, fmt.Errorf("%q: want a size such as 64MiB", s)
			}
			return n * u.mult, nil
		}
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a size such as 64MiB", s)
	}
	return n, nil
}

// decodeInt reads an integer from lo to hi.
func decodeInt(n *yaml.Node, v *int, lo, hi int) error {
	if err := n.Decode(v); err != nil || *v < lo || *v > hi {
		return fmt.Errorf("%q: want an integer from %d to %d", n.Value, lo, hi)
	}
	return nil
}
