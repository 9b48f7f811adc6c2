package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/vmtest"
	"github.com/twillnet/twill/web/api"
)

// reflectors are the nodes whose lease says they reflect routes (the bgp
// backend's BackendData, {"RouteReflector": "<cluster ID>"}), by their
// underlay address; read here from the wire format, not from the backend.
func reflectors(ls []lease.Lease) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, l := range ls {
		var d struct{ RouteReflector string }
		if json.Unmarshal(l.Attrs.BackendData, &d) == nil && d.RouteReflector != "" {
			out[l.Attrs.PublicIP] = true
		}
	}
	return out
}

// bgpSessions checks every running node's BGP sessions, asking its
// dashboard with twillctl bgp: with the node-to-node mesh, an established
// session with each other running node, unless route reflectors are in
// the leases: then a reflector has one with every running node and a
// client with every running reflector and with no other client. In a lab
// with a router (vmtest.Fabric), every node also has an established
// external session with it.
func (p *play) bgpSessions(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	twillctl, _ := filepath.Abs(filepath.Join(p.bin, "twillctl"))
	mesh := p.conf == nil || p.conf.Backend.BGP == nil || p.conf.Backend.BGP.NodeMesh
	_, routed := p.fabricIf()
	detail, err := retry(ctx, within, func() (string, error) {
		ls, err := p.leases(ctx)
		if err != nil {
			return "", fmt.Errorf("list leases: %w", err)
		}
		rr := reflectors(ls)
		var b strings.Builder
		var bad []string
		nodes := p.c.Nodes()
		for _, n := range nodes {
			if p.down[n.Name] {
				continue
			}
			out, err := p.c.Exec(ctx, n.NetNS, twillctl, "bgp", "--node", n.DashboardURL, "-o", "json")
			if err != nil {
				return "", fmt.Errorf("twillctl bgp on %s: %v: %s", n.Name, err, lastLine(string(out)))
			}
			var bs api.BGPSessions
			if err := json.Unmarshal(out, &bs); err != nil {
				return "", fmt.Errorf("twillctl bgp on %s: %w", n.Name, err)
			}
			up, has := map[string]bool{}, map[string]bool{}
			external := 0
			var kinds []string
			for _, s := range bs.Sessions {
				has[s.Peer] = true
				if s.State == "Established" {
					up[s.Peer] = true
					if s.Type == "external" {
						external++
					}
				}
				kinds = append(kinds, fmt.Sprintf("%s AS %d %s %s", s.Peer, s.ASN, s.Type, s.State))
			}
			fmt.Fprintf(&b, "%s: %s\n", n.Name, strings.Join(kinds, ", "))
			for _, m := range nodes {
				ip := m.UnderlayIP
				want := mesh && m.Name != n.Name && (len(rr) == 0 || rr[n.UnderlayIP] || rr[ip])
				switch {
				case want && !p.down[m.Name] && !up[ip.String()]:
					bad = append(bad, fmt.Sprintf("%s has no established session with %s (%s)", n.Name, m.Name, ip))
				case !want && has[ip.String()]:
					bad = append(bad, fmt.Sprintf("%s has a session with %s (%s), which it should not (mesh %v, reflectors %v)", n.Name, m.Name, ip, mesh, slices.Collect(maps.Keys(rr))))
				}
			}
			if routed && external == 0 {
				bad = append(bad, fmt.Sprintf("%s has no established session with the router", n.Name))
			}
		}
		if len(bad) > 0 {
			return b.String(), fmt.Errorf("bgp sessions not as they should be: %s", strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}

// fabricIf is the cluster's router, if it runs one.
func (p *play) fabricIf() (vmtest.Fabric, bool) {
	f, ok := p.c.(vmtest.Fabric)
	return f, ok && f.RouterNetNS() != ""
}

func (p *play) fabric() (vmtest.Fabric, error) {
	f, ok := p.fabricIf()
	if !ok {
		return nil, fmt.Errorf("%w: the cluster has no router of the lab's (cluster.routed.router)", errors.ErrUnsupported)
	}
	return f, nil
}

// routerRoutes checks the lab's router: its sessions with every running
// node are established (birdc show protocols, vtysh show bgp summary),
// and its kernel routes every running node's subnet to that node.
func (p *play) routerRoutes(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	f, err := p.fabric()
	if err != nil {
		return "", nil, err
	}
	var table string
	detail, err := retry(ctx, within, func() (string, error) {
		up, tbl, err := f.RouterSessions(ctx)
		table = tbl
		if err != nil {
			return "", err
		}
		out, err := p.c.Exec(ctx, f.RouterNetNS(), "ip", "-j", "route", "show")
		if err != nil {
			return "", fmt.Errorf("ip route on the router: %v: %s", err, lastLine(string(out)))
		}
		var routes []struct {
			Dst     string `json:"dst"`
			Gateway string `json:"gateway"`
		}
		if err := json.Unmarshal(out, &routes); err != nil {
			return "", fmt.Errorf("read the router's routes: %w", err)
		}
		via := map[string]string{}
		for _, r := range routes {
			via[r.Dst] = r.Gateway
		}
		var b strings.Builder
		var bad []string
		for _, n := range p.c.Nodes() {
			if p.down[n.Name] {
				continue
			}
			fmt.Fprintf(&b, "%s: %s via %s\n", n.Name, n.Subnet, cmpOrString(via[n.Subnet.String()], "none"))
			if !slices.Contains(up, n.Name) {
				bad = append(bad, fmt.Sprintf("the router's session with %s is not established", n.Name))
			}
			if via[n.Subnet.String()] != n.UnderlayIP.String() {
				bad = append(bad, fmt.Sprintf("the router routes %s's subnet %s via %q, not via %s", n.Name, n.Subnet, via[n.Subnet.String()], n.UnderlayIP))
			}
		}
		if len(bad) > 0 {
			return b.String(), errors.New(strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	if err != nil {
		detail += table
	}
	return detail, nil, err
}

func cmpOrString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// restartRouter restarts the lab's router gracefully.
func (p *play) restartRouter(ctx context.Context) (string, map[string]any, error) {
	f, err := p.fabric()
	if err != nil {
		return "", nil, err
	}
	up, _, err := f.RouterSessions(ctx)
	if err != nil {
		return "", nil, err
	}
	t0 := time.Now()
	if err := f.RestartRouter(ctx); err != nil {
		return "", nil, err
	}
	took := time.Since(t0)
	// The new router has no sessions yet: the restart was real.
	after, _, _ := f.RouterSessions(ctx)
	return fmt.Sprintf("router restarted in %.2fs: %d sessions established before, %d right after", took.Seconds(), len(up), len(after)), nil, nil
}

// fallbackTunnels are the devices a tunnel module makes by itself when it
// loads (down, no address, nothing routed to them).
var fallbackTunnels = map[string]bool{"tunl0": true, "sit0": true, "gre0": true, "ip6tnl0": true}

// noTunnel checks that no running node has a tunnel device: in gateway
// BGP nothing is encapsulated. A module's own fallback device (tunl0 when
// ipip loads) does not count while it is down; any other tunnel device
// does, up or down, and so does a fallback device that is up.
func (p *play) noTunnel(ctx context.Context) (string, map[string]any, error) {
	var b strings.Builder
	var bad []string
	for _, n := range p.c.Nodes() {
		if p.down[n.Name] {
			continue
		}
		out, err := p.c.Exec(ctx, n.NetNS, "ip", "-d", "-j", "link", "show")
		if err != nil {
			return "", nil, fmt.Errorf("ip link on %s: %v: %s", n.Name, err, lastLine(string(out)))
		}
		var links []struct {
			Name     string   `json:"ifname"`
			Flags    []string `json:"flags"`
			LinkInfo struct {
				Kind string `json:"info_kind"`
			} `json:"linkinfo"`
		}
		if err := json.Unmarshal(out, &links); err != nil {
			return "", nil, fmt.Errorf("read ip -j link on %s: %w", n.Name, err)
		}
		var kinds []string
		for _, l := range links {
			up := slices.Contains(l.Flags, "UP")
			kinds = append(kinds, l.Name+"("+cmpOrString(l.LinkInfo.Kind, "-")+map[bool]string{false: ", down"}[up]+")")
			switch l.LinkInfo.Kind {
			case "ipip", "vxlan", "tun", "wireguard", "gre", "sit", "geneve":
				if up || !fallbackTunnels[l.Name] {
					bad = append(bad, fmt.Sprintf("%s has the tunnel device %s (%s)", n.Name, l.Name, l.LinkInfo.Kind))
				}
			}
		}
		fmt.Fprintf(&b, "%s: %s\n", n.Name, strings.Join(kinds, " "))
	}
	if len(bad) > 0 {
		return b.String(), nil, errors.New(strings.Join(bad, "; "))
	}
	return b.String(), nil, nil
}

// withdrawn checks that node's subnet is gone from every other running
// node's kernel and from the lab's router, if it has one, and reports how
// long after the node was stopped (stop-node, stop-daemon, kill-daemon)
// or cut off (partition) the last of them lost it.
func (p *play) withdrawn(ctx context.Context, node string, within time.Duration) (string, map[string]any, error) {
	sub, ok := p.subnets[node]
	if !ok {
		var err error
		if sub, err = p.nodeSubnet(node); err != nil {
			return "", nil, err
		}
	}
	stopped, ok := p.stopped[node]
	if !ok {
		return "", nil, fmt.Errorf("withdrawn: %s was not stopped by an earlier step", node)
	}
	f, routed := p.fabricIf()
	var last time.Duration
	detail, err := retry(ctx, within, func() (string, error) {
		var still []string
		targets := map[string]string{}
		for _, n := range p.c.Nodes() {
			if !p.down[n.Name] && n.Name != node {
				targets[n.Name] = n.NetNS
			}
		}
		if routed {
			targets["the router"] = f.RouterNetNS()
		}
		for name, ns := range targets {
			out, err := p.c.Exec(ctx, ns, "ip", "route", "show", sub.String())
			if err != nil {
				return "", fmt.Errorf("ip route on %s: %v: %s", name, err, lastLine(string(out)))
			}
			if r := strings.TrimSpace(string(out)); r != "" && !strings.HasPrefix(r, "unreachable") {
				still = append(still, fmt.Sprintf("%s: %s", name, r))
			}
		}
		last = time.Since(stopped)
		if len(still) > 0 {
			slices.Sort(still)
			return "", fmt.Errorf("%s's subnet %s is still routed: %s", node, sub, strings.Join(still, "; "))
		}
		return fmt.Sprintf("%s's subnet %s withdrawn everywhere %.1fs after it stopped", node, sub, last.Seconds()), nil
	})
	return detail, map[string]any{"seconds": last.Seconds()}, err
}

// ipipRoutes checks which device each learned route of every running
// node uses, by the network config's IPIP mode: with CrossSubnet a route
// whose next hop is on the node's own subnet (its eth0 prefix) goes
// straight over eth0, one whose next hop is in another subnet through
// twill.ipip, onlink; with Always every one goes through twill.ipip.
// CrossSubnet needs both kinds somewhere in the cluster, so that the
// check cannot pass on a cluster of one subnet.
func (p *play) ipipRoutes(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	mode := ""
	if p.conf != nil && p.conf.Backend.BGP != nil {
		mode = p.conf.Backend.BGP.IPIP
	}
	if mode != "CrossSubnet" && mode != "Always" {
		return "", nil, fmt.Errorf("ipip-routes: the network config's IPIP is %q, want CrossSubnet or Always", mode)
	}
	var direct, tunneled int
	detail, err := retry(ctx, within, func() (string, error) {
		direct, tunneled = 0, 0
		var b strings.Builder
		var bad []string
		for _, n := range p.c.Nodes() {
			if p.down[n.Name] {
				continue
			}
			seg, err := p.eth0Prefix(ctx, n)
			if err != nil {
				return "", err
			}
			out, err := p.c.Exec(ctx, n.NetNS, "ip", "-j", "route", "show", "proto", "126")
			if err != nil {
				return "", fmt.Errorf("ip route on %s: %v: %s", n.Name, err, lastLine(string(out)))
			}
			var routes []struct {
				Dst     string   `json:"dst"`
				Gateway string   `json:"gateway"`
				Dev     string   `json:"dev"`
				Type    string   `json:"type"`
				Flags   []string `json:"flags"`
			}
			if err := json.Unmarshal(out, &routes); err != nil {
				return "", fmt.Errorf("read ip -j route on %s: %w", n.Name, err)
			}
			for _, r := range routes {
				if r.Type == "blackhole" || r.Gateway == "" {
					continue
				}
				gw, err := netip.ParseAddr(r.Gateway)
				if err != nil {
					return "", fmt.Errorf("%s: route %s via %q", n.Name, r.Dst, r.Gateway)
				}
				wantTunnel := mode == "Always" || !seg.Contains(gw)
				onlink := slices.Contains(r.Flags, "onlink")
				fmt.Fprintf(&b, "%s (%s): %s via %s dev %s%s\n", n.Name, seg, r.Dst, r.Gateway, r.Dev, map[bool]string{true: " onlink"}[onlink])
				switch {
				case wantTunnel && (r.Dev != "twill.ipip" || !onlink):
					bad = append(bad, fmt.Sprintf("%s routes %s via %s (another subnet than %s) over %s, want twill.ipip onlink", n.Name, r.Dst, gw, seg, r.Dev))
				case !wantTunnel && r.Dev != "eth0":
					bad = append(bad, fmt.Sprintf("%s routes %s via %s (on its subnet %s) over %s, want eth0", n.Name, r.Dst, gw, seg, r.Dev))
				case wantTunnel:
					tunneled++
				default:
					direct++
				}
			}
		}
		if len(bad) == 0 && mode == "CrossSubnet" && (direct == 0 || tunneled == 0) {
			bad = append(bad, fmt.Sprintf("%d direct and %d tunneled routes: CrossSubnet needs nodes on one subnet and on another", direct, tunneled))
		}
		if len(bad) > 0 {
			return b.String(), errors.New(strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, map[string]any{"direct": direct, "tunneled": tunneled}, err
}

// eth0Prefix is the subnet of a node's underlay address.
func (p *play) eth0Prefix(ctx context.Context, n vmtest.Node) (netip.Prefix, error) {
	out, err := p.c.Exec(ctx, n.NetNS, "ip", "-j", "-4", "addr", "show", "dev", "eth0")
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip addr on %s: %v: %s", n.Name, err, lastLine(string(out)))
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) == 0 || len(links[0].AddrInfo) == 0 {
		return netip.Prefix{}, fmt.Errorf("%s: no address on eth0: %s", n.Name, lastLine(string(out)))
	}
	a := links[0].AddrInfo[0]
	pfx, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
	if err != nil {
		return netip.Prefix{}, err
	}
	return pfx.Masked(), nil
}
