package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twillnet/twill/vmtest"
)

// Options says what to measure and how long.
type Options struct {
	// Rounds of every measurement, interleaved across paths (default 3).
	Rounds int
	// Duration of each iperf3 run (default 5 s).
	Duration time.Duration
	// Paths to measure, by name (default: all, see PathNames).
	Paths []string
	// Bin is the directory with twilld, twillctl and twill-cni (see
	// vmtest.Spec.Bin).
	Bin string
	// Prefix starts every lab's name (default "bn"); labs are named
	// <prefix><n>.
	Prefix string
	Log    *slog.Logger
}

// PathNames are the paths Run knows, in table order.
var PathNames = []string{"underlay", "host-gw", "host-gw-ipv6", "twill-bgp", "kernel-vxlan", "twill-vxlan", "twill-vxlan-ipv6", "twill-udp", "twill-udp-tc", "twill-udp-userspace", "twill-udp-nooffload", "twill-wireguard", "one-packet-per-syscall"}

var descriptions = map[string]string{
	"underlay":               "node to node over the veth underlay, no tunnel",
	"host-gw":                "twilld host-gw: plain routes between pods",
	"host-gw-ipv6":           "twilld host-gw on a dual-stack lab, pod to pod over IPv6 (routes via the peer's IPv6 underlay address)",
	"twill-vxlan-ipv6":       "twilld vxlan on a dual-stack lab, pod to pod over IPv6: twill-v6.1 over the IPv6 underlay (MTU 1430)",
	"twill-bgp":              "twilld bgp: plain routes between pods, learned over the node-to-node BGP mesh (GoBGP in twilld)",
	"kernel-vxlan":           "a vxlan device set up by hand (VNI 42, MTU 1450), no twilld in the path",
	"twill-vxlan":            "twilld vxlan backend (the kernel's vxlan, MTU 1450)",
	"twill-udp":              "twilld udp backend as configured by default: the eBPF kernel path (MTU 1472)",
	"twill-udp-tc":           "twilld udp backend, kernel path attached as classic tc filters (as on kernels before 6.6; TWILL_UDP_ATTACH=tc)",
	"twill-udp-userspace":    "twilld udp backend, KernelPath:false: userspace with offloads (TUN TSO/USO, UDP GSO/GRO, coalescing)",
	"twill-udp-nooffload":    "twilld udp backend, Offload:false (one packet per TUN read/write, sendmmsg/recvmmsg)",
	"twill-wireguard":        "twilld wireguard backend (kernel WireGuard where the kernel has it, else wireguard-go in twilld; MTU 1440)",
	"one-packet-per-syscall": "the reference tunnel: flannel's design, read/sendto and recvfrom/write one packet each (MTU 1472)",
}

// lab is one path's running cluster and the endpoints to measure between.
type lab struct {
	path     string
	c        *vmtest.Lab
	from, to string // namespaces
	dst      string // address of the server in to
	server   *exec.Cmd
	ref      *refTunnel
	// cpuPIDs are the userspace processes that move this path's packets
	// (twilld of both nodes); self means the bench process itself (the
	// in-process reference tunnel).
	cpuPIDs []int
	self    bool
}

