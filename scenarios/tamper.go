package scenarios

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/internal/packet"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/vmtest"
	"github.com/twillnet/twill/web/api"
)

// Steps that play a hostile or careless actor: a lease written by hand or
// by another program, the nftables table or the backend's device deleted,
// VXLAN frames forged by a host that is no peer.

// leaseView is what a put-lease value template sees: the node's lease as
// it is in etcd now.
type leaseView struct {
	Node        string // n2
	PublicIP    string // 192.168.56.12
	Subnet      string // 10.244.7.0/24
	BackendType string // vxlan ("" in a flannel udp lease)
	VtepMAC     string // vxlan: the node's VTEP MAC
	VNI         int    // vxlan
}

// parseLeaseTemplate parses a put-lease value and executes it once on an
// empty lease, so that a field the lease does not have is refused when the
// scenario is read.
func parseLeaseTemplate(text string) (*template.Template, error) {
	t, err := template.New("value").Option("missingkey=error").Parse(text)
	if err == nil {
		err = t.Execute(io.Discard, leaseView{})
	}
	if err != nil {
		return nil, fmt.Errorf("%q: %w (fields: .Node .PublicIP .Subnet .BackendType .VtepMAC .VNI)", text, err)
	}
	return t, nil
}

// vxlanData reads the VNI and VTEP MAC of a vxlan lease's BackendData.
func vxlanData(raw json.RawMessage) (vni int, mac string) {
	var d struct {
		VNI     int
		VtepMAC string
	}
	_ = json.Unmarshal(raw, &d)
	return d.VNI, d.VtepMAC
}

// nodeLease is the lease in etcd of a node's current subnet.
func (p *play) nodeLease(ctx context.Context, node string) (lease.Lease, error) {
	sub, err := p.nodeSubnet(node)
	if err != nil {
		return lease.Lease{}, err
	}
	ls, err := p.leases(ctx)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("list leases: %w", err)
	}
	for _, l := range ls {
		if l.Subnet == sub {
			return l, nil
		}
	}
	return lease.Lease{}, fmt.Errorf("%s's subnet %s has no lease in etcd; leases: %s", node, sub, describeLeases(ls))
}

// putLease writes the bytes of st.Value under <prefix>/subnets/<key>: the
// node's own key (keeping its etcd lease, so the TTL stays), or, with
// st.Bits, the key of the prefix of that length that holds the node's
// subnet.
func (p *play) putLease(ctx context.Context, st Step) (string, map[string]any, error) {
	if p.c.EtcdEndpoint() == "" {
		return "", nil, fmt.Errorf("put-lease: %w by this cluster (its etcd is not reachable from here)", errors.ErrUnsupported)
	}
	own, err := p.nodeLease(ctx, st.Node)
	if err != nil {
		return "", nil, err
	}
	view := leaseView{Node: st.Node, PublicIP: own.Attrs.PublicIP.String(), Subnet: own.Subnet.String(), BackendType: own.Attrs.BackendType}
	view.VNI, view.VtepMAC = vxlanData(own.Attrs.BackendData)
	var value bytes.Buffer
	if err := st.value.Execute(&value, view); err != nil {
		return "", nil, fmt.Errorf("put-lease.value: %w", err)
	}
	subnet := own.Subnet
	if st.Bits != 0 {
		subnet = netip.PrefixFrom(own.Subnet.Addr(), st.Bits).Masked()
	}
	key := p.c.EtcdPrefix() + "/subnets/" + lease.SubnetKey(subnet)
	reg, err := p.registry()
	if err != nil {
		return "", nil, err
	}
	defer reg.Close()
	cli := reg.Client()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	ttl := "no TTL"
	switch {
	case st.TTL > 0:
		g, err := cli.Grant(ctx, int64(time.Duration(st.TTL).Seconds()))
		if err != nil {
			return "", nil, fmt.Errorf("grant an etcd lease of %v: %w", time.Duration(st.TTL), err)
		}
		opts, ttl = append(opts, clientv3.WithLease(g.ID)), fmt.Sprintf("a new TTL of %v", time.Duration(st.TTL))
	case subnet == own.Subnet && own.ID != 0:
		opts, ttl = append(opts, clientv3.WithLease(clientv3.LeaseID(own.ID))), fmt.Sprintf("%s's etcd lease %x", st.Node, own.ID)
	}
	resp, err := cli.Put(ctx, key, value.String(), opts...)
	if err != nil {
		return "", nil, fmt.Errorf("put %s: %w", key, err)
	}
	detail := fmt.Sprintf("%s = %s (%s, revision %d)", key, value.String(), ttl, resp.Header.Revision)
	return detail, map[string]any{"key": key, "value": value.String(), "revision": resp.Header.Revision}, nil
}

