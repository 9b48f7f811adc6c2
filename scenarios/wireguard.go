package scenarios

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/vmtest"
)

// The WireGuard devices as the kernel holds them, on twill's nodes and
// flannel's alike (twillctl vm wg-show, the VMs' wg show): a node's
// device is twill-wg, or flannel-wg on a flannel node.

// wireGuardDevice is the name of node n's (IPv4) WireGuard device.
func (p *play) wireGuardDevice(n string) string {
	if p.flannelNode(n) {
		return "flannel-wg"
	}
	return plan.WireGuardDevice
}

// wireGuardShow reads a node's WireGuard device.
func (p *play) wireGuardShow(ctx context.Context, n vmtest.Node) (vmtest.WireGuardDevice, error) {
	var d vmtest.WireGuardDevice
	dev := p.wireGuardDevice(n.Name)
	out, err := p.c.Exec(ctx, n.Name, p.twillctl(), "vm", "wg-show", "--device", dev)
	if err != nil {
		return d, fmt.Errorf("wg-show %s on %s: %v: %s", dev, n.Name, err, lastLine(string(out)))
	}
	if err := json.Unmarshal(out, &d); err != nil {
		return d, fmt.Errorf("read wg-show %s on %s: %w: %.200s", dev, n.Name, err, out)
	}
	return d, nil
}

// ownLease is the lease of node n's subnet.
func ownLease(ls []lease.Lease, n vmtest.Node) (lease.Lease, bool) {
	i := slices.IndexFunc(ls, func(l lease.Lease) bool { return l.Subnet == n.Subnet && l.Attrs.PublicIP == n.UnderlayIP })
	if i < 0 {
		return lease.Lease{}, false
	}
	return ls[i], true
}

// wireGuardPeers checks every running node's WireGuard device against the
// leases (IPv4 network, one device per node): its public key is the one
// its own lease publishes, and its peers are exactly the routable peer
// leases, each with the key its lease's BackendData holds, the endpoint
// PublicIP:ListenPort, the peer's subnet as its allowed IPs, and a
// handshake done (play it after traffic). A node's key must not change
// between two of these steps but through new-key.
func (p *play) wireGuardPeers(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	if p.backend != netconf.TypeWireGuard {
		return "", nil, fmt.Errorf("wireguard-peers: the cluster runs %s, not wireguard", p.backend)
	}
	data := map[string]any{}
	detail, err := retry(ctx, within, func() (string, error) {
		ls, err := p.leases(ctx)
		if err != nil {
			return "", fmt.Errorf("list leases: %w", err)
		}
		var b strings.Builder
		var bad []string
		keys := map[string]string{}
		for _, n := range p.runningNodes("") {
			d, err := p.wireGuardShow(ctx, n)
			if err != nil {
				return b.String(), err
			}
			kind := "twilld"
			if p.flannelNode(n.Name) {
				kind = "flanneld"
			}
			own, ok := ownLease(ls, n)
			if !ok {
				return b.String(), fmt.Errorf("%s (%s) holds no lease of its subnet %s", n.Name, n.UnderlayIP, n.Subnet)
			}
			ownKey, err := plan.ParseWireGuardData(own.Attrs.BackendData)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s's lease %s: %v", n.Name, own.Subnet, err))
			}
			fmt.Fprintf(&b, "%s (%s): %s (%s) key %.8s… port %d, %s; its lease's BackendData %s\n",
				n.Name, kind, d.Name, d.Type, d.PublicKey, d.ListenPort, plural.Count(len(d.Peers), "peer"), own.Attrs.BackendData)
			keys[n.Name] = d.PublicKey
			if d.PublicKey != ownKey {
				bad = append(bad, fmt.Sprintf("%s's %s has public key %s, its lease publishes %q", n.Name, d.Name, d.PublicKey, ownKey))
			}
			var have, want []string
			for _, peer := range d.Peers {
				ips := slices.Clone(peer.AllowedIPs)
				slices.Sort(ips)
				have = append(have, fmt.Sprintf("%s@%s[%s]", peer.PublicKey, peer.Endpoint, strings.Join(ips, ",")))
				hs := "no handshake"
				if !peer.LastHandshake.IsZero() {
					hs = "handshake " + peer.LastHandshake.UTC().Format("15:04:05")
				}
				fmt.Fprintf(&b, "  peer %.8s… %s allowed %s, %s, rx %d tx %d bytes\n", peer.PublicKey, peer.Endpoint, strings.Join(ips, ","), hs, peer.ReceiveBytes, peer.TransmitBytes)
				if peer.LastHandshake.IsZero() {
					bad = append(bad, fmt.Sprintf("%s's peer %s (%s) has had no handshake", n.Name, peer.PublicKey, peer.Endpoint))
				}
			}
			for _, l := range routableLeases(ls, p.network, n.Subnet) {
				key, err := plan.ParseWireGuardData(l.Attrs.BackendData)
				if err != nil {
					bad = append(bad, fmt.Sprintf("lease %s (%s): %v", l.Subnet, l.Attrs.PublicIP, err))
					continue
				}
				_, dst, port := p.wireGuardEndpoint(n, vmtest.Node{UnderlayIP: l.Attrs.PublicIP}, ipv4)
				want = append(want, fmt.Sprintf("%s@%s[%s]", key, netip.AddrPortFrom(dst, port), l.Subnet))
			}
			slices.Sort(have)
			slices.Sort(want)
			if !slices.Equal(have, want) {
				bad = append(bad, fmt.Sprintf("%s's %s has peers %v, the leases want %v", n.Name, d.Name, have, want))
			}
		}
		for _, node := range slices.Sorted(maps.Keys(keys)) {
			if old, ok := p.wgKeys[node]; ok && old != keys[node] {
				bad = append(bad, fmt.Sprintf("%s's public key changed from %s to %s, and no new-key step made it", node, old, keys[node]))
			}
		}
		if len(bad) > 0 {
			return b.String(), fmt.Errorf("WireGuard devices do not match the leases: %s", strings.Join(bad, "; "))
		}
		for node, k := range keys {
			p.wgKeys[node] = k
			data[node] = k
		}
		return b.String(), nil
	})
	return detail, data, err
}

