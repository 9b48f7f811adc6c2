package kernelpath

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// podResync is how often WatchPods rereads the pods without an event.
const podResync = 5 * time.Second

// validNeigh are the neighbour states whose link-layer address is usable.
const validNeigh = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// DiscoverPods finds this node's pods as the kernel knows them: the bridge
// is the device holding an address in subnet (the CNI plugin's gateway on
// cni0); a pod is an IPv4 neighbour of the bridge inside subnet whose MAC
// the bridge has learned on a veth port. A pod the node has not yet talked
// to (no neighbour entry) is not found; its packets take the bridge until
// the next call.
func DiscoverPods(h *netlink.Handle, subnet netip.Prefix) (map[netip.Addr]Pod, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var bridge netlink.Link
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !subnet.Contains(ip.Unmap()) {
			continue
		}
		l, err := h.LinkByIndex(a.LinkIndex)
		if err == nil && l.Type() == "bridge" {
			bridge = l
			break
		}
	}
	pods := map[netip.Addr]Pod{}
	if bridge == nil {
		return pods, nil
	}
	bi := bridge.Attrs().Index
	neighs, err := h.NeighList(bi, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s: %w", bridge.Attrs().Name, err)
	}
	fdb, err := h.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list the forwarding database of %s: %w", bridge.Attrs().Name, err)
	}
	ports := map[string]int{}
	for _, f := range fdb {
		if f.MasterIndex == bi && f.LinkIndex != bi && len(f.HardwareAddr) == 6 {
			ports[f.HardwareAddr.String()] = f.LinkIndex
		}
	}
	veth := map[int]bool{}
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.State&validNeigh == 0 || len(n.HardwareAddr) != 6 {
			continue
		}
		ip = ip.Unmap()
		port, ok := ports[n.HardwareAddr.String()]
		if !ok || !subnet.Contains(ip) {
			continue
		}
		isVeth, seen := veth[port]
		if !seen {
			l, err := h.LinkByIndex(port)
			isVeth = err == nil && l.Type() == "veth"
			veth[port] = isVeth
		}
		if isVeth {
			pods[ip] = Pod{Ifindex: port, MAC: n.HardwareAddr, BridgeMAC: bridge.Attrs().HardwareAddr}
		}
	}
	return pods, nil
}

// WatchPods keeps the pods map current until ctx ends: it rereads the pods
// of the node's subnet (subnet returns false while there is none) after
// every neighbour or forwarding-database change in ns, and every few
// seconds. Errors are logged, not returned: the bridge path still works.
func (p *Path) WatchPods(ctx context.Context, ns netns.NsHandle, subnet func() (netip.Prefix, bool), log *slog.Logger) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle for the pod watch: %w", err)
	}
	defer h.Close()
	events := make(chan netlink.NeighUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	nsCopy := ns
	if err := netlink.NeighSubscribeWithOptions(events, done, netlink.NeighSubscribeOptions{Namespace: &nsCopy,
		ErrorCallback: func(err error) { log.Debug("pod watch: neighbour events", "err", err) }}); err != nil {
		log.Warn("pod watch: no neighbour events; rereading every few seconds", "err", err)
		events = nil
	}
	tick := time.NewTicker(podResync)
	defer tick.Stop()
	var last string
	sync := func() {
		s, ok := subnet()
		if !ok {
			return
		}
		pods, err := DiscoverPods(h, s)
		if err == nil {
			err = p.SetPods(pods)
		}
		if err != nil {
			if msg := err.Error(); msg != last {
				log.Warn("pod watch", "err", err)
				last = msg
			}
			return
		}
		last = ""
	}
	sync()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if debounce == nil {
				debounce = time.After(50 * time.Millisecond)
			}
		case <-debounce:
			debounce = nil
			sync()
		case <-tick.C:
			sync()
		}
	}
}
