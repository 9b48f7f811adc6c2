package vmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twillnet/twill/internal/kubeapi"
	"github.com/twillnet/twill/overlay/lease/etcd"
)

// The hub is the part of a lab that every driver shares: a namespace
// <lab>-hub holding the underlay bridge <lab>-br with the hub's address,
// where etcd listens and the nodes' links (veths, taps) are ports; the
// host's own link <lab>-host with HostAccess; the outside namespace
// <lab>-out; and the lab's directory with its state file. Down removes all
// of it by name, also without a state file.

// etcdPort is where etcd listens on the hub's underlay address. Each lab's
// hub is a namespace of its own, so labs never compete for it.
const etcdPort = 2379

// Readiness lines in the logs of the processes the lab starts.
const (
	etcdReady   = "etcd ready at"
	twilldReady = "msg=ready"
)

// exists reports whether anything of the lab is there: state or namespaces.
func exists(name string) bool {
	if _, err := os.Stat(labDir(name)); err == nil {
		return true
	}
	return len(labNamespaces(name)) > 0
}

// freeSlot finds a /26 no other lab with host access uses.
func freeSlot() (int, error) {
	used := map[int]bool{}
	names, _ := List()
	for _, n := range names {
		if st, err := readState(n); err == nil && st.Spec.HostAccess {
			used[st.Slot] = true
		}
	}
	for s := range hostSlots {
		if !used[s] {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%d labs with host access run already (%v); that is all 192.168.56.0/24 holds", hostSlots, names)
}

// makeHub makes the hub namespace with the underlay bridge, and with
// HostAccess the host's link to it.
func (l *Lab) makeHub(ctx context.Context, lay layout, bits int) error {
	st := l.st
	st.HubNetNS, st.Bridge, st.HubAddr = st.Spec.Name+"-hub", st.Spec.Name+"-br", lay.Hub
	if err := writeState(st); err != nil {
		return err
	}
	hub := st.HubNetNS
	steps := [][]string{
		{"ip", "netns", "add", hub},
		{"ip", "-n", hub, "link", "set", "lo", "up"},
		{"ip", "-n", hub, "link", "add", st.Bridge, "type", "bridge"},
		{"ip", "-n", hub, "addr", "add", lay.Hub.String() + "/" + strconv.Itoa(bits), "dev", st.Bridge},
		{"ip", "-n", hub, "link", "set", st.Bridge, "up"},
	}
	if st.Spec.IPv6() {
		st.HubAddr6 = lay.addr6(lay.Hub)
		steps = append(steps, []string{"ip", "-n", hub, "addr", "add", netip.PrefixFrom(st.HubAddr6, 64).String(), "dev", st.Bridge, "nodad"})
	}
	if err := runAll(ctx, steps); err != nil {
		return fmt.Errorf("make the underlay: %w", err)
	}
	if !st.Spec.HostAccess {
		return nil
	}
	st.HostLink, st.HostAddr = st.Spec.Name+"-host", lay.Host
	if err := writeState(st); err != nil {
		return err
	}
	// The host's link keeps the slot's /26, also when the lab's segment is
	// the whole /24 (underlayBits).
	// A routed lab's host is on the hub's /28 and reaches the racks
	// through the hub.
	hostBits := lay.Prefix.Bits()
	if st.Spec.Routed != nil {
		hostBits = bits
	}
	steps = [][]string{
		{"ip", "link", "add", st.HostLink, "type", "veth", "peer", "name", "host", "netns", hub},
		{"ip", "-n", hub, "link", "set", "host", "master", st.Bridge, "up"},
		{"ip", "addr", "add", netip.PrefixFrom(lay.Host, hostBits).String(), "dev", st.HostLink},
		{"ip", "link", "set", st.HostLink, "up"},
	}
	if st.Spec.Routed != nil {
		steps = append(steps, []string{"ip", "route", "add", lay.Prefix.String(), "via", lay.Hub.String(), "dev", st.HostLink})
	}
	if err := runAll(ctx, steps); err != nil {
		return fmt.Errorf("join the host to the underlay: %w", err)
	}
	return nil
}

// attach makes namespace ns with eth0 at addr/bits (and addr6/64, if
// valid) on the hub's bridge; the veth's other end is hubLink in the hub.
func (l *Lab) attach(ctx context.Context, hubLink, ns string, addr, addr6 netip.Addr, bits int) error {
	hub, bridge := l.st.HubNetNS, l.st.Bridge
	if i := slices.IndexFunc(l.st.Nodes, func(n nodeState) bool { return n.NetNS == ns }); i >= 0 {
		bridge = l.st.bridge(l.st.Nodes[i])
	}
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", hub, "link", "add", hubLink, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", hub, "link", "set", hubLink, "master", bridge, "up"},
		{"ip", "-n", ns, "addr", "add", netip.PrefixFrom(addr, bits).String(), "dev", "eth0"},
	}
	if addr6.IsValid() {
		steps = append(steps, []string{"ip", "-n", ns, "addr", "add", netip.PrefixFrom(addr6, 64).String(), "dev", "eth0", "nodad"})
	}
	return runAll(ctx, append(steps, []string{"ip", "-n", ns, "link", "set", "eth0", "up"}))
}