// newKey makes a flannel node's WireGuard key anew: it deletes flannel's
// key file (vmtest.VMFlannelKeyFile) and restarts flanneld, which makes
// a new key and writes it into its lease; the step passes once the lease
// publishes a key other than the old one. wireguard-peers then checks
// that every peer took it and none kept the old.
func (p *play) newKey(ctx context.Context, node string, within time.Duration) (string, map[string]any, error) {
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	keyOf := func() (string, error) {
		ls, err := p.leases(ctx)
		if err != nil {
			return "", fmt.Errorf("list leases: %w", err)
		}
		own, ok := ownLease(ls, n)
		if !ok {
			return "", fmt.Errorf("%s holds no lease of %s", node, n.Subnet)
		}
		return plan.ParseWireGuardData(own.Attrs.BackendData)
	}
	old, err := keyOf()
	if err != nil {
		return "", nil, err
	}
	if out, err := p.c.Exec(ctx, node, "/bin/rm", vmtest.VMFlannelKeyFile); err != nil {
		return "", nil, fmt.Errorf("remove %s on %s: %v: %s", vmtest.VMFlannelKeyFile, node, err, lastLine(string(out)))
	}
	restarted, _, err := p.restartDaemon(ctx, node, syscall.SIGTERM)
	if err != nil {
		return restarted, nil, err
	}
	var now string
	_, err = retry(ctx, within, func() (string, error) {
		k, err := keyOf()
		if err == nil && k == old {
			err = fmt.Errorf("%s's lease still publishes the old key %s", node, old)
		}
		now = cmp.Or(k, now)
		return "", err
	})
	detail := fmt.Sprintf("%s removed, %s; the lease's PublicKey %s -> %s", vmtest.VMFlannelKeyFile, restarted, old, now)
	if err != nil {
		return detail, nil, err
	}
	p.wgKeys[node] = now
	return detail, map[string]any{"old": old, "new": now}, nil
}