// Run brings up one lab per path, measures them round by round, takes
// every lab down, and returns the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if len(o.Paths) == 0 {
		o.Paths = PathNames
	}
	if o.Prefix == "" {
		o.Prefix = "bn"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	for _, p := range o.Paths {
		if _, ok := descriptions[p]; !ok {
			return nil, fmt.Errorf("unknown path %q (known: %s)", p, strings.Join(PathNames, ", "))
		}
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, fmt.Errorf("iperf3 is needed (apt-get install iperf3): %w", err)
	}
	r := &Report{Started: time.Now().UTC(), Machine: machine(), Rounds: o.Rounds, Duration: o.Duration.String(), Baseline: "kernel-vxlan"}
	var labs []*lab
	defer func() {
		for _, l := range labs {
			l.down(o.Log)
		}
	}()
	for i, name := range o.Paths {
		o.Log.Info("bringing up", "path", name)
		l, err := up(ctx, name, fmt.Sprintf("%s%d", o.Prefix, i), o)
		if l != nil {
			labs = append(labs, l)
		}
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", name, err)
		}
		r.Paths = append(r.Paths, &Path{Name: name, Description: descriptions[name]})
	}
	for round := range o.Rounds {
		for _, i := range roundOrder(len(labs), round) {
			l := labs[i]
			o.Log.Info("measuring", "path", l.path, "round", round+1)
			if err := l.measure(ctx, r.Paths[i], o.Duration); err != nil {
				if ctx.Err() != nil {
					return nil, err
				}
				// One failed measurement costs its sample, not the run.
				o.Log.Warn("measurement failed", "path", l.path, "round", round+1, "err", err)
				r.Paths[i].Failures = append(r.Paths[i].Failures, fmt.Sprintf("round %d: %v", round+1, err))
			}
		}
	}
	r.summarize()
	return r, nil
}

// roundOrder is the order in which round measures the n paths: as given
// in even rounds, reversed in odd ones. The machine is not the same for
// the first path of a round as for the last (the previous path's UDP
// flood, caches, frequency): on the idle development machine the path
// measured first got 5-13% more on four TCP streams than the same path
// measured second, twill-udp-tc and twill-udp alike. Alternating puts
// every path in every position equally often when the rounds are even.
func roundOrder(n, round int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
		if round%2 == 1 {
			order[i] = n - 1 - i
		}
	}
	return order
}

// up brings up the lab for path.
func up(ctx context.Context, path, name string, o Options) (*lab, error) {
	spec := vmtest.Spec{Name: name, Nodes: 2, PodsPerNode: 1, Bin: o.Bin}
	switch path {
	case "host-gw":
		spec.Backend = "host-gw"
	case "host-gw-ipv6":
		spec.Backend, spec.IPFamily = "host-gw", "dual"
	case "twill-bgp":
		spec.NetConfig = `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","ConnectRetry":1}}`
	case "twill-vxlan":
		spec.Backend = "vxlan"
	case "twill-vxlan-ipv6":
		spec.Backend, spec.IPFamily = "vxlan", "dual"
	case "twill-udp":
		spec.Backend = "udp"
	case "twill-udp-tc":
		// twilld takes TWILL_UDP_ATTACH from the environment it is started
		// in, this process's.
		spec.Backend = "udp"
		defer os.Setenv("TWILL_UDP_ATTACH", os.Getenv("TWILL_UDP_ATTACH"))
		os.Setenv("TWILL_UDP_ATTACH", "tc")
	case "twill-udp-userspace":
		spec.NetConfig = `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","KernelPath":false}}`
	case "twill-udp-nooffload":
		spec.NetConfig = `{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Offload":false}}`
	case "twill-wireguard":
		spec.Backend = "wireguard"
	default:
		spec.Backend = "alloc" // twilld leases subnets; the path is set up here
	}
	if path == "underlay" {
		spec.PodsPerNode = 0
	}
	_ = vmtest.Down(ctx, name) // a lab left by an interrupted run
	c, err := vmtest.Up(ctx, spec, o.Log)
	if err != nil {
		return nil, err
	}
	l := &lab{path: path, c: c}
	nodes := c.Nodes()
	pods := c.Pods()
	if path == "underlay" {
		l.from, l.to, l.dst = nodes[0].NetNS, nodes[1].NetNS, nodes[1].UnderlayIP.String()
	} else {
		l.from, l.to, l.dst = pods[0].NetNS, pods[1].NetNS, pods[1].Addr.String()
	}
	if spec.IPv6() {
		if !pods[1].Addr6.IsValid() {
			return l, fmt.Errorf("path %s: pod %s has no IPv6 address", path, pods[1].Name)
		}
		l.dst = pods[1].Addr6.String()
	}
	var setupErr error
	switch path {
	case "kernel-vxlan":
		setupErr = l.setupVXLAN(ctx, nodes, pods)
	case "one-packet-per-syscall":
		l.self = true
		l.ref, setupErr = startRefTunnel(ctx, nodes, pods)
	case "twill-bgp", "twill-vxlan", "twill-vxlan-ipv6", "twill-udp", "twill-udp-tc", "twill-udp-userspace", "twill-udp-nooffload", "twill-wireguard":
		for _, n := range nodes {
			l.cpuPIDs = append(l.cpuPIDs, n.PID)
		}
	}
	if path == "twill-bgp" && setupErr == nil {
		// The routes come once the session is up.
		setupErr = l.waitRoute(ctx, 30*time.Second)
	}
	if setupErr == nil {
		setupErr = l.startServer()
	}
	return l, setupErr
}