// makeOutside makes the namespace that plays the world outside the
// cluster, on the underlay.
func (l *Lab) makeOutside(ctx context.Context, lay layout, bits int) error {
	st := l.st
	st.OutsideNS, st.OutsideIP = st.Spec.Name+"-out", lay.Outside
	if st.Spec.IPv6() {
		st.OutsideIP6 = lay.addr6(lay.Outside)
	}
	if err := writeState(st); err != nil {
		return err
	}
	if err := l.attach(ctx, "out", st.OutsideNS, st.OutsideIP, st.OutsideIP6, bits); err != nil {
		return fmt.Errorf("make the outside: %w", err)
	}
	return nil
}

// isHubNetNS says whether name is a namespace of the lab on this host
// that is no node's: the hub or the outside.
func (st *state) isHubNetNS(name string) bool {
	return name == st.HubNetNS || (st.OutsideNS != "" && name == st.OutsideNS)
}

// startEtcd starts etcd in the hub (twillctl etcd, an embedded etcd) and
// waits until it is ready. The unix socket reaches it from any namespace.
func (l *Lab) startEtcd(ctx context.Context) error {
	st := l.st
	if st.EtcdURL == "" {
		st.EtcdURL = fmt.Sprintf("http://%s", net.JoinHostPort(st.HubAddr.String(), strconv.Itoa(etcdPort)))
		st.EtcdSocket = filepath.Join(st.Dir, "etcd.sock")
	}
	logPath := filepath.Join(st.Dir, "etcd.log")
	args := []string{"etcd", "--data-dir", filepath.Join(st.Dir, "etcd"),
		"--listen-client-urls", st.EtcdURL + ",unix://" + st.EtcdSocket}
	// A socket left by a killed etcd would stop the new one from listening.
	_ = os.Remove(st.EtcdSocket)
	p, off, err := startIn(st.HubNetNS, filepath.Join(st.Bin, "twillctl"), args, logPath)
	if err != nil {
		return err
	}
	st.Etcd = p
	if err := writeState(st); err != nil {
		return err
	}
	if err := waitLog(ctx, p, logPath, off, etcdReady, 60*time.Second); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	l.log.Info("etcd started", "url", st.EtcdURL, "pid", p.PID)
	return nil
}

// putNetConfig puts the spec's network config into etcd.
func (l *Lab) putNetConfig(ctx context.Context) error {
	st := l.st
	cfg := filepath.Join(st.Dir, "net-config.json")
	if err := os.WriteFile(cfg, []byte(st.Spec.NetConfig), 0o644); err != nil {
		return err
	}
	args := []string{filepath.Join(st.Bin, "twillctl"), "config", "put", "--etcd-endpoints", "unix://" + st.EtcdSocket}
	if st.Spec.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix", st.Spec.EtcdPrefix)
	}
	if err := run(ctx, append(args, cfg)...); err != nil {
		return fmt.Errorf("put the network config: %w", err)
	}
	return nil
}

// StartEtcd starts the lab's etcd again (its data is kept) unless it runs.
func (l *Lab) StartEtcd(ctx context.Context) error {
	return l.update(func(st *state) error {
		if st.Etcd.alive() {
			return nil
		}
		return l.startEtcd(ctx) // on l.st, which is st
	})
}

// StopEtcd stops the lab's etcd and waits until it has ended: SIGTERM, and
// SIGKILL if it has not ended 2 s later (with the nodes' watches open a
// graceful stop takes etcd about 7 s; its write-ahead log makes the kill
// safe).
func (l *Lab) StopEtcd(ctx context.Context) error {
	p := l.snapshot().Etcd
	if err := p.stop(ctx, syscall.SIGTERM, 2*time.Second); err != nil {
		return fmt.Errorf("stop etcd: %w", err)
	}
	l.log.Info("etcd stopped")
	return nil
}

// EtcdEndpoint is an etcd endpoint for the caller: a unix socket that
// reaches the lab's etcd from any network namespace (pass it to
// twillctl --etcd-endpoints).
func (l *Lab) EtcdEndpoint() string { return "unix://" + l.snapshot().EtcdSocket }

// NodeEtcdEndpoint is the URL the nodes reach etcd at, over the underlay.
func (l *Lab) NodeEtcdEndpoint() string { return l.snapshot().EtcdURL }

// EtcdPrefix is the etcd key prefix the lab uses.
func (l *Lab) EtcdPrefix() string {
	if p := l.snapshot().Spec.EtcdPrefix; p != "" {
		return p
	}
	return etcd.DefaultPrefix
}

