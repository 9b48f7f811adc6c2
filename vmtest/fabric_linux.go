package vmtest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twillnet/twill/internal/bgprouter"
)

// The routed topology (Spec.Routed): the hub is the racks' router. Its
// bridge <lab>-br keeps the hub's own /28 (etcd on the hub's address, the
// host's link, the outside); each rack r is a bridge <lab>-r<r> with a /28
// of its own and the hub's gateway address on it. A node's eth0 is on its
// rack's bridge, with the rack's /28 and a default route via the gateway,
// so that every packet to another rack is routed by the hub, as by a
// top-of-rack router. With Routed.Router the hub runs BIRD or FRR, which
// peers with every node from the hub's address (the nodes' --bgp-peer),
// reflects the routes it learns to the other nodes with itself as next
// hop, and installs them in its kernel.
//
//	slot 192.168.56.0/26:  .0/28 hub (.1), host (.2), outside (.14)
//	                       .16/28 rack 0: gateway .17, nodes .18 ...
//	                       .32/28 rack 1: gateway .33, nodes .34 ...

// rackBits is the prefix length of a routed lab's segments.
const rackBits = 28

// rackState is one rack of a routed lab.
type rackState struct {
	Bridge  string       `json:"bridge"`
	Prefix  netip.Prefix `json:"prefix"`
	Gateway netip.Addr   `json:"gateway"` // the hub's address on it
	// ASN is the AS of the rack's nodes (0: the router's).
	ASN uint32 `json:"asn,omitempty"`
}

// routerState is a routed lab's routing daemon.
type routerState struct {
	// Kind is "bird" or "frr".
	Kind string `json:"kind"`
	// Procs are its processes (BIRD; FRR's zebra and bgpd).
	Procs []proc `json:"procs"`
	// Ctl is BIRD's control socket or FRR's vty socket directory.
	Ctl    string `json:"ctl"`
	Config string `json:"config"`
	Log    string `json:"log"`
}

// routerBinaries are the router daemons' names, for Down to find them in a
// lab's hub after a crash.
var routerBinaries = []string{"bird", "zebra", "bgpd"}

// routedLayout is the flat layout of slot with the outside moved into the
// hub's /28.
func routedLayout(slot int) layout {
	lay := slotLayout(slot)
	b := lay.Prefix.Addr().As4()
	b[3] += 14
	lay.Outside = netip.AddrFrom4(b)
	return lay
}

