package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/vmtest"
	"github.com/twillnet/twill/web/api"
)

// A flannel node (cluster.flannelNodes) runs flannel's own flanneld. The
// checks read its kernel as flannel leaves it: routes of the default
// protocol (flannel sets none) inside the pod networks, and on vxlan the
// devices flannel.<VNI> and flannel-v6.<VNI>.

// flannelNode says whether node runs flanneld.
func (p *play) flannelNode(node string) bool { return slices.Contains(p.s.Cluster.FlannelNodes, node) }

// flannelRoutes lists the routes flanneld added in a node's namespace in a
// family: protocol boot (netlink's default), inside the family's pod network.
func (p *play) flannelRoutes(ctx context.Context, netns, family string) ([]string, error) {
	network := p.network
	argv := []string{"ip", "-j", "route", "show", "proto", "boot"}
	if family == ipv6 {
		argv = append([]string{"ip", "-6"}, argv[1:]...)
		network = netip.Prefix{}
		if p.conf != nil {
			network = p.conf.IPv6Network
		}
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
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil || !network.IsValid() || !network.Overlaps(dst) {
			continue // the default route, a host route, another network
		}
		dsts = append(dsts, dst.String())
	}
	slices.Sort(dsts)
	return dsts, nil
}

// routesOf lists a node's overlay routes in a family: twill's (protocol
// 126) on a twill node, flannel's on a flannel node.
func (p *play) routesOf(ctx context.Context, n vmtest.Node, family string) ([]string, error) {
	if p.flannelNode(n.Name) {
		return p.flannelRoutes(ctx, n.NetNS, family)
	}
	return p.kernelRoutesIn(ctx, n.NetNS, family)
}

// vxlanDevice is the name of node n's VXLAN device of a family with VNI 1.
func (p *play) vxlanDevice(n string, family string) string {
	prefix := "twill"
	if p.flannelNode(n) {
		prefix = "flannel"
	}
	if family == ipv6 {
		return prefix + "-v6.1"
	}
	return prefix + ".1"
}

// flannelFDB checks, on a flannel vxlan node, that flannel.1 (and
// flannel-v6.1 over an IPv6 underlay) forwards each routable peer's VTEP
// MAC, from the peer's lease, to the peer's public address: how flannel
// read twill's leases. It returns what it saw and what does not match.
func (p *play) flannelFDB(ctx context.Context, n vmtest.Node, ls []lease.Lease) (string, []string, error) {
	type fdb struct {
		MAC string `json:"mac"`
		Dst string `json:"dst"`
	}
	var seen, bad []string
	for _, family := range p.s.Cluster.families() {
		dev, own := p.vxlanDevice(n.Name, family), n.Subnet
		network := p.network
		sub := func(l lease.Lease) netip.Prefix { return l.Subnet }
		data := func(l lease.Lease) (json.RawMessage, netip.Addr) { return l.Attrs.BackendData, l.Attrs.PublicIP }
		if family == ipv6 {
			if !n.UnderlayIP6.IsValid() || p.conf == nil {
				continue
			}
			own, network, sub = n.Subnet6, p.conf.IPv6Network, func(l lease.Lease) netip.Prefix { return l.IPv6Subnet }
			data = func(l lease.Lease) (json.RawMessage, netip.Addr) { return l.Attrs.BackendV6Data, l.Attrs.PublicIPv6 }
		}
		out, err := p.c.Exec(ctx, n.NetNS, "bridge", "-j", "fdb", "show", "dev", dev)
		if err != nil {
			return "", nil, fmt.Errorf("bridge fdb in %s: %v: %s", n.NetNS, err, lastLine(string(out)))
		}
		var entries []fdb
		if err := json.Unmarshal(out, &entries); err != nil {
			return "", nil, fmt.Errorf("read bridge -j fdb output in %s: %w", n.NetNS, err)
		}
		var have, want []string
		for _, e := range entries {
			if e.Dst != "" {
				have = append(have, e.MAC+"->"+e.Dst)
			}
		}
		for _, l := range routableLeasesOf(ls, network, own, sub) {
			raw, dst := data(l)
			var bd struct{ VtepMAC string }
			if err := json.Unmarshal(raw, &bd); err != nil || bd.VtepMAC == "" {
				bad = append(bad, fmt.Sprintf("lease %s has no VtepMAC for %s: %s", sub(l), family, raw))
				continue
			}
			want = append(want, strings.ToLower(bd.VtepMAC)+"->"+dst.String())
		}
		slices.Sort(have)
		slices.Sort(want)
		seen = append(seen, fmt.Sprintf("%s: %s", dev, strings.Join(have, ", ")))
		if !slices.Equal(have, want) {
			bad = append(bad, fmt.Sprintf("%s has FDB %v on %s, want %v", n.Name, have, dev, want))
		}
	}
	return strings.Join(seen, "; "), bad, nil
}

// nodeLeases checks that a twill node's API (twillctl leases --node, as
// an operator reads it) lists every node of the cluster, flannel's too,
// with the subnets of its subnet file and its public address, and routes
// to each.
func (p *play) nodeLeases(ctx context.Context, node string, within time.Duration) (string, map[string]any, error) {
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	twillctl, _ := filepath.Abs(filepath.Join(p.bin, "twillctl"))
	detail, err := retry(ctx, within, func() (string, error) {
		out, err := p.c.Exec(ctx, n.NetNS, twillctl, "leases", "--node", n.DashboardURL, "-o", "json")
		if err != nil {
			return "", fmt.Errorf("twillctl leases on %s: %v: %s", node, err, lastLine(string(out)))
		}
		var ll api.LeaseList
		if err := json.Unmarshal(out, &ll); err != nil {
			return "", fmt.Errorf("read twillctl leases -o json: %w", err)
		}
		var b strings.Builder
		var missing []string
		for _, m := range p.c.Nodes() {
			i := slices.IndexFunc(ll.Leases, func(l api.Lease) bool { return l.PublicIP == m.UnderlayIP.String() })
			if i < 0 {
				missing = append(missing, fmt.Sprintf("%s (%s): no lease", m.Name, m.UnderlayIP))
				continue
			}
			l := ll.Leases[i]
			kind := "twilld"
			if p.flannelNode(m.Name) {
				kind = "flanneld"
			}
			fmt.Fprintf(&b, "%s (%s): %s %s %s", m.Name, kind, l.Subnet, l.Backend, l.PublicIP)
			if l.IPv6Subnet != "" {
				fmt.Fprintf(&b, ", %s %s", l.IPv6Subnet, l.PublicIPv6)
			}
			b.WriteString("\n")
			switch {
			case m.Subnet.IsValid() && l.Subnet != m.Subnet.String():
				missing = append(missing, fmt.Sprintf("%s: lease %s, its subnet file %s", m.Name, l.Subnet, m.Subnet))
			case m.Subnet6.IsValid() && l.IPv6Subnet != m.Subnet6.String():
				missing = append(missing, fmt.Sprintf("%s: IPv6 lease %q, its subnet file %s", m.Name, l.IPv6Subnet, m.Subnet6))
			case l.Backend != p.backend:
				missing = append(missing, fmt.Sprintf("%s: backend %q, want %q", m.Name, l.Backend, p.backend))
			case l.NotRouted != "":
				missing = append(missing, fmt.Sprintf("%s: not routed: %s", m.Name, l.NotRouted))
			}
		}
		if len(missing) > 0 {
			return b.String(), fmt.Errorf("%s's leases: %s", node, strings.Join(missing, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}