// EtcdPID is the PID of the lab's etcd (it may have been stopped).
func (l *Lab) EtcdPID() (pid int, running bool) {
	p := l.snapshot().Etcd
	return p.PID, p.alive()
}

// HubNetNS is the namespace that holds the underlay bridge and etcd.
func (l *Lab) HubNetNS() string { return l.snapshot().HubNetNS }

// HostAddr is the host's address on the underlay, with HostAccess.
func (l *Lab) HostAddr() (netip.Addr, bool) {
	st := l.snapshot()
	return st.HostAddr, st.HostAddr.IsValid()
}

// Outside returns the outside namespace and its address, if the lab has
// one.
func (l *Lab) Outside() (netns string, addr netip.Addr, ok bool) {
	st := l.snapshot()
	return st.OutsideNS, st.OutsideIP, st.OutsideNS != ""
}

// Outside6 is the outside host's IPv6 address, if the lab has one (an
// outside host and IPv6).
func (l *Lab) Outside6() (netip.Addr, bool) {
	st := l.snapshot()
	return st.OutsideIP6, st.OutsideIP6.IsValid()
}

// SetUnderlay takes a node's underlay link down or up. The bridge's end of
// the node's link goes down, so the node sees its eth0 lose carrier, as
// when a cable is pulled, and its routes stay.
func (l *Lab) SetUnderlay(ctx context.Context, node string, up bool) error {
	st := l.snapshot()
	i, err := findNode(st, l.name, node)
	if err != nil {
		return err
	}
	state := "down"
	if up {
		state = "up"
	}
	return run(ctx, "ip", "-n", st.HubNetNS, "link", "set", st.Nodes[i].HubLink, state)
}

// List returns the names of the labs that have a state file.
func List() ([]string, error) {
	entries, err := os.ReadDir(StateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && ValidName(e.Name()) == nil {
			if _, err := os.Stat(statePath(e.Name())); err == nil {
				names = append(names, e.Name())
			}
		}
	}
	return names, nil
}

// labNamespaces lists the namespaces that belong to lab name, by the
// patterns the lab gives them (never by a bare prefix: "twt-cni-1" is not
// lab twt's), pods first, then nodes, then the rest.
func labNamespaces(name string) []string {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `-(hub|out|n[0-9]+(-[a-z0-9.]+)?)$`)
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	rank := func(s string) int {
		switch {
		case strings.Count(s, "-") == 2:
			return 0 // a pod
		case strings.HasSuffix(s, "-hub"):
			return 2
		}
		return 1
	}
	slices.SortFunc(out, func(a, b string) int { return rank(a) - rank(b) })
	return out
}

// Down removes lab name: its processes (those in its state file, and any
// twill binary or QEMU still running in its namespaces), namespaces, its
// link in the host's namespace and its directory. It finds what a crashed
// run left without a state file too, and does nothing if nothing is there.
func Down(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	var errs []error
	var procs []proc
	if st, err := readState(name); err == nil {
		if l, err := newLab(name, st, nil); err == nil {
			procs = append(procs, l.drv.down(ctx)...)
		} else {
			errs = append(errs, err) // go on with the scan
		}
		procs = append(procs, st.Etcd, st.KubeAPI)
		if st.Router != nil {
			procs = append(procs, st.Router.Procs...)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err) // go on with the scan
	}
	namespaces := labNamespaces(name)
	inodes := map[uint64]bool{}
	for _, ns := range namespaces {
		if ino, err := netnsInode(ns); err == nil {
			inodes[ino] = true
		}
	}
	ours := map[string]bool{"twilld": true, "twillctl": true, "twill-cni": true, "flanneld": true, qemuBinary: true, kubeapi.APIServerBinary: true}
	for _, b := range routerBinaries {
		ours[b] = true
	}
	found, others := procsIn(inodes, ours)
	procs = append(procs, found...)
	// Daemons first, etcd last (they may want to talk to it on the way
	// out); all of one kind at once.
	isEtcd := func(p proc) bool { return filepath.Base(p.Exe) == "twillctl" }
	for _, etcdPhase := range []bool{false, true} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range procs {
			if isEtcd(p) != etcdPhase {
				continue
			}
			wg.Go(func() {
				if err := p.stop(ctx, syscall.SIGTERM, 5*time.Second); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if len(others) > 0 {
		errs = append(errs, fmt.Errorf("processes not started by the lab still run in its namespaces (left alone): %s", strings.Join(others, ", ")))
	}
	for _, ns := range namespaces {
		if err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	link := name + "-host"
	if _, err := net.InterfaceByName(link); err == nil {
		if err := run(ctx, "ip", "link", "del", link); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(labDir(name)); err != nil {
		errs = append(errs, fmt.Errorf("remove the lab directory: %w", err))
	}
	return errors.Join(errs...)
}