// waitRoute waits until the far end answers a ping.
func (l *lab) waitRoute(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := exec.CommandContext(ctx, "ip", "netns", "exec", l.from, "ping", "-c", "1", "-W", "1", l.dst).Run()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not reach %s within %s: %w", l.from, l.dst, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// setupVXLAN joins the nodes with a vxlan device each, made by hand as
// an administrator would, and routes the other node's pod subnet over it.
func (l *lab) setupVXLAN(ctx context.Context, nodes []vmtest.Node, pods []vmtest.Pod) error {
	for i, n := range nodes {
		peer := nodes[1-i]
		steps := [][]string{
			{"ip", "link", "add", "kvx42", "type", "vxlan", "id", "42", "local", n.UnderlayIP.String(),
				"remote", peer.UnderlayIP.String(), "dstport", "4789", "dev", "eth0"},
			{"ip", "link", "set", "kvx42", "mtu", "1450", "up"},
			{"ip", "addr", "add", fmt.Sprintf("10.250.0.%d/24", i+1), "dev", "kvx42"},
			{"ip", "route", "replace", peer.Subnet.String(), "via", fmt.Sprintf("10.250.0.%d", 2-i), "dev", "kvx42"},
		}
		for _, s := range steps {
			if out, err := l.c.Exec(ctx, n.NetNS, s...); err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
		}
	}
	return setPodMTU(ctx, pods, 1450)
}

// setPodMTU sets the MTU of the pods' eth0 (the CNI plugin used the
// alloc backend's 1500).
func setPodMTU(ctx context.Context, pods []vmtest.Pod, mtu int) error {
	for _, p := range pods {
		if out, err := exec.CommandContext(ctx, "ip", "-n", p.NetNS, "link", "set", "eth0", "mtu", strconv.Itoa(mtu)).CombinedOutput(); err != nil {
			return fmt.Errorf("set MTU of %s: %w: %s", p.NetNS, err, out)
		}
	}
	return nil
}

// startServer starts iperf3's server in the far namespace.
func (l *lab) startServer() error {
	cmd := exec.Command("ip", "netns", "exec", l.to, "iperf3", "-s", "-p", "5201")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start iperf3 server in %s: %w", l.to, err)
	}
	l.server = cmd
	// Wait until it listens.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ := exec.Command("ip", "netns", "exec", l.to, "ss", "-ltn", "sport", "= :5201").Output()
		if strings.Contains(string(out), "5201") {
			return nil
		}
	}
	return fmt.Errorf("iperf3 server in %s does not listen", l.to)
}

func (l *lab) down(log *slog.Logger) {
	if l.server != nil && l.server.Process != nil {
		_ = l.server.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = l.server.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = l.server.Process.Kill()
			<-done
		}
	}
	if l.ref != nil {
		l.ref.close()
	}
	if err := vmtest.Down(context.Background(), l.c.Name()); err != nil {
		log.Warn("take lab down", "lab", l.c.Name(), "err", err)
	}
}