// deleteNFTTable deletes twill's nftables table on a node, as an operator
// flushing the ruleset might.
func (p *play) deleteNFTTable(ctx context.Context, node string) (string, map[string]any, error) {
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	if out, err := p.c.Exec(ctx, n.NetNS, "nft", "delete", "table", "ip", "twill"); err != nil {
		return "", nil, fmt.Errorf("nft delete table ip twill on %s: %v: %s", node, err, lastLine(string(out)))
	}
	return fmt.Sprintf("deleted the nftables table ip twill on %s", node), nil, nil
}

// nftTable checks that twill's nftables table, with its forward chain, is
// on the node (or on every running node).
func (p *play) nftTable(ctx context.Context, node string, within time.Duration) (string, map[string]any, error) {
	nodes, err := p.targetNodes(node)
	if err != nil {
		return "", nil, err
	}
	detail, err := retry(ctx, within, func() (string, error) {
		var b strings.Builder
		var bad []string
		for _, n := range nodes {
			chains, rules, err := p.nftChains(ctx, n.NetNS)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", n.Name, err))
				continue
			}
			fmt.Fprintf(&b, "%s: table ip twill, chains %s, %d rules\n", n.Name, strings.Join(chains, ", "), rules)
			if !slices.Contains(chains, "forward") {
				bad = append(bad, fmt.Sprintf("%s: table ip twill has no forward chain (chains: %v)", n.Name, chains))
			}
		}
		if len(bad) > 0 {
			return b.String(), errors.New(strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}

// nftChains lists the chains of table ip twill in a namespace and counts
// its rules.
func (p *play) nftChains(ctx context.Context, netns string) (chains []string, rules int, err error) {
	out, err := p.c.Exec(ctx, netns, "nft", "-j", "list", "table", "ip", "twill")
	if err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return nil, 0, fmt.Errorf("no table ip twill (%s)", first)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, 0, fmt.Errorf("read nft -j output: %w", err)
	}
	for _, obj := range doc.Nftables {
		if raw, ok := obj["chain"]; ok {
			var c struct{ Name string }
			if json.Unmarshal(raw, &c) == nil {
				chains = append(chains, c.Name)
			}
		}
		if _, ok := obj["rule"]; ok {
			rules++
		}
	}
	slices.Sort(chains)
	return chains, rules, nil
}

// targetNodes is the named node, or every running node when name is empty.
func (p *play) targetNodes(name string) ([]vmtest.Node, error) {
	if name != "" {
		n, err := p.c.Node(name)
		if err != nil {
			return nil, err
		}
		return []vmtest.Node{n}, nil
	}
	var out []vmtest.Node
	for _, n := range p.c.Nodes() {
		if !p.down[n.Name] {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no running node")
	}
	return out, nil
}

// device is the backend's own device on every node: twill0 (udp),
// twill.<VNI> (vxlan), twill.ipip (ipip), twill-wg (wireguard).
func (p *play) device() (string, error) {
	switch p.backend {
	case "wireguard":
		return "twill-wg", nil
	case "udp":
		return "twill0", nil
	case "vxlan":
		return "twill." + strconv.Itoa(p.vni()), nil
	case "ipip":
		return "twill.ipip", nil
	}
	return "", fmt.Errorf("the %s backend has no device of its own to delete", p.backend)
}

// vni is the cluster's VXLAN network identifier.
func (p *play) vni() int {
	if p.conf != nil && p.conf.Backend.VNI != 0 {
		return p.conf.Backend.VNI
	}
	return 1
}

// deleteDevice deletes the backend's device on a node.
func (p *play) deleteDevice(ctx context.Context, node string) (string, map[string]any, error) {
	dev, err := p.device()
	if err != nil {
		return "", nil, err
	}
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	if out, err := p.c.Exec(ctx, n.NetNS, "ip", "link", "del", "dev", dev); err != nil {
		return "", nil, fmt.Errorf("delete %s on %s: %v: %s", dev, node, err, lastLine(string(out)))
	}
	return fmt.Sprintf("deleted %s on %s", dev, node), nil, nil
}

// twillctl is the path of twillctl for Exec (every driver maps it to its
// own copy).
func (p *play) twillctl() string {
	path, _ := filepath.Abs(filepath.Join(p.bin, "twillctl"))
	return path
}

// dashboard is a node's dashboard URL.
func dashboard(n vmtest.Node) string {
	if n.DashboardURL != "" {
		return strings.TrimRight(n.DashboardURL, "/")
	}
	return "http://" + net.JoinHostPort(n.UnderlayIP.String(), strconv.Itoa(vmtest.DashboardPort))
}

// unknownPeerDrops reads a node's unknown-peer drop counter from its API,
// asked from inside the node.
func (p *play) unknownPeerDrops(ctx context.Context, n vmtest.Node) (uint64, error) {
	out, err := p.c.Exec(ctx, n.NetNS, p.twillctl(), "tunnels", "--node", dashboard(n), "-o", "json")
	if err != nil {
		return 0, fmt.Errorf("twillctl tunnels on %s: %v: %s", n.Name, err, lastLine(string(out)))
	}
	var t api.TunnelList
	if err := json.Unmarshal(out, &t); err != nil {
		return 0, fmt.Errorf("read %s's /api/v1/tunnels: %w", n.Name, err)
	}
	return t.Drops["unknown-peer"], nil
}

// udpReceived is how many UDP datagrams a namespace's stack took in
// (delivered, no port, or in error), from /proc/net/snmp.
func (p *play) udpReceived(ctx context.Context, netns string) (uint64, error) {
	out, err := p.c.Exec(ctx, netns, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, fmt.Errorf("read /proc/net/snmp in %s: %v: %s", netns, err, lastLine(string(out)))
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(line, "Udp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest)
			continue
		}
		var sum uint64
		for i, v := range strings.Fields(rest) {
			if i < len(names) && (names[i] == "InDatagrams" || names[i] == "NoPorts" || names[i] == "InErrors") {
				n, _ := strconv.ParseUint(v, 10, 64)
				sum += n
			}
		}
		return sum, nil
	}
	return 0, fmt.Errorf("no Udp counters in %s's /proc/net/snmp", netns)
}

// sendSpoofed sends count forged VXLAN datagrams from the outside host to
// node's VXLAN port, each carrying a UDP datagram to one of the node's pods
// with another node's pod as its inner source. Nothing may reach the pod,
// and the node must count each as an unknown-peer drop.
func (p *play) sendSpoofed(ctx context.Context, node string, count int) (string, map[string]any, error) {
	outside, outsideAddr, ok := p.c.Outside()
	if !ok {
		return "", nil, p.noOutside()
	}
	if p.backend != "vxlan" {
		return "", nil, fmt.Errorf("send-spoofed forges VXLAN frames; the cluster runs %s", p.backend)
	}
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	var dst, src vmtest.Pod
	for _, pod := range p.livePods() {
		switch {
		case pod.Node == node && !dst.Addr.IsValid():
			dst = pod
		case pod.Node != node && !src.Addr.IsValid():
			src = pod
		}
	}
	if !dst.Addr.IsValid() || !src.Addr.IsValid() {
		return "", nil, fmt.Errorf("send-spoofed needs a pod on %s and one on another running node", node)
	}
	own, err := p.nodeLease(ctx, node)
	if err != nil {
		return "", nil, err
	}
	_, macText := vxlanData(own.Attrs.BackendData)
	mac, err := net.ParseMAC(macText)
	if err != nil {
		return "", nil, fmt.Errorf("%s's lease has no VTEP MAC (%s): %w", node, own.Attrs.BackendData, err)
	}
	port := 8472
	if p.conf != nil && p.conf.Backend.Port != 0 {
		port = p.conf.Backend.Port
	}
	frame := packet.VXLAN(p.vni(), mac, netip.AddrPortFrom(src.Addr, 4444), netip.AddrPortFrom(dst.Addr, 7777), []byte("forged by twill's send-spoofed"))
	rxBefore, err := p.udpReceived(ctx, dst.NetNS)
	if err != nil {
		return "", nil, err
	}
	dropsBefore, err := p.unknownPeerDrops(ctx, n)
	if err != nil {
		return "", nil, err
	}
	to := netip.AddrPortFrom(n.UnderlayIP, uint16(port)).String()
	if out, err := p.c.Exec(ctx, outside, p.twillctl(), "vm", "send-udp", "--to", to, "--hex", hex.EncodeToString(frame), "--count", strconv.Itoa(count)); err != nil {
		return "", nil, fmt.Errorf("send from the outside host: %v: %s", err, lastLine(string(out)))
	}
	// The drop counter is sampled: wait until it shows the datagrams.
	var drops uint64
	_, dropErr := retry(ctx, 10*time.Second, func() (string, error) {
		d, err := p.unknownPeerDrops(ctx, n)
		if err != nil {
			return "", err
		}
		if drops = d - dropsBefore; drops < uint64(count) {
			return "", fmt.Errorf("%s's unknown-peer drops grew by %d, want %d", node, drops, count)
		}
		return "", nil
	})
	rxAfter, err := p.udpReceived(ctx, dst.NetNS)
	if err != nil {
		return "", nil, err
	}
	reached := rxAfter - rxBefore
	detail := fmt.Sprintf("%d forged VXLAN datagrams from the outside host %s to %s (inner %s -> %s:7777): %d reached the pod, %s's unknown-peer drops grew by %d",
		count, outsideAddr, to, src.Addr, dst.Addr, reached, node, drops)
	data := map[string]any{"sent": count, "reached_pod": reached, "unknown_peer_drops": drops}
	var errs []error
	if reached != 0 {
		errs = append(errs, fmt.Errorf("%d forged datagrams reached %s (%s)", reached, dst.Name, dst.Addr))
	}
	if dropErr != nil {
		errs = append(errs, dropErr)
	} else if drops != uint64(count) {
		errs = append(errs, fmt.Errorf("%s's unknown-peer drops grew by %d, want %d", node, drops, count))
	}
	return detail, data, errors.Join(errs...)
}
