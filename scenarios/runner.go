package scenarios

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/vmtest"
)

// Runner plays scenarios.
type Runner struct {
	// Driver is the vmtest driver ("netns" unless set).
	Driver string
	// Bin is the directory with twilld, twillctl and twill-cni.
	Bin string
	// Out receives the progress, one line per step.
	Out io.Writer
	// ReportDir, if set, receives <scenario>.json.
	ReportDir string
	// LabName names the cluster (default: "sc" and a random number).
	LabName string
	// Keep leaves the cluster running after the scenario.
	Keep bool
	// Attach plays the scenario on the running lab LabName instead of
	// bringing up a cluster; the lab must have the nodes, backend and pods
	// the scenario names. The lab is left running.
	Attach bool
	// Cluster, if set, is the cluster to play on instead of bringing one
	// up: a cluster made another way, such as the vagrant driver's or the
	// rollout test's (vmtest.Remote). It must have the scenario's nodes;
	// the pods the scenario names are added to it and left there.
	Cluster vmtest.Cluster
	Log     *slog.Logger
}

// Report is the result of one scenario, as written to JSON.
type Report struct {
	Scenario string       `json:"scenario"`
	File     string       `json:"file"`
	Driver   string       `json:"driver"`
	Lab      string       `json:"lab"`
	Started  time.Time    `json:"started"`
	Seconds  float64      `json:"seconds"`
	Passed   bool         `json:"passed"`
	Error    string       `json:"error,omitempty"`
	Steps    []StepReport `json:"steps"`
}

// StepReport is the result of one step.
type StepReport struct {
	Index   int     `json:"index"`
	Kind    string  `json:"kind"`
	Line    int     `json:"line"`
	Passed  bool    `json:"passed"`
	Seconds float64 `json:"seconds"`
	// Detail is what was seen: a ping matrix, a checksum, a route diff.
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
	// Data carries numbers for tools (throughput, bytes).
	Data map[string]any `json:"data,omitempty"`
	// Unsupported says that the cluster's driver cannot do what the step
	// asks (a reboot on a driver without VMs): the step is not passed,
	// and says so rather than being skipped.
	Unsupported bool `json:"unsupported,omitempty"`
}

// play is the state of one scenario being played.
type play struct {
	r       *Runner
	s       *Scenario
	c       vmtest.Cluster
	bin     string
	network netip.Prefix
	backend string
	// mode is the backend's mode (macvlan, ipvlan), from the network config.
	mode string
	// down holds the nodes whose daemon or underlay is stopped; checks
	// leave their pods out.
	down map[string]bool
	// subnets remembers each node's subnet before a restart.
	subnets map[string]netip.Prefix
	// conf is the cluster's network config, when the scenario's (or the
	// default one) parses.
	conf *netconf.Config
	// stopped is when each node's daemon was last stopped (withdrawn
	// times from it).
	stopped map[string]time.Time
	// watches are the ping watches running, by "from->to".
	watches map[string]*pingWatch
	// wgKeys are the WireGuard public keys wireguard-peers last saw (and
	// new-key made), by node.
	wgKeys map[string]string
}

// Run brings up the scenario's cluster, plays it and tears it down. The
// report is returned also when the scenario failed; err says why.
func (r *Runner) Run(ctx context.Context, s *Scenario) (rep *Report, err error) {
	driver := cmp.Or(r.Driver, "netns")
	if r.Cluster != nil {
		return r.runOn(ctx, s, driver)
	}
	if len(s.Drivers) > 0 && !slices.Contains(s.Drivers, driver) {
		return nil, fmt.Errorf("scenario %s runs on %s, not on the %s driver", s.Name, strings.Join(s.Drivers, ", "), driver)
	}
	out := r.Out
	if out == nil {
		out = io.Discard
	}
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lab := cmp.Or(r.LabName, fmt.Sprintf("sc%03d", rand.IntN(1000)))
	rep = &Report{Scenario: s.Name, File: s.file, Driver: driver, Lab: lab, Started: time.Now()}
	defer func() { err = r.finish(s, rep, out, err) }()

	spec := vmtest.Spec{
		Name: lab, Driver: driver, Nodes: s.Cluster.Nodes, Backend: s.Cluster.Backend, NetConfig: s.Cluster.NetConfig,
		IPMasq: s.Cluster.IPMasq, Outside: s.Cluster.Outside, IPFamily: s.Cluster.IPFamily, Bin: r.Bin, Store: s.Cluster.Store, FlannelNodes: s.Cluster.FlannelNodes,
		SubnetLeaseTTL: time.Duration(s.Cluster.SubnetLeaseTTL), RenewMargin: time.Duration(s.Cluster.RenewMargin),
		Routed: s.Cluster.Routed, NodeArgs: s.Cluster.NodeArgs,
	}
	fmt.Fprintf(out, "== %s: %s, backend %s, %s per node (lab %s, driver %s)\n",
		s.Name, plural.Count(s.Cluster.Nodes, "node"), cmp.Or(s.Cluster.Backend, "from netConfig"), plural.Count(s.Cluster.PodsPerNode, "pod"), lab, driver)
	start := time.Now()
	c, done, err := r.lab(ctx, spec, s, log)
	if err != nil {
		return rep, fmt.Errorf("bring up the cluster: %w", err)
	}
	defer func() { err = errors.Join(err, done()) }()
	have := map[string]bool{}
	for _, pod := range c.Pods() {
		have[pod.Name] = true
	}
	for i := 1; i <= s.Cluster.Nodes; i++ {
		for j := 1; j <= s.Cluster.PodsPerNode; j++ {
			if have[PodName(i, j)] {
				continue
			}
			if _, err := c.AddPod(ctx, vmtest.NodeName(i), PodName(i, j)); err != nil {
				return rep, fmt.Errorf("add pod %s: %w", PodName(i, j), err)
			}
		}
	}
	fmt.Fprintf(out, "   cluster up with %s in %.1fs\n", plural.Count(len(c.Pods()), "pod"), time.Since(start).Seconds())
	return rep, r.play(ctx, s, c, cmp.Or(r.Bin, "bin"), rep, out)
}

