package scenarios

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/subnetfile"
	"github.com/twillnet/twill/vmtest"
)

var readSubnetFile = subnetfile.Read

// pingOnce sends one echo request from a pod's namespace.
func (p *play) pingOnce(ctx context.Context, netns string, dst netip.Addr, extra ...string) (string, error) {
	argv := append([]string{"ping", "-n", "-c", "1", "-W", "1"}, extra...)
	argv = append(argv, dst.String())
	out, err := p.c.Exec(ctx, netns, argv...)
	return string(out), err
}

// pingAll checks that every live pod reaches every other live pod in each
// of the families, and reports the matrices.
func (p *play) pingAll(ctx context.Context, within time.Duration, families []string) (string, map[string]any, error) {
	pods := p.livePods()
	if len(pods) < 2 {
		return "", nil, fmt.Errorf("ping-all needs at least 2 pods on running nodes, have %d", len(pods))
	}
	var details []string
	data := map[string]any{}
	var errs []error
	for _, f := range families {
		detail, d, err := p.pingMatrix(ctx, within, pods, f)
		if len(families) > 1 {
			detail = f + ":\n" + detail
		}
		details = append(details, detail)
		for k, v := range d {
			if len(families) > 1 {
				k = f + "_" + k
			}
			data[k] = v
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
		}
	}
	return strings.Join(details, ""), data, errors.Join(errs...)
}