// makeRacks makes the racks' bridges in the hub, with the hub's gateway
// address on each, and lets the hub forward between them.
func (l *Lab) makeRacks(ctx context.Context, lay layout) error {
	st := l.st
	r := st.Spec.Routed
	for i := range r.Racks {
		b := lay.Prefix.Addr().As4()
		b[3] += byte(16 * (i + 1))
		pfx := netip.PrefixFrom(netip.AddrFrom4(b), rackBits)
		rack := rackState{Bridge: st.Spec.Name + "-r" + strconv.Itoa(i), Prefix: pfx, Gateway: pfx.Addr().Next()}
		if len(r.RackASNs) > 0 {
			rack.ASN = r.RackASNs[i]
		}
		st.Racks = append(st.Racks, rack)
	}
	if err := writeState(st); err != nil {
		return err
	}
	steps := [][]string{{"ip", "netns", "exec", st.HubNetNS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"}}
	for _, rack := range st.Racks {
		steps = append(steps,
			[]string{"ip", "-n", st.HubNetNS, "link", "add", rack.Bridge, "type", "bridge"},
			[]string{"ip", "-n", st.HubNetNS, "addr", "add", netip.PrefixFrom(rack.Gateway, rackBits).String(), "dev", rack.Bridge},
			[]string{"ip", "-n", st.HubNetNS, "link", "set", rack.Bridge, "up"})
	}
	if err := runAll(ctx, steps); err != nil {
		return fmt.Errorf("make the racks: %w", err)
	}
	return nil
}

// placeNode puts node i (0-based) of a routed lab in its rack: rack
// i % Racks, the rack's .2, .3, ...
func (st *state) placeNode(i int, n *nodeState) {
	r := i % len(st.Racks)
	rack := st.Racks[r]
	b := rack.Gateway.As4()
	b[3] += byte(1 + i/len(st.Racks))
	n.IP, n.Bridge, n.Gateway, n.ASN = netip.AddrFrom4(b), rack.Bridge, rack.Gateway, rack.ASN
}

// bridge is the hub's bridge node n's link is a port of.
func (st *state) bridge(n nodeState) string {
	if n.Bridge != "" {
		return n.Bridge
	}
	return st.Bridge
}

// routeNodes gives every node of a routed lab its default route via its
// rack's gateway, through the driver (in a node's namespace or its VM).
func (l *Lab) routeNodes(ctx context.Context) error {
	var errs []error
	for _, n := range l.st.Nodes {
		errs = append(errs, l.routeNode(ctx, n))
	}
	return errors.Join(errs...)
}

// routeNode gives node n its default route via its rack's gateway (also
// after a VM's reboot); nothing for a node on the flat segment.
func (l *Lab) routeNode(ctx context.Context, n nodeState) error {
	if !n.Gateway.IsValid() {
		return nil
	}
	if out, err := l.drv.exec(ctx, n.Name, []string{"/sbin/ip", "route", "replace", "default", "via", n.Gateway.String()}); err != nil {
		return fmt.Errorf("node %s: default route via %s: %w: %s", n.Name, n.Gateway, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// bgpRouterArgs are the twilld flags that make node n peer with the lab's
// router: its address and AS, and the rack's AS if it has one. None
// unless the lab runs a router and the network's backend is bgp.
func bgpRouterArgs(st *state, n nodeState) []string {
	r := st.Spec.Routed
	if r == nil || r.Router == "" || st.Spec.backendType() != "bgp" {
		return nil
	}
	args := []string{"--bgp-peer", fmt.Sprintf("%s:%d", st.HubAddr, r.ASN)}
	if n.ASN != 0 {
		args = append(args, "--bgp-asn", strconv.FormatUint(uint64(n.ASN), 10))
	}
	return args
}

// routerConfig is the router's sessions: one with every node, from the
// hub's address, the rack's gateway the next hop it advertises.
func (st *state) routerConfig() bgprouter.Config {
	r := st.Spec.Routed
	// The racks' prefixes are in BIRD's table (direct), so that it
	// resolves the nodes' addresses as next hops of what they advertise.
	c := bgprouter.Config{ID: st.HubAddr, ASN: r.ASN, DirectInterfaces: st.Spec.Name + "-r*"}
	for _, n := range st.Nodes {
		c.Neighbors = append(c.Neighbors, bgprouter.Neighbor{Name: n.Name, Addr: n.IP, ASN: cmpOr(n.ASN, r.ASN), NextHop: n.Gateway})
	}
	return c
}

func cmpOr(a, b uint32) uint32 {
	if a != 0 {
		return a
	}
	return b
}

// startRouter writes the router's config and starts it in the hub. With
// recover, BIRD starts in graceful-restart recovery (-R): its kernel
// protocol keeps the routes a previous BIRD left until the sessions have
// sent theirs.
func (l *Lab) startRouter(ctx context.Context, recover bool) error {
	st := l.st
	kind := st.Spec.Routed.Router
	rs := routerState{Kind: kind, Log: filepath.Join(st.Dir, "router.log")}
	cfg := st.routerConfig()
	switch kind {
	case "bird":
		bird, err := exec.LookPath("bird")
		if err != nil {
			return fmt.Errorf("the lab's router: %w (install the Debian package bird2)", err)
		}
		rs.Config, rs.Ctl = filepath.Join(st.Dir, "bird.conf"), filepath.Join(st.Dir, "bird.ctl")
		if err := os.WriteFile(rs.Config, []byte(cfg.BIRD()), 0o644); err != nil {
			return err
		}
		args := []string{"-f", "-c", rs.Config, "-s", rs.Ctl, "-P", filepath.Join(st.Dir, "bird.pid")}
		if recover {
			args = append(args, "-R")
		}
		p, _, err := startIn(st.HubNetNS, bird, args, rs.Log)
		if err != nil {
			return err
		}
		rs.Procs = []proc{p}
	case "frr":
		// FRR's daemons run as its user frr: their directory is one it
		// may enter and write.
		dir := filepath.Join(st.Dir, "frr")
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return err
		}
		rs.Ctl, rs.Config = dir, filepath.Join(dir, "bgpd.conf")
		zconf := filepath.Join(dir, "zebra.conf")
		if err := errors.Join(os.WriteFile(zconf, []byte("hostname "+st.Spec.Name+"-hub\n"), 0o644),
			os.WriteFile(rs.Config, []byte(cfg.FRR()), 0o644)); err != nil {
			return err
		}
		zsock := filepath.Join(dir, "zserv.api")
		common := []string{"-u", "frr", "-g", "frr", "--vty_socket", dir, "-z", zsock}
		for _, d := range []struct{ exe, conf string }{{"zebra", zconf}, {"bgpd", rs.Config}} {
			exe := "/usr/lib/frr/" + d.exe
			if _, err := os.Stat(exe); err != nil {
				return fmt.Errorf("the lab's router: %w (install the Debian package frr)", err)
			}
			p, _, err := startIn(st.HubNetNS, exe, append(common, "-f", d.conf, "-i", filepath.Join(dir, d.exe+".pid")), rs.Log)
			if err != nil {
				return err
			}
			rs.Procs = append(rs.Procs, p)
			st.Router = &rs
			if err := writeState(st); err != nil {
				return err
			}
			if d.exe == "zebra" {
				if err := waitFile(ctx, p, zsock, 10*time.Second); err != nil {
					return fmt.Errorf("the lab's router: zebra: %w", err)
				}
			}
		}
	default:
		return fmt.Errorf("routed.router %q: want one of %v", kind, Routers)
	}
	st.Router = &rs
	if err := writeState(st); err != nil {
		return err
	}
	l.log.Info("router started", "router", kind, "sessions", len(cfg.Neighbors))
	return nil
}

// waitFile waits until path exists, or p has ended.
func waitFile(ctx context.Context, p proc, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("pid %d ended before it made %s", p.PID, path)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no %s: %w", path, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

var _ Fabric = (*Lab)(nil)

func (l *Lab) router() (*state, error) {
	st := l.snapshot()
	if st.Router == nil {
		return nil, fmt.Errorf("lab %s: %w: it runs no router (Spec.Routed.Router)", l.name, errors.ErrUnsupported)
	}
	return st, nil
}

// RouterNetNS is the hub, where a routed lab's router runs; "" without a
// router.
func (l *Lab) RouterNetNS() string {
	st := l.snapshot()
	if st.Router == nil {
		return ""
	}
	return st.HubNetNS
}

// RouterSessions asks the router which sessions are established.
func (l *Lab) RouterSessions(ctx context.Context) ([]string, string, error) {
	st, err := l.router()
	if err != nil {
		return nil, "", err
	}
	var cmd *exec.Cmd
	if st.Router.Kind == "bird" {
		cmd = exec.CommandContext(ctx, "birdc", "-s", st.Router.Ctl, "show", "protocols")
	} else {
		cmd = exec.CommandContext(ctx, "vtysh", "--vty_socket", st.Router.Ctl, "-c", "show bgp summary")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	var up []string
	if st.Router.Kind == "bird" {
		up = bgprouter.BIRDEstablished(string(out))
	} else {
		for _, a := range bgprouter.FRREstablished(string(out)) {
			if i := slices.IndexFunc(st.Nodes, func(n nodeState) bool { return n.IP == a }); i >= 0 {
				up = append(up, st.Nodes[i].Name)
			}
		}
	}
	return up, string(out), nil
}

// RestartRouter restarts the router gracefully. BIRD is told to shut down
// for a graceful restart (its sessions end without a notification, so
// the nodes keep its routes; its kernel routes persist) and is started
// again in recovery; FRR's bgpd is stopped (SIGTERM) and started again.
func (l *Lab) RestartRouter(ctx context.Context) error {
	return l.update(func(st *state) error {
		if st.Router == nil {
			return fmt.Errorf("lab %s: %w: it runs no router", l.name, errors.ErrUnsupported)
		}
		rs := *st.Router
		if rs.Kind == "bird" {
			out, err := exec.CommandContext(ctx, "birdc", "-s", rs.Ctl, "graceful", "restart").CombinedOutput()
			if err != nil {
				return fmt.Errorf("birdc graceful restart: %w: %s", err, strings.TrimSpace(string(out)))
			}
		} else if err := rs.Procs[len(rs.Procs)-1].signal(syscall.SIGTERM); err != nil {
			return err
		}
		for _, p := range rs.Procs {
			if rs.Kind == "frr" && p != rs.Procs[len(rs.Procs)-1] {
				continue // zebra keeps running
			}
			if err := p.waitExit(ctx, 10*time.Second); err != nil {
				return fmt.Errorf("the router did not stop: %w", err)
			}
		}
		if rs.Kind == "bird" {
			return l.startRouter(ctx, true)
		}
		bgpd, _, err := startIn(st.HubNetNS, rs.Procs[1].Exe, []string{"-u", "frr", "-g", "frr", "--vty_socket", rs.Ctl,
			"-z", filepath.Join(rs.Ctl, "zserv.api"), "-f", rs.Config, "-i", filepath.Join(rs.Ctl, "bgpd.pid")}, rs.Log)
		if err != nil {
			return err
		}
		st.Router.Procs[1] = bgpd
		return nil
	})
}
