package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/twillnet/twill/vmtest"
)

// nodeSubnet reads a node's subnet from its subnet file.
func (p *play) nodeSubnet(name string) (netip.Prefix, error) {
	n, err := p.c.Node(name)
	if err != nil {
		return netip.Prefix{}, err
	}
	f, err := readSubnetFile(n.SubnetFile)
	if err != nil {
		return netip.Prefix{}, err
	}
	return f.NodeSubnet(), nil
}

// restartDaemon stops twilld with sig and starts it again; it must come back
// with the same subnet.
func (p *play) restartDaemon(ctx context.Context, node string, sig syscall.Signal) (string, map[string]any, error) {
	before, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	if err := p.c.StopDaemon(ctx, node, sig); err != nil {
		return "", nil, err
	}
	t0 := time.Now()
	if err := p.c.StartDaemon(ctx, node); err != nil {
		return "", nil, err
	}
	after, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	detail := fmt.Sprintf("%s stopped (%s) and ready again in %.1fs with %s", node, sig, time.Since(t0).Seconds(), after)
	if after != before {
		return detail, nil, fmt.Errorf("%s came back with %s, but held %s before", node, after, before)
	}
	return detail, nil, nil
}

// stopDaemon stops twilld with sig (SIGKILL: a crash; SIGTERM: a stop, as
// systemd's) and leaves it stopped; its pods stay in the checks, since the
// data path outlives the daemon.
func (p *play) stopDaemon(ctx context.Context, node string, sig syscall.Signal) (string, map[string]any, error) {
	before, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	p.subnets[node] = before
	if err := p.c.StopDaemon(ctx, node, sig); err != nil {
		return "", nil, err
	}
	p.stopped[node] = time.Now()
	what := "killed"
	if sig != syscall.SIGKILL {
		what = "stopped (" + sig.String() + ")"
	}
	return fmt.Sprintf("%s %s while holding %s", node, what, before), nil, nil
}

// startDaemon starts a stopped twilld; after a kill it must get the same
// subnet back.
func (p *play) startDaemon(ctx context.Context, node string) (string, map[string]any, error) {
	if err := p.c.StartDaemon(ctx, node); err != nil {
		return "", nil, err
	}
	after, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	if before, ok := p.subnets[node]; ok && before != after {
		return "", nil, fmt.Errorf("%s came back with %s, but held %s before", node, after, before)
	}
	delete(p.subnets, node)
	return fmt.Sprintf("%s ready with %s", node, after), nil, nil
}

// stopNode takes a node away: its daemon stops and its underlay link goes
// down. Its pods leave the checks.
func (p *play) stopNode(ctx context.Context, node string) (string, map[string]any, error) {
	if err := p.c.StopDaemon(ctx, node, syscall.SIGTERM); err != nil {
		return "", nil, err
	}
	p.stopped[node] = time.Now()
	if err := p.c.SetUnderlay(ctx, node, false); err != nil {
		return "", nil, err
	}
	p.down[node] = true
	return fmt.Sprintf("%s: twilld stopped, underlay down", node), nil, nil
}

// deleteKubeNode deletes a node's Node object in a cluster whose store is
// the Kubernetes API: its lease goes, and the routes to it on every peer.
func (p *play) deleteKubeNode(ctx context.Context, node string) (string, map[string]any, error) {
	kc, ok := p.c.(vmtest.KubeCluster)
	if !ok || kc.Store() != "kube" {
		return "", nil, errors.New("delete-kube-node needs a cluster with store: kube")
	}
	if err := kc.DeleteKubeNode(ctx, node); err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("%s: Node object deleted", node), nil, nil
}

// startNode brings a stopped node back.
func (p *play) startNode(ctx context.Context, node string) (string, map[string]any, error) {
	if err := p.c.SetUnderlay(ctx, node, true); err != nil {
		return "", nil, err
	}
	if err := p.c.StartDaemon(ctx, node); err != nil {
		return "", nil, err
	}
	delete(p.down, node)
	sub, _ := p.nodeSubnet(node)
	return fmt.Sprintf("%s: underlay up, twilld ready with %s", node, sub), nil, nil
}