// pingMatrix pings from every pod to every other in one family.
func (p *play) pingMatrix(ctx context.Context, within time.Duration, pods []vmtest.Pod, family string) (string, map[string]any, error) {
	n := len(pods)
	ok := make([][]bool, n)
	lastOut := make([][]string, n)
	for i := range ok {
		ok[i] = make([]bool, n)
		lastOut[i] = make([]string, n)
	}
	var mu sync.Mutex
	parallel(8, n*n, func(k int) {
		i, j := k/n, k%n
		if i == j {
			return
		}
		out, err := retry(ctx, within, func() (string, error) {
			return p.pingOnce(ctx, pods[i].NetNS, addrIn(pods[j], family))
		})
		mu.Lock()
		ok[i][j], lastOut[i][j] = err == nil, out
		mu.Unlock()
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s", "from\\to")
	for _, q := range pods {
		fmt.Fprintf(&b, " %-7s", q.Name)
	}
	b.WriteString("\n")
	var failed []string
	for i := range pods {
		fmt.Fprintf(&b, "%-8s", pods[i].Name)
		for j := range pods {
			cell := "ok"
			switch {
			case i == j:
				cell = "-"
			case !ok[i][j]:
				cell = "FAIL"
				failed = append(failed, fmt.Sprintf("%s (%s) -> %s (%s): %s", pods[i].Name, addrIn(pods[i], family), pods[j].Name, addrIn(pods[j], family), lastLine(lastOut[i][j])))
			}
			fmt.Fprintf(&b, " %-7s", cell)
		}
		b.WriteString("\n")
	}
	data := map[string]any{"pods": len(pods), "pairs": n * (n - 1), "failed": len(failed)}
	if len(failed) > 0 {
		return b.String(), data, fmt.Errorf("%d of %d pod pairs cannot reach each other: %s", len(failed), n*(n-1), strings.Join(failed, "; "))
	}
	return b.String(), data, nil
}

// refusal picks the line of ping's output that says why a packet was
// refused.
func refusal(out string) string {
	for _, l := range strings.Split(out, "\n") {
		low := strings.ToLower(l)
		if strings.Contains(low, "too long") || strings.Contains(low, "frag") {
			return strings.TrimSpace(l)
		}
	}
	return lastLine(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return "(no output)"
}

func (p *play) ping(ctx context.Context, from, to string, wantOK bool, within time.Duration, family string) (string, map[string]any, error) {
	src, dst, err := p.podPair(from, to)
	if err != nil {
		return "", nil, err
	}
	out, err := retry(ctx, within, func() (string, error) {
		out, err := p.pingOnce(ctx, src.NetNS, addrIn(dst, family))
		if (err == nil) != wantOK {
			if wantOK {
				return out, fmt.Errorf("%s cannot reach %s: %s", from, to, lastLine(out))
			}
			return out, fmt.Errorf("%s still reaches %s", from, to)
		}
		return out, nil
	})
	return lastLine(out), nil, err
}

// podPair looks up the two pods of a check.
func (p *play) podPair(from, to string) (src, dst vmtest.Pod, err error) {
	if src, err = p.pod(from); err != nil {
		return src, dst, err
	}
	dst, err = p.pod(to)
	return src, dst, err
}

// nettest runs a server in one namespace and a sender in another and
// compares what was sent with what arrived.
type nettestResult struct {
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256"`
	Peer    string  `json:"peer"`
	Seconds float64 `json:"seconds"`
	Mbps    float64 `json:"mbps"`
}

func parseNettest(out []byte) (nettestResult, error) {
	var r nettestResult
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, fmt.Errorf("nettest printed no result: %s", lastLine(string(out)))
	}
	return r, nil
}

func (p *play) transfer(ctx context.Context, fromNS, toNS string, to netip.Addr, size int64, within time.Duration) (sent, got nettestResult, err error) {
	twillctl, _ := filepath.Abs(filepath.Join(p.bin, "twillctl"))
	timeout := within + time.Duration(size/(1<<20))*time.Second // at least 1 MiB/s
	addr := netip.AddrPortFrom(to, 5201).String()
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var srvOut []byte
	var srvErr error
	wg.Go(func() {
		srvOut, srvErr = p.c.Exec(ctx, toNS, twillctl, "nettest", "serve", "--listen", addr, "--timeout", timeout.String())
	})
	time.Sleep(200 * time.Millisecond)
	sndOut, sndErr := p.c.Exec(ctx, fromNS, twillctl, "nettest", "send", "--to", addr, "--size", fmt.Sprint(size), "--timeout", timeout.String())
	if sndErr != nil {
		cancel()
	}
	wg.Wait()
	if sndErr != nil {
		return sent, got, fmt.Errorf("send to %s: %v: %s", addr, sndErr, lastLine(string(sndOut)))
	}
	if srvErr != nil {
		return sent, got, fmt.Errorf("receive at %s: %v: %s", addr, srvErr, lastLine(string(srvOut)))
	}
	if sent, err = parseNettest(sndOut); err != nil {
		return sent, got, err
	}
	if got, err = parseNettest(srvOut); err != nil {
		return sent, got, err
	}
	return sent, got, nil
}

func (p *play) tcp(ctx context.Context, from, to string, size int64, within time.Duration, family string) (string, map[string]any, error) {
	src, dst, err := p.podPair(from, to)
	if err != nil {
		return "", nil, err
	}
	sent, got, err := p.transfer(ctx, src.NetNS, dst.NetNS, addrIn(dst, family), size, within)
	if err != nil {
		return "", nil, err
	}
	detail := fmt.Sprintf("sent %d bytes sha256 %.16s…, received %d bytes sha256 %.16s…, %.0f Mbit/s",
		sent.Bytes, sent.SHA256, got.Bytes, got.SHA256, sent.Mbps)
	data := map[string]any{"bytes": got.Bytes, "mbps": sent.Mbps, "sha256": got.SHA256}
	if sent.Bytes != size || got.Bytes != size || sent.SHA256 != got.SHA256 {
		return detail, data, fmt.Errorf("the transfer from %s to %s did not arrive intact: sent %d bytes (%s), received %d bytes (%s)",
			from, to, sent.Bytes, sent.SHA256, got.Bytes, got.SHA256)
	}
	// Inside the cluster network nothing is masqueraded.
	if got.Peer != addrIn(src, family).String() {
		return detail, data, fmt.Errorf("%s saw the transfer come from %s, not from %s's own address %s", to, got.Peer, from, addrIn(src, family))
	}
	return detail, data, nil
}

// mtu checks that a DF packet of exactly the pod MTU passes and one byte
// more is refused. With pathMTU set (smaller than the source pod's MTU: a
// hop with a smaller one), a packet of pathMTU passes and one byte more
// is refused on the way ("fragmentation needed", and that path MTU).
func (p *play) mtu(ctx context.Context, from, to string, pathMTU int, within time.Duration, family string) (string, map[string]any, error) {
	src, dst, err := p.podPair(from, to)
	if err != nil {
		return "", nil, err
	}
	node, err := p.c.Node(src.Node)
	if err != nil {
		return "", nil, err
	}
	f, err := readSubnetFile(node.SubnetFile)
	if err != nil {
		return "", nil, err
	}
	mtu := f.MTU
	if pathMTU > 0 {
		if pathMTU >= f.MTU {
			return "", nil, fmt.Errorf("mtu.path-mtu %d: not under %s's pod MTU %d", pathMTU, from, f.MTU)
		}
		mtu = pathMTU
	}
	payload := mtu - ipHeader(family)
	dstAddr := addrIn(dst, family)
	out, err := retry(ctx, within, func() (string, error) {
		out, err := p.pingOnce(ctx, src.NetNS, dstAddr, "-M", "do", "-s", fmt.Sprint(payload))
		if err != nil {
			return out, fmt.Errorf("a %d-byte packet (the path MTU) with DF set from %s to %s did not pass: %s", mtu, from, to, lastLine(out))
		}
		return out, nil
	})
	if err != nil {
		return lastLine(out), nil, err
	}
	big, err := p.pingOnce(ctx, src.NetNS, dstAddr, "-M", "do", "-s", fmt.Sprint(payload+1))
	detail := fmt.Sprintf("%d bytes with DF: passed; %d bytes: %s", mtu, mtu+1, refusal(big))
	data := map[string]any{"mtu": mtu, "family": family}
	if err == nil {
		return detail, data, fmt.Errorf("a %d-byte packet with DF set passed, but the path MTU is %d", mtu+1, mtu)
	}
	if pathMTU > 0 && !strings.Contains(big, fmt.Sprint(pathMTU)) {
		return detail, data, fmt.Errorf("a %d-byte packet with DF set was refused, but not with the path MTU %d: %s", mtu+1, pathMTU, refusal(big))
	}
	low := strings.ToLower(big)
	if !strings.Contains(low, "message too long") && !strings.Contains(low, "frag") {
		return detail, data, fmt.Errorf("a %d-byte packet with DF set failed, but not with \"fragmentation needed\" or \"message too long\": %s", f.MTU+1, lastLine(big))
	}
	return detail, data, nil
}

// outside checks that a pod reaches a host outside the cluster, masqueraded
// to its node's address.
func (p *play) outside(ctx context.Context, from string, within time.Duration, family string) (string, map[string]any, error) {
	src, err := p.pod(from)
	if err != nil {
		return "", nil, err
	}
	ns, addr, ok := p.c.Outside()
	if !ok {
		return "", nil, p.noOutside()
	}
	if family == ipv6 {
		o, can := p.c.(outside6)
		if !can {
			return "", nil, fmt.Errorf("outside over IPv6: %w by this cluster", errors.ErrUnsupported)
		}
		if addr, ok = o.Outside6(); !ok {
			return "", nil, errors.New("the cluster's outside host has no IPv6 address")
		}
	}
	node, err := p.c.Node(src.Node)
	if err != nil {
		return "", nil, err
	}
	var got nettestResult
	_, err = retry(ctx, within, func() (string, error) {
		_, g, err := p.transfer(ctx, src.NetNS, ns, addr, 1<<20, 10*time.Second)
		got = g
		return "", err
	})
	if err != nil {
		return "", nil, fmt.Errorf("%s cannot reach the outside host %s: %w", from, addr, err)
	}
	detail := fmt.Sprintf("%s (%s) reached %s; the outside host saw the source %s", from, addrIn(src, family), addr, got.Peer)
	data := map[string]any{"source": got.Peer}
	want := nodeAddrIn(node, family).String()
	if p.s.Cluster.IPMasq && got.Peer != want {
		return detail, data, fmt.Errorf("traffic from %s was not masqueraded: the outside saw %s, want the node's address %s", from, got.Peer, want)
	}
	return detail, data, nil
}

// noOutside says why a step that needs the outside host cannot run: the
// scenario did not ask for one, or the cluster has none to offer.
func (p *play) noOutside() error {
	if p.s.Cluster.Outside {
		return fmt.Errorf("outside: %w by this cluster (it has no host outside the cluster)", errors.ErrUnsupported)
	}
	return errors.New("the cluster has no outside host: set cluster.outside: true")
}

// lease checks whether a node holds a lease.
func (p *play) lease(ctx context.Context, nodeName string, holds bool, within time.Duration) (string, map[string]any, error) {
	node, err := p.c.Node(nodeName)
	if err != nil {
		return "", nil, err
	}
	detail, err := retry(ctx, within, func() (string, error) {
		ls, err := p.leases(ctx)
		if err != nil {
			return "", fmt.Errorf("list leases: %w", err)
		}
		var held []string
		for _, l := range ls {
			if l.Attrs.PublicIP == node.UnderlayIP {
				held = append(held, l.Subnet.String())
			}
		}
		switch {
		case holds && len(held) == 0:
			return "", fmt.Errorf("%s (%s) holds no lease; leases: %s", nodeName, node.UnderlayIP, describeLeases(ls))
		case !holds && len(held) > 0:
			return "", fmt.Errorf("%s (%s) still holds %s", nodeName, node.UnderlayIP, strings.Join(held, ", "))
		case holds:
			return fmt.Sprintf("%s holds %s", nodeName, strings.Join(held, ", ")), nil
		}
		return fmt.Sprintf("%s holds no lease", nodeName), nil
	})
	return detail, nil, err
}

func describeLeases(ls []lease.Lease) string {
	var parts []string
	for _, l := range ls {
		parts = append(parts, fmt.Sprintf("%s=%s", l.Subnet, l.Attrs.PublicIP))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// kernelRoutes lists twill's IPv4 routes (protocol 126) in a node's
// namespace.
func (p *play) kernelRoutes(ctx context.Context, netns string) ([]string, error) {
	return p.kernelRoutesIn(ctx, netns, ipv4)
}

// kernelRoutesIn lists twill's routes of a family in a node's namespace.
func (p *play) kernelRoutesIn(ctx context.Context, netns, family string) ([]string, error) {
	argv := []string{"ip", "-j", "route", "show", "proto", "126"}
	host := "/32"
	if family == ipv6 {
		argv, host = append([]string{"ip", "-6"}, argv[1:]...), "/128"
	}
	out, err := p.c.Exec(ctx, netns, argv...)
	if err != nil {
		return nil, fmt.Errorf("ip route in %s: %v: %s", netns, err, lastLine(string(out)))
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("read ip -j route output in %s: %w", netns, err)
	}
	var dsts []string
	for _, r := range routes {
		dst := r.Dst
		if !strings.Contains(dst, "/") {
			dst += host
		}
		dsts = append(dsts, dst)
	}
	slices.Sort(dsts)
	return dsts, nil
}

// wantRoutes6 is the set of twill's IPv6 routes a node with the IPv6
// subnet own should hold, given the leases (vxlan, host-gw: one per peer's
// IPv6 subnet).
func (p *play) wantRoutes6(own netip.Prefix, ls []lease.Lease) []string {
	var want []string
	if p.conf == nil || !own.IsValid() {
		return nil
	}
	for _, l := range routableLeasesOf(ls, p.conf.IPv6Network, own, func(l lease.Lease) netip.Prefix { return l.IPv6Subnet }) {
		want = append(want, l.IPv6Subnet.String())
	}
	slices.Sort(want)
	return want
}

// wantRoutes is the set of twill routes a node should hold, given the leases.
func (p *play) wantRoutes(own netip.Prefix, ls []lease.Lease) []string {
	var want []string
	switch p.backend {
	case "udp":
		if p.network.IsValid() {
			want = []string{p.network.String()}
		}
	case "ipvlan", "bgp", "vxlan", "host-gw", "ipip", "wireguard":
		// ipvlan's routed modes route peers' slices as host-gw does; l2
		// routes nothing.
		if p.backend == "ipvlan" && p.mode != "l3" && p.mode != "l3s" {
			break
		}
		if p.backend == "bgp" {
			// The learned routes, and the blackhole for the own subnet.
			want = append(want, own.String())
		}
		for _, l := range routableLeases(ls, p.network, own) {
			// A stopped node's routes are withdrawn over BGP; its lease
			// stays.
			if p.backend == "bgp" && p.downAt(l.Attrs.PublicIP) {
				continue
			}
			want = append(want, l.Subnet.String())
		}
	}
	slices.Sort(want)
	return want
}

// downAt says whether the node with underlay address ip is stopped.
func (p *play) downAt(ip netip.Addr) bool {
	for _, n := range p.c.Nodes() {
		if n.UnderlayIP == ip {
			return p.down[n.Name]
		}
	}
	return false
}

// routableLeases are the peers' leases a node with subnet own routes to,
// by the rules a twill node follows, written out here again so that the
// check does not take the plan's word for them: a lease of another prefix
// length than the network's SubnetLen (every node's subnet has that
// length, own too), outside the network, or overlapping own is refused,
// and of overlapping leases the oldest (lowest etcd create revision) is
// kept.
func routableLeases(ls []lease.Lease, network, own netip.Prefix) []lease.Lease {
	return routableLeasesOf(ls, network, own, func(l lease.Lease) netip.Prefix { return l.Subnet })
}

// routableLeasesOf is routableLeases for the subnets of one family: those
// subnet gives of each lease (a lease without one is no peer in it).
func routableLeasesOf(ls []lease.Lease, network, own netip.Prefix, subnet func(lease.Lease) netip.Prefix) []lease.Lease {
	age := func(l lease.Lease) int64 { return cmp.Or(l.Created, l.Revision) }
	sorted := slices.Clone(ls)
	slices.SortStableFunc(sorted, func(a, b lease.Lease) int {
		return cmp.Or(cmp.Compare(age(a), age(b)), cmp.Compare(a.Revision, b.Revision))
	})
	var kept []lease.Lease
	for _, l := range sorted {
		switch {
		case subnet(l) == own, !subnet(l).IsValid():
		case own.IsValid() && subnet(l).Bits() != own.Bits():
		case network.IsValid() && !(network.Contains(subnet(l).Addr()) && subnet(l).Bits() >= network.Bits()):
		case subnet(l).Overlaps(own):
		case slices.ContainsFunc(kept, func(k lease.Lease) bool { return subnet(k).Overlaps(subnet(l)) }):
		default:
			kept = append(kept, l)
		}
	}
	return kept
}

// routes checks that every running node's kernel routes match the leases.
func (p *play) routes(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	detail, err := retry(ctx, within, func() (string, error) {
		ls, err := p.leases(ctx)
		if err != nil {
			return "", fmt.Errorf("list leases: %w", err)
		}
		var b strings.Builder
		var bad []string
		for _, n := range p.c.Nodes() {
			if p.down[n.Name] {
				continue
			}
			have, err := p.routesOf(ctx, n, ipv4)
			if err != nil {
				return "", err
			}
			want := p.wantRoutes(n.Subnet, ls)
			if p.flannelNode(n.Name) && p.backend == netconf.TypeWireGuard && p.network.IsValid() {
				// flannel routes the whole network to flannel-wg and leaves
				// the choice of peer to WireGuard's allowed IPs.
				want = []string{p.network.String()}
			}
			subnet := "no IPv4 subnet"
			if n.Subnet.IsValid() {
				subnet = n.Subnet.String()
			}
			fmt.Fprintf(&b, "%s (%s): %s", n.Name, subnet, plural.Count(len(have), "route"))
			if !slices.Equal(have, want) {
				bad = append(bad, fmt.Sprintf("%s has %v, want %v", n.Name, have, want))
			}
			if slices.Contains(p.s.Cluster.families(), ipv6) {
				d, problems, err := p.routes6(ctx, n, ls)
				if err != nil {
					return "", err
				}
				b.WriteString("; " + d)
				bad = append(bad, problems...)
			}
			if p.flannelNode(n.Name) && p.backend == "vxlan" {
				d, problems, err := p.flannelFDB(ctx, n, ls)
				if err != nil {
					return "", err
				}
				b.WriteString("; " + d)
				bad = append(bad, problems...)
			}
			b.WriteString("\n")
		}
		if len(bad) > 0 {
			return b.String(), fmt.Errorf("kernel routes do not match the leases: %s", strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}

// routes6 checks a node's IPv6 routes against the leases and, on vxlan
// with an IPv6 underlay, its permanent IPv6 neighbours on twill-v6.1: one
// per peer's IPv6 subnet, at the subnet's address. It says what it saw and
// what does not match.
func (p *play) routes6(ctx context.Context, n vmtest.Node, ls []lease.Lease) (string, []string, error) {
	have, err := p.routesOf(ctx, n, ipv6)
	if err != nil {
		return "", nil, err
	}
	want := p.wantRoutes6(n.Subnet6, ls)
	var bad []string
	if !slices.Equal(have, want) {
		bad = append(bad, fmt.Sprintf("%s has IPv6 routes %v, want %v", n.Name, have, want))
	}
	detail := fmt.Sprintf("%s: %s", n.Subnet6, plural.Count(len(have), "IPv6 route"))
	if p.backend != "vxlan" || !n.UnderlayIP6.IsValid() {
		return detail, bad, nil
	}
	dev := p.vxlanDevice(n.Name, ipv6)
	out, err := p.c.Exec(ctx, n.NetNS, "ip", "-6", "-j", "neigh", "show", "nud", "permanent", "dev", dev)
	if err != nil {
		return "", nil, fmt.Errorf("ip -6 neigh in %s: %v: %s", n.NetNS, err, lastLine(string(out)))
	}
	var neighs []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &neighs); err != nil {
		return "", nil, fmt.Errorf("read ip -j neigh output in %s: %w", n.NetNS, err)
	}
	var haveN, wantN []string
	for _, ne := range neighs {
		haveN = append(haveN, ne.Dst)
	}
	for _, w := range want {
		wantN = append(wantN, netip.MustParsePrefix(w).Addr().String())
	}
	slices.Sort(haveN)
	slices.Sort(wantN)
	if !slices.Equal(haveN, wantN) {
		bad = append(bad, fmt.Sprintf("%s has permanent IPv6 neighbours %v on %s, want %v", n.Name, haveN, dev, wantN))
	}
	return detail + ", " + plural.Count(len(haveN), "IPv6 neighbour"), bad, nil
}

// hostToPods checks that every running node reaches each of its own pods
// from its own namespace. With the sublink backends this is what
// twill.host is for: the kernel does not pass traffic between a macvlan or
// ipvlan parent and its children.
func (p *play) hostToPods(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	var b strings.Builder
	var failed []string
	count := 0
	for _, n := range p.c.Nodes() {
		if p.down[n.Name] {
			continue
		}
		for _, pod := range p.livePods() {
			if pod.Node != n.Name {
				continue
			}
			count++
			out, err := retry(ctx, within, func() (string, error) {
				return p.pingOnce(ctx, n.NetNS, pod.Addr)
			})
			cell := "ok"
			if err != nil {
				cell = "FAIL"
				failed = append(failed, fmt.Sprintf("%s -> %s (%s): %s", n.Name, pod.Name, pod.Addr, lastLine(out)))
			}
			fmt.Fprintf(&b, "%s -> %s (%s): %s\n", n.Name, pod.Name, pod.Addr, cell)
		}
	}
	data := map[string]any{"pairs": count, "failed": len(failed)}
	if count == 0 {
		return "", data, errors.New("host-to-pods needs pods on running nodes")
	}
	if len(failed) > 0 {
		return b.String(), data, fmt.Errorf("own pods unreachable from their node on %d of %s: %s", len(failed), plural.Count(count, "node"), strings.Join(failed, "; "))
	}
	return b.String(), data, nil
}

// outsideToPod checks that the host outside the cluster opens a TCP
// connection straight to a pod's address, and that the pod sees the
// outside's own address (no NAT on the way in).
func (p *play) outsideToPod(ctx context.Context, to string, within time.Duration) (string, map[string]any, error) {
	dst, err := p.pod(to)
	if err != nil {
		return "", nil, err
	}
	ns, addr, ok := p.c.Outside()
	if !ok {
		return "", nil, p.noOutside()
	}
	var got nettestResult
	_, err = retry(ctx, within, func() (string, error) {
		_, g, err := p.transfer(ctx, ns, dst.NetNS, dst.Addr, 1<<20, 10*time.Second)
		got = g
		return "", err
	})
	if err != nil {
		return "", nil, fmt.Errorf("the outside host %s cannot reach %s at %s: %w", addr, to, dst.Addr, err)
	}
	detail := fmt.Sprintf("the outside host %s reached %s (%s); the pod saw the source %s", addr, to, dst.Addr, got.Peer)
	data := map[string]any{"source": got.Peer}
	if got.Peer != addr.String() {
		return detail, data, fmt.Errorf("%s saw the connection come from %s, not from the outside host's own address %s (translated on the way)", to, got.Peer, addr)
	}
	return detail, data, nil
}
