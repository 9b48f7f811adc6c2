package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/vmtest"
	"github.com/twillnet/twill/web/api"
)

// userspaceShareMax is the share of a kernel-path node's tunnel bytes the
// userspace loops may carry (ARP-less first packets, ICMP answers, a
// peer's first datagrams before its lease says it runs the kernel path).
const userspaceShareMax = 0.01

// dataPath checks, on every running udp node, which path carried the
// bytes: the node's /api/v1/node says the mode ("kernel path (tcx)",
// "kernel path (tc)", or "userspace ..."), and /api/v1/tunnels how many of
// the tunnel bytes the userspace loops carried: under 1% on the kernel
// path (after a transfer, so that there are bytes to count), all of them
// on the userspace path. On wireguard it checks the WireGuard that runs:
// the mode is "kernel", or "userspace (why)". With node set, only that
// node is checked.
func (p *play) dataPath(ctx context.Context, path, only string) (string, map[string]any, error) {
	if p.backend == netconf.TypeWireGuard {
		return p.wireGuardImplementation(ctx, path, only)
	}
	if path == "auto" {
		return "", nil, fmt.Errorf("data-path: path auto is for wireguard; the cluster runs %s", p.backend)
	}
	var detail strings.Builder
	data := map[string]any{}
	var failed []string
	for _, n := range p.runningNodes(only) {
		var node api.NodeInfo
		var tunnels api.TunnelList
		if err := p.getAPI(ctx, n, "/api/v1/node", &node); err != nil {
			return detail.String(), data, err
		}
		if err := p.getAPI(ctx, n, "/api/v1/tunnels", &tunnels); err != nil {
			return detail.String(), data, err
		}
		var total, user uint64
		for _, t := range tunnels.Tunnels {
			total += t.TxBytes + t.RxBytes
			user += t.UserspaceTxBytes + t.UserspaceRxBytes
		}
		share := 0.0
		if total > 0 {
			share = float64(user) / float64(total)
		}
		fmt.Fprintf(&detail, "%s: %s; %d of %d tunnel bytes (%.2f%%) through userspace\n", n.Name, node.BackendMode, user, total, 100*share)
		data[n.Name] = map[string]any{"mode": node.BackendMode, "bytes": total, "userspace_bytes": user}
		switch path {
		case "kernel":
			if !strings.HasPrefix(node.BackendMode, "kernel path") {
				failed = append(failed, fmt.Sprintf("%s runs %q, not the kernel path", n.Name, node.BackendMode))
			} else if total == 0 || share >= userspaceShareMax {
				failed = append(failed, fmt.Sprintf("%s: the userspace loops carried %.2f%% of %d bytes, want under %.0f%%", n.Name, 100*share, total, 100*userspaceShareMax))
			}
		case "userspace":
			if !strings.HasPrefix(node.BackendMode, "userspace") {
				failed = append(failed, fmt.Sprintf("%s runs %q, not the userspace path", n.Name, node.BackendMode))
			} else if user != total {
				failed = append(failed, fmt.Sprintf("%s: the userspace loops carried %d of %d bytes, want all", n.Name, user, total))
			}
		}
	}
	if len(failed) > 0 {
		return detail.String(), data, fmt.Errorf("data path: %s", strings.Join(failed, "; "))
	}
	return detail.String(), data, nil
}

// wireGuardImplementation checks that the running nodes (or only the one
// named) run kernel or userspace WireGuard, as their /api/v1/node says.
// auto wants kernel WireGuard on the qemu driver (its VMs' kernel has the
// module) and, on other drivers, what the node's kernel allows: kernel if
// it can make a wireguard link, else userspace.
func (p *play) wireGuardImplementation(ctx context.Context, path, only string) (string, map[string]any, error) {
	var detail strings.Builder
	data := map[string]any{}
	var failed []string
	for _, n := range p.runningNodes(only) {
		if p.flannelNode(n.Name) {
			// flanneld has kernel WireGuard only, and no API to ask.
			fmt.Fprintf(&detail, "%s: flanneld (kernel WireGuard, flannel's only)\n", n.Name)
			continue
		}
		want := path
		if want == "auto" {
			want = p.wireGuardExpected(ctx, n)
		}
		var node api.NodeInfo
		if err := p.getAPI(ctx, n, "/api/v1/node", &node); err != nil {
			return detail.String(), data, err
		}
		fmt.Fprintf(&detail, "%s: %s WireGuard\n", n.Name, node.BackendMode)
		data[n.Name] = map[string]any{"mode": node.BackendMode}
		if got := firstWord(node.BackendMode); got != want {
			failed = append(failed, fmt.Sprintf("%s runs %q WireGuard, not %s", n.Name, node.BackendMode, want))
		}
	}
	if len(failed) > 0 {
		return detail.String(), data, fmt.Errorf("data path: %s", strings.Join(failed, "; "))
	}
	return detail.String(), data, nil
}

// wireGuardExpected is the WireGuard a node should run by default: kernel
// on the qemu driver; elsewhere kernel if a wireguard link can be made in
// the node's namespace (tried with a link that is deleted at once).
func (p *play) wireGuardExpected(ctx context.Context, n vmtest.Node) string {
	if p.r.Driver == "qemu" {
		return "kernel"
	}
	if _, err := p.c.Exec(ctx, n.NetNS, "ip", "link", "add", "twill-wgprobe", "type", "wireguard"); err != nil {
		return "userspace"
	}
	p.c.Exec(ctx, n.NetNS, "ip", "link", "del", "twill-wgprobe")
	return "kernel"
}

// runningNodes are the nodes that are up, or only the one named if it is.
func (p *play) runningNodes(only string) []vmtest.Node {
	var out []vmtest.Node
	for _, n := range p.c.Nodes() {
		if !p.down[n.Name] && (only == "" || n.Name == only) {
			out = append(out, n)
		}
	}
	return out
}

// firstWord is s up to its first space.
func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}

// getAPI reads a node's JSON API (its dashboard on the underlay), from
// the node itself.
func (p *play) getAPI(ctx context.Context, n vmtest.Node, path string, v any) error {
	url := n.DashboardURL + path
	out, err := p.c.Exec(ctx, n.Name, "busybox", "wget", "-q", "-O", "-", url)
	if err != nil {
		return fmt.Errorf("read %s on %s: %w: %s", url, n.Name, err, out)
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("read %s on %s: %w: %.200s", url, n.Name, err, out)
	}
	return nil
}