// deleteRoute deletes one of twill's routes by hand, as an operator might:
// the one to peer's subnet, or the first twill route.
func (p *play) deleteRoute(ctx context.Context, node, peer string) (string, map[string]any, error) {
	n, err := p.c.Node(node)
	if err != nil {
		return "", nil, err
	}
	routes, err := p.kernelRoutes(ctx, n.NetNS)
	if err != nil {
		return "", nil, err
	}
	target := ""
	if peer != "" {
		sub, err := p.nodeSubnet(peer)
		if err != nil {
			return "", nil, err
		}
		for _, r := range routes {
			if r == sub.String() {
				target = r
			}
		}
		if target == "" {
			return "", nil, fmt.Errorf("%s has no twill route to %s's subnet %s (it has %v)", node, peer, sub, routes)
		}
	} else if len(routes) > 0 {
		target = routes[0]
	} else {
		return "", nil, fmt.Errorf("%s has no twill route to delete", node)
	}
	if out, err := p.c.Exec(ctx, n.NetNS, "ip", "route", "del", target, "proto", "126"); err != nil {
		return "", nil, fmt.Errorf("delete route %s on %s: %v: %s", target, node, err, lastLine(string(out)))
	}
	return fmt.Sprintf("deleted %s on %s", target, node), nil, nil
}

// rebootNode reboots a node; it must come back with the same subnet, and
// its pods are attached again.
func (p *play) rebootNode(ctx context.Context, node string) (string, map[string]any, error) {
	rb, ok := p.c.(vmtest.NodeRebooter)
	if !ok {
		return "", nil, fmt.Errorf("reboot-node: %w by this cluster", errors.ErrUnsupported)
	}
	before, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	t0 := time.Now()
	if err := rb.RebootNode(ctx, node); err != nil {
		return "", nil, err
	}
	after, err := p.nodeSubnet(node)
	if err != nil {
		return "", nil, err
	}
	detail := fmt.Sprintf("%s rebooted; twilld ready and pods attached again in %.1fs, with %s", node, time.Since(t0).Seconds(), after)
	if after != before {
		return detail, nil, fmt.Errorf("%s came back from the reboot with %s, but held %s before", node, after, before)
	}
	return detail, map[string]any{"seconds": time.Since(t0).Seconds()}, nil
}

// partition cuts a node's underlay link (heal: restores it). The node and
// its daemon keep running; its pods leave the checks until it is healed.
func (p *play) partition(ctx context.Context, node string, heal bool) (string, map[string]any, error) {
	if err := p.c.SetUnderlay(ctx, node, heal); err != nil {
		return "", nil, err
	}
	if heal {
		delete(p.down, node)
		return fmt.Sprintf("%s: underlay link restored", node), nil, nil
	}
	p.down[node], p.stopped[node] = true, time.Now()
	return fmt.Sprintf("%s: underlay link cut; twilld keeps running", node), nil, nil
}

// underlayLoss makes a node's underlay lossy and slow, or clean again.
func (p *play) underlayLoss(ctx context.Context, node string, loss float64, delay time.Duration) (string, map[string]any, error) {
	sh, ok := p.c.(vmtest.UnderlayShaper)
	if !ok {
		return "", nil, fmt.Errorf("underlay-loss: %w by this cluster", errors.ErrUnsupported)
	}
	if err := sh.SetUnderlayLoss(ctx, node, loss, delay); err != nil {
		return "", nil, err
	}
	if loss == 0 && delay == 0 {
		return fmt.Sprintf("%s: underlay clean again", node), nil, nil
	}
	return fmt.Sprintf("%s: underlay loses %g%% of packets, %v added latency", node, loss, delay), nil, nil
}