// finish completes the report of a scenario that ended with err.
func (r *Runner) finish(s *Scenario, rep *Report, out io.Writer, err error) error {
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.Passed = err == nil
	if err != nil {
		rep.Error = err.Error()
		fmt.Fprintf(out, "FAIL %s after %.1fs: %v\n", s.Name, rep.Seconds, err)
	} else {
		fmt.Fprintf(out, "PASS %s in %.1fs\n", s.Name, rep.Seconds)
	}
	if r.ReportDir != "" {
		if werr := writeReport(r.ReportDir, rep); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return err
}

// runOn plays the scenario on r.Cluster, adding the pods it names that
// the cluster lacks. The scenario's drivers are not checked: a step the
// cluster cannot do is reported as unsupported.
func (r *Runner) runOn(ctx context.Context, s *Scenario, driver string) (rep *Report, err error) {
	out := r.Out
	if out == nil {
		out = io.Discard
	}
	c := r.Cluster
	rep = &Report{Scenario: s.Name, File: s.file, Driver: driver, Lab: c.Name(), Started: time.Now()}
	defer func() { err = r.finish(s, rep, out, err) }()
	fmt.Fprintf(out, "== %s: %s, %s per node (cluster %s, driver %s)\n", s.Name, plural.Count(s.Cluster.Nodes, "node"), plural.Count(s.Cluster.PodsPerNode, "pod"), c.Name(), driver)
	if n := len(c.Nodes()); n < s.Cluster.Nodes {
		return rep, fmt.Errorf("cluster %s has %s, the scenario needs %d", c.Name(), plural.Count(n, "node"), s.Cluster.Nodes)
	}
	start := time.Now()
	have := map[string]bool{}
	for _, pod := range c.Pods() {
		have[pod.Name] = true
	}
	type job struct{ node, pod string }
	var jobs []job
	for i := 1; i <= s.Cluster.Nodes; i++ {
		for j := 1; j <= s.Cluster.PodsPerNode; j++ {
			if !have[PodName(i, j)] {
				jobs = append(jobs, job{vmtest.NodeName(i), PodName(i, j)})
			}
		}
	}
	errs := make([]error, len(jobs))
	parallel(4, len(jobs), func(i int) {
		if _, err := c.AddPod(ctx, jobs[i].node, jobs[i].pod); err != nil {
			errs[i] = fmt.Errorf("add pod %s: %w", jobs[i].pod, err)
		}
	})
	if err := errors.Join(errs...); err != nil {
		return rep, err
	}
	fmt.Fprintf(out, "   %s added in %.1fs\n", plural.Count(len(jobs), "pod"), time.Since(start).Seconds())
	return rep, r.play(ctx, s, c, cmp.Or(r.Bin, "bin"), rep, out)
}

func (r *Runner) play(ctx context.Context, s *Scenario, c vmtest.Cluster, binDir string, rep *Report, out io.Writer) error {
	p := &play{r: r, s: s, c: c, bin: binDir, down: map[string]bool{}, subnets: map[string]netip.Prefix{}, backend: s.Cluster.Backend,
		watches: map[string]*pingWatch{}, stopped: map[string]time.Time{}, wgKeys: map[string]string{}}
	defer p.endAllWatches()
	if nodes := c.Nodes(); len(nodes) > 0 {
		if f, err := readSubnetFile(nodes[0].SubnetFile); err == nil {
			p.network = f.Network
		}
	}
	if s.Cluster.NetConfig != "" {
		var nc struct{ Backend struct{ Type, Mode string } }
		if err := json.Unmarshal([]byte(s.Cluster.NetConfig), &nc); err == nil {
			p.backend = cmp.Or(p.backend, nc.Backend.Type, "udp")
			p.mode = nc.Backend.Mode
		}
	}
	conf := s.Cluster.NetConfig
	if conf == "" {
		nc := map[string]any{"Network": "10.244.0.0/16", "Backend": map[string]string{"Type": p.backend}}
		switch s.Cluster.IPFamily { // as vmtest's default config
		case "dual":
			nc["EnableIPv6"], nc["IPv6Network"] = true, vmtest.PodNetwork6.String()
		case "ipv6":
			nc = map[string]any{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": vmtest.PodNetwork6.String(), "Backend": nc["Backend"]}
		}
		b, _ := json.Marshal(nc)
		conf = string(b)
	}
	p.conf, _ = netconf.Parse([]byte(conf))
	for i, st := range s.Steps {
		sr := StepReport{Index: i + 1, Kind: st.Kind, Line: st.Line}
		fmt.Fprintf(out, "[%d/%d] %s%s ... ", i+1, len(s.Steps), st.Kind, describeParams(st))
		t0 := time.Now()
		detail, data, err := p.step(ctx, st)
		sr.Seconds = time.Since(t0).Seconds()
		sr.Detail, sr.Data, sr.Passed = detail, data, err == nil
		sr.Unsupported = errors.Is(err, errors.ErrUnsupported)
		if sr.Unsupported {
			sr.Error = err.Error()
			fmt.Fprintf(out, "UNSUPPORTED (%.1fs): %v\n", sr.Seconds, err)
		} else if err != nil {
			sr.Error = err.Error()
			fmt.Fprintf(out, "FAILED (%.1fs)\n", sr.Seconds)
		} else {
			fmt.Fprintf(out, "ok (%.1fs)\n", sr.Seconds)
		}
		if detail != "" {
			for _, line := range strings.Split(strings.TrimRight(detail, "\n"), "\n") {
				fmt.Fprintf(out, "      %s\n", line)
			}
		}
		rep.Steps = append(rep.Steps, sr)
		if err != nil {
			return fmt.Errorf("step %d (%s, line %d): %w", i+1, st.Kind, st.Line, err)
		}
	}
	return nil
}

func describeParams(st Step) string {
	var parts []string
	for _, kv := range [][2]string{{"node", st.Node}, {"peer", st.Peer}, {"from", st.From}, {"to", st.To}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	if st.Kind == "tcp" {
		parts = append(parts, fmt.Sprintf("size=%dMiB", st.Size>>20))
	}
	if st.Holds != nil {
		parts = append(parts, fmt.Sprintf("holds=%t", *st.Holds))
	}
	if st.Kind == "underlay-loss" {
		parts = append(parts, fmt.Sprintf("loss=%g%% delay=%v", st.Loss, time.Duration(st.Delay)))
	}
	if st.Family != "" {
		parts = append(parts, "family="+st.Family)
	}
	if st.Kind == "ping" && st.Expect != "ok" {
		parts = append(parts, "expect="+st.Expect)
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

func (p *play) step(ctx context.Context, st Step) (string, map[string]any, error) {
	within := time.Duration(st.Within)
	if within == 0 {
		within = 30 * time.Second
	}
	switch st.Kind {
	case "ping-all":
		return p.pingAll(ctx, within, p.stepFamilies(st))
	case "ping":
		return p.ping(ctx, st.From, st.To, st.Expect == "ok", within, p.stepFamilies(st)[0])
	case "tcp":
		return p.tcp(ctx, st.From, st.To, st.Size, within, p.stepFamilies(st)[0])
	case "mtu":
		return p.mtu(ctx, st.From, st.To, st.PathMTU, within, p.stepFamilies(st)[0])
	case "outside":
		return p.outside(ctx, st.From, within, p.stepFamilies(st)[0])
	case "host-to-pods":
		return p.hostToPods(ctx, within)
	case "outside-to-pod":
		return p.outsideToPod(ctx, st.To, within)
	case "lease":
		return p.lease(ctx, st.Node, *st.Holds, within)
	case "routes":
		return p.routes(ctx, within)
	case "node-leases":
		return p.nodeLeases(ctx, st.Node, within)
	case "bgp-sessions":
		return p.bgpSessions(ctx, within)
	case "router-routes":
		return p.routerRoutes(ctx, within)
	case "restart-router":
		return p.restartRouter(ctx)
	case "no-tunnel":
		return p.noTunnel(ctx)
	case "ipip-routes":
		return p.ipipRoutes(ctx, within)
	case "withdrawn":
		return p.withdrawn(ctx, st.Node, within)
	case "restart-daemon":
		return p.restartDaemon(ctx, st.Node, syscall.SIGTERM)
	case "kill-daemon":
		return p.stopDaemon(ctx, st.Node, syscall.SIGKILL)
	case "stop-daemon":
		return p.stopDaemon(ctx, st.Node, syscall.SIGTERM)
	case "start-daemon":
		return p.startDaemon(ctx, st.Node)
	case "stop-node":
		return p.stopNode(ctx, st.Node)
	case "start-node":
		return p.startNode(ctx, st.Node)
	case "delete-kube-node":
		return p.deleteKubeNode(ctx, st.Node)
	case "etcd-down":
		return "", nil, p.c.StopEtcd(ctx)
	case "etcd-up":
		return "", nil, p.c.StartEtcd(ctx)
	case "delete-route":
		return p.deleteRoute(ctx, st.Node, st.Peer)
	case "wait-lease-expiry":
		limit := time.Duration(st.Within)
		if limit == 0 {
			limit = time.Duration(p.s.Cluster.SubnetLeaseTTL) + 30*time.Second
		}
		return p.lease(ctx, st.Node, false, limit)
	case "data-path":
		return p.dataPath(ctx, st.Path, st.Node)
	case "reboot-node":
		return p.rebootNode(ctx, st.Node)
	case "partition":
		return p.partition(ctx, st.Node, false)
	case "heal":
		return p.partition(ctx, st.Node, true)
	case "underlay-loss":
		return p.underlayLoss(ctx, st.Node, st.Loss, time.Duration(st.Delay))
	case "put-lease":
		return p.putLease(ctx, st)
	case "delete-nft-table":
		return p.deleteNFTTable(ctx, st.Node)
	case "nft-table":
		return p.nftTable(ctx, st.Node, within)
	case "delete-device":
		return p.deleteDevice(ctx, st.Node)
	case "send-spoofed":
		return p.sendSpoofed(ctx, st.Node, *st.Count)
	case "ping-watch":
		return p.startPingWatch(ctx, st.From, st.To)
	case "ping-watch-end":
		return p.endPingWatches(st.From, st.To, st.MaxLost, time.Duration(st.MaxGap))
	case "readyz":
		return p.readyz(ctx, st.Node, st.Expect == "ok", within)
	case "log":
		return p.logLines(ctx, st.Node, st.Contains, st.Count, within)
	case "wireguard-peers":
		return p.wireGuardPeers(ctx, within)
	case "new-key":
		return p.newKey(ctx, st.Node, within)
	case "underlay-encrypted":
		return p.underlayEncrypted(ctx, st.From, st.To, p.stepFamilies(st)[0])
	case "sleep":
		select {
		case <-ctx.Done():
			return "", nil, ctx.Err()
		case <-time.After(time.Duration(st.For)):
			return "", nil, nil
		}
	}
	return "", nil, fmt.Errorf("step %q is not implemented", st.Kind)
}

// retry runs f until it succeeds or within has passed, and returns the last
// result.
func retry(ctx context.Context, within time.Duration, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(within)
	for {
		detail, err := f()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return detail, err
		}
		select {
		case <-ctx.Done():
			return detail, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// livePods are the pods on nodes that are up, by name.
func (p *play) livePods() []vmtest.Pod {
	var out []vmtest.Pod
	for _, pod := range p.c.Pods() {
		if !p.down[pod.Node] {
			out = append(out, pod)
		}
	}
	slices.SortFunc(out, func(a, b vmtest.Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (p *play) pod(name string) (vmtest.Pod, error) {
	for _, pod := range p.c.Pods() {
		if pod.Name == name {
			return pod, nil
		}
	}
	return vmtest.Pod{}, fmt.Errorf("no pod %q in the cluster", name)
}

func (p *play) registry() (*etcd.Registry, error) {
	return etcd.New(etcd.Config{Endpoints: []string{p.c.EtcdEndpoint()}, Prefix: p.c.EtcdPrefix(), DialTimeout: 2 * time.Second, RequestTimeout: 3 * time.Second})
}

func (p *play) leases(ctx context.Context) ([]lease.Lease, error) {
	if kc, ok := p.c.(vmtest.KubeCluster); ok && kc.Store() == "kube" {
		return kc.KubeLeases(ctx)
	}
	if ll, ok := p.c.(vmtest.LeaseLister); ok {
		return ll.Leases(ctx)
	}
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	ls, _, err := reg.List(ctx)
	return ls, err
}

func writeReport(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, rep.Scenario+".json")
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// parallel runs f for each index with at most n at once.
func parallel(n, count int, f func(i int)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, n)
	for i := range count {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}