// measure runs one round of every measurement on the lab.
func (l *lab) measure(ctx context.Context, p *Path, d time.Duration) error {
	var errs []error
	cpu0 := l.cpuSeconds()
	res, err := l.iperf(ctx, d, "-C", "cubic")
	cpu1 := l.cpuSeconds()
	if err == nil {
		p.add(TCP1, res.End.SumReceived.BitsPerSecond/1e9)
		if (l.self || len(l.cpuPIDs) > 0) && res.End.SumReceived.Bytes > 0 {
			p.add(CPUPerGB, (cpu1-cpu0)/(res.End.SumReceived.Bytes/1e9))
		}
	}
	errs = append(errs, err)
	res, err = l.iperf(ctx, d, "-C", "cubic", "-P", "4")
	if err == nil {
		p.add(TCP4, res.End.SumReceived.BitsPerSecond/1e9)
	}
	errs = append(errs, err)
	avg, p99, err := l.ping(ctx)
	if err == nil {
		p.add(PingAvg, avg)
		p.add(PingP99, p99)
	}
	errs = append(errs, err)
	for _, size := range []int{64, 1400} {
		res, err := l.iperf(ctx, d, "-u", "-b", "0", "-l", strconv.Itoa(size))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s := res.End.Sum
		pps := 0.0
		if s.Seconds > 0 {
			pps = float64(s.Packets-s.LostPackets) / s.Seconds
		}
		metric := UDP64
		if size == 1400 {
			metric = UDP1400
		}
		p.add(metric, pps/1e3)
	}
	return errors.Join(errs...)
}

// iperfResult is the part of iperf3's JSON the bench reads.
type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct {
			Seconds     float64 `json:"seconds"`
			Packets     int64   `json:"packets"`
			LostPackets int64   `json:"lost_packets"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

func (l *lab) iperf(ctx context.Context, d time.Duration, args ...string) (*iperfResult, error) {
	secs := strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
	argv := append([]string{"netns", "exec", l.from, "iperf3", "-c", l.dst, "-p", "5201", "-J", "-t", secs}, args...)
	var res iperfResult
	var out []byte
	var err error
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
		out, err = exec.CommandContext(cctx, "ip", argv...).Output()
		cancel()
		res = iperfResult{}
		jerr := json.Unmarshal(out, &res)
		if err == nil && jerr == nil && res.Error == "" {
			return &res, nil
		}
		// "the server is busy running a test" (it has not yet noticed the
		// last client left), a control connection reset under load: try
		// again.
		if ctx.Err() != nil {
			break
		}
		time.Sleep(time.Second)
	}
	return nil, fmt.Errorf("iperf3 %s from %s: %v %s", strings.Join(args, " "), l.from, err, res.Error)
}

var rttRE = regexp.MustCompile(`time=([0-9.]+) ms`)

// ping sends 200 pings 10 ms apart and returns the mean and 99th
// percentile round trip in ms.
func (l *lab) ping(ctx context.Context) (avg, p99 float64, err error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", l.from, "ping", "-n", "-c", "200", "-i", "0.01", "-W", "1", l.dst).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ping %s from %s: %w", l.dst, l.from, err)
	}
	var rtts []float64
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := rttRE.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			rtts = append(rtts, v)
		}
	}
	if len(rtts) == 0 {
		return 0, 0, fmt.Errorf("ping %s from %s: no replies", l.dst, l.from)
	}
	sum := 0.0
	for _, v := range rtts {
		sum += v
	}
	return sum / float64(len(rtts)), percentile(rtts, 99), nil
}

// cpuSeconds is the user+system CPU time of the path's processes.
func (l *lab) cpuSeconds() float64 {
	if l.self {
		return procCPU("self")
	}
	t := 0.0
	for _, pid := range l.cpuPIDs {
		t += procCPU(strconv.Itoa(pid))
	}
	return t
}

// procCPU reads utime+stime of /proc/PID/stat in seconds (NaN if it cannot).
func procCPU(pid string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return math.NaN()
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return math.NaN()
	}
	f := strings.Fields(s[i+1:])
	// After the command: state is field 3; utime 14 and stime 15.
	if len(f) < 13 {
		return math.NaN()
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return math.NaN()
	}
	return (ut + st) / 100 // USER_HZ
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var sb strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		m.Kernel = sb.String()
	}
	return m
}
