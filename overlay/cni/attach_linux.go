package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/link"
	"github.com/twillnet/twill/overlay/subnetfile"
)

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// ensureBridge creates the bridge if it is missing, with a fixed MAC, sets
// its MTU, gives it the gateway address (replacing addresses of an old node
// subnet) and brings it up. The caller holds the store lock, so plugin runs
// do not race here.
func ensureBridge(conf Conf, sf subnetfile.File, store *Store, log *slog.Logger) (netlink.Link, error) {
	name := conf.Bridge
	link, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: sf.MTU, TxQLen: -1, HardwareAddr: BridgeMAC(bridgeGateway(sf))}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		link, err = netlinksafe.LinkByName(name)
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %s: exists but is a %s, not a bridge", name, link.Type())
	}
	if err := fixBridgeMAC(link, sf, store, log); err != nil {
		return nil, err
	}
	if link.Attrs().MTU != sf.MTU {
		if err := netlink.LinkSetMTU(link, sf.MTU); err != nil {
			return nil, fmt.Errorf("set bridge %s mtu %d: %w", name, sf.MTU, err)
		}
	}
	if sf.IPv6Subnet.IsValid() {
		if err := noBridgeDAD(name); err != nil {
			return nil, err
		}
	}
	if conf.IsGateway {
		// A gateway address, with its subnet's length, per family the node
		// has; the bridge's other addresses of that family are an old
		// subnet's.
		for _, gw := range podSubnets(sf) {
			if err := setBridgeGateway(link, gw, log); err != nil {
				return nil, err
			}
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	return netlinksafe.LinkByName(name)
}

// noBridgeDAD turns duplicate address detection off on the bridge, before
// it is up, so that the link-local address the kernel gives it when its
// first port comes up is usable at once. While that address is tentative
// (a second or two after the first pod starts) the node sends no neighbour
// solicitation on the bridge (the kernel needs a non-tentative link-local
// source for one when it forwards), so IPv6 packets forwarded to a pod the
// node has not heard from yet are dropped: a remote pod's first pings to a
// new node's pod got no reply. The link-local address derives from the
// bridge's MAC, unique on the bridge.
func noBridgeDAD(bridge string) error {
	path := "/proc/sys/net/ipv6/conf/" + bridge + "/accept_dad"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "0" {
		return nil
	}
	if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("turn off IPv6 duplicate address detection on bridge %s (%s): %w", bridge, path, err)
	}
	return nil
}

// setBridgeGateway gives the bridge the gateway address gw and removes its
// other addresses of gw's family (link-local ones stay).
func setBridgeGateway(link netlink.Link, gw netip.Prefix, log *slog.Logger) error {
	name := link.Attrs().Name
	addrs, err := netlinksafe.AddrList(link, family(gw.Addr()))
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p == gw {
			have = true
			continue
		}
		log.Warn("removing address of another subnet from the bridge", "bridge", name, "old", p, "new", gw)
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove old address %s from bridge %s: %w", p, name, err)
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, podAddress(gw)); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add address %s to bridge %s: %w", gw, name, err)
		}
	}
	return nil
}

// podAddress is p as an address to add. An IPv6 address skips duplicate
// address detection: the plugin's allocations are unique in the subnet, and
// an address would otherwise stay tentative, unusable, for a second or more
// after the pod starts.
func podAddress(p netip.Prefix) *netlink.Addr {
	n := ipNet(p)
	a := &netlink.Addr{IPNet: &n}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// bridgeGateway is the gateway address the bridge's MAC derives from: the
// IPv4 one, or on an IPv6-only node the IPv6 one.
func bridgeGateway(sf subnetfile.File) netip.Addr {
	if sf.Subnet.IsValid() {
		return sf.Gateway()
	}
	return sf.IPv6Gateway()
}

// BridgeMAC is the MAC a new bridge gets: 0a:58 and the gateway address (of
// an IPv6 gateway its last four bytes), a locally administered unicast
// address that stays the same for the node's subnet.
//
// A Linux bridge whose MAC was never set takes the lowest MAC of its ports:
// a new pod whose veth has a lower MAC would change the gateway's MAC under
// the other pods, whose ARP entries then point at a port, and their frames
// would be lost until ARP resolved again. A MAC that was set stays.
func BridgeMAC(gateway netip.Addr) net.HardwareAddr {
	a := gateway.As16() // an IPv4 address is its last four bytes
	return net.HardwareAddr{0x0a, 0x58, a[12], a[13], a[14], a[15]}
}

// bridgeMACFile, in the store's directory, records the MAC the plugin fixed
// on a bridge it did not create (one made before this version, or by
// someone else): "<bridge> <mac>".
const bridgeMACFile = "bridge-mac"

// fixBridgeMAC makes sure the bridge's MAC was set, so that it no longer
// follows its ports. A bridge with the derived MAC, or with the one recorded
// when it was fixed, is left alone; any other has its current MAC set to
// itself (nothing changes on the wire, so the pods' ARP entries stay right)
// and recorded. The caller holds the store lock.
func fixBridgeMAC(link netlink.Link, sf subnetfile.File, store *Store, log *slog.Logger) error {
	name, mac := link.Attrs().Name, link.Attrs().HardwareAddr
	record := filepath.Join(store.Dir(), bridgeMACFile)
	if slices.Equal(mac, BridgeMAC(bridgeGateway(sf))) {
		return nil
	}
	want := name + " " + mac.String()
	if b, err := os.ReadFile(record); err == nil && strings.TrimSpace(string(b)) == want {
		return nil
	}
	if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
		return fmt.Errorf("fix the MAC %s of bridge %s: %w", mac, name, err)
	}
	if err := os.WriteFile(record, []byte(want+"\n"), 0o644); err != nil {
		return fmt.Errorf("record the MAC of bridge %s: %w", name, err)
	}
	log.Info("fixed the bridge's MAC, so that new pods' veths cannot change it", "bridge", name, "mac", mac.String())
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	return link.Prefix(n)
}

// attach creates the veth pair (the pod end born in the pod namespace under
// its final name), puts the node end on the bridge, and configures the pod
// end's addresses (addrs, one per podSubnets) and a default route per
// family. It returns the 1.1.0 result.
func attach(conf Conf, sf subnetfile.File, bridge netlink.Link, podNS ns.NetNS, owner Attachment, addrs []netip.Addr) (*types100.Result, error) {
	hostName := VethName(owner)
	// A second ADD for the same attachment starts over; deleting the node
	// end deletes the pod end with it.
	if err := deleteLink(hostName); err != nil {
		return nil, err
	}
	pod, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netlink in pod namespace %s: %w", podNS.Path(), err)
	}
	defer pod.Close()
	if l, err := pod.LinkByName(owner.IfName); err == nil {
		return nil, fmt.Errorf("pod namespace %s already has an interface %s (%s)", podNS.Path(), owner.IfName, l.Type())
	}

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MTU: sf.MTU, TxQLen: -1},
		PeerName:      owner.IfName,
		PeerMTU:       uint32(sf.MTU),
		PeerNamespace: netlink.NsFd(podNS.Fd()),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s with peer %s in %s: %w", hostName, owner.IfName, podNS.Path(), err)
	}
	host, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", hostName, err)
	}
	if err := netlink.LinkSetMaster(host, bridge); err != nil {
		return nil, fmt.Errorf("put veth %s on bridge %s: %w", hostName, conf.Bridge, err)
	}
	if conf.HairpinMode {
		if err := netlink.LinkSetHairpin(host, true); err != nil {
			return nil, fmt.Errorf("set hairpin on %s: %w", hostName, err)
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("bring up veth %s: %w", hostName, err)
	}

	podLink, err := pod.LinkByName(owner.IfName)
	if err != nil {
		return nil, fmt.Errorf("find %s in pod namespace %s: %w", owner.IfName, podNS.Path(), err)
	}
	subnets := podSubnets(sf)
	for i, addr := range addrs {
		podAddr := netip.PrefixFrom(addr, subnets[i].Bits())
		if err := pod.AddrAdd(podLink, podAddress(podAddr)); err != nil {
			return nil, fmt.Errorf("add address %s to %s in pod: %w", podAddr, owner.IfName, err)
		}
	}
	if err := pod.LinkSetUp(podLink); err != nil {
		return nil, fmt.Errorf("bring up %s in pod: %w", owner.IfName, err)
	}
	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: conf.Bridge, Mac: bridge.Attrs().HardwareAddr.String()},
			{Name: hostName, Mac: host.Attrs().HardwareAddr.String()},
			{Name: owner.IfName, Mac: podLink.Attrs().HardwareAddr.String(), Sandbox: podNS.Path(), Mtu: sf.MTU},
		},
	}
	for i, addr := range addrs {
		podIP := &types100.IPConfig{Interface: types100.Int(2), Address: ipNet(netip.PrefixFrom(addr, subnets[i].Bits()))}
		if conf.IsGateway {
			gw := subnets[i].Addr()
			podIP.Gateway = net.IP(gw.AsSlice())
			r := defaultRoute(gw)
			if err := pod.RouteAdd(&netlink.Route{LinkIndex: podLink.Attrs().Index, Dst: &r.Dst, Gw: r.GW}); err != nil && !errors.Is(err, syscall.EEXIST) {
				return nil, fmt.Errorf("add default route via %s in pod: %w", gw, err)
			}
			result.Routes = append(result.Routes, r)
		}
		result.IPs = append(result.IPs, podIP)
	}
	return result, nil
}

// deleteLink deletes a link of the node's namespace if it exists.
func deleteLink(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// removeStaleVeths deletes veths on the bridge that carry the plugin's name
// prefix and belong to no valid attachment.
func removeStaleVeths(bridgeName string, valid map[string]bool) ([]string, error) {
	br, err := netlinksafe.LinkByName(bridgeName)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", bridgeName, err)
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index || l.Type() != "veth" || !strings.HasPrefix(a.Name, vethPrefix) || len(a.Name) != len(vethPrefix)+12 || valid[a.Name] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stale veth %s: %w", a.Name, err))
			continue
		}
		removed = append(removed, a.Name)
	}
	return removed, errors.Join(errs...)
}

// check compares the kernel and the store with a previous result.
func check(conf Conf, sf subnetfile.File, podNS ns.NetNS, store *Store, owner Attachment, prev *types100.Result, log *slog.Logger) error {
	var errs []error
	missing := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	pod, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return fmt.Errorf("netlink in pod namespace %s: %w", podNS.Path(), err)
	}
	defer pod.Close()

	var br netlink.Link
	if sf.IsSublink() {
		// No bridge: the pod's interface hangs off the master.
	} else if br, err = netlinksafe.LinkByName(conf.Bridge); err != nil {
		missing("bridge %s is missing: %v", conf.Bridge, err)
	} else if conf.IsGateway {
		for _, gw := range podSubnets(sf) {
			addrs, err := netlinksafe.AddrList(br, family(gw.Addr()))
			found := false
			for _, a := range addrs {
				if p, ok := prefixOf(a.IPNet); ok && p == gw {
					found = true
				}
			}
			if err != nil || !found {
				missing("bridge %s lacks its gateway address %s", conf.Bridge, gw)
			}
		}
	}
	if br != nil {
		// A bridge whose MAC still follows its ports is repaired here: the
		// next pod could change the gateway's MAC under every other pod.
		err := func() error {
			unlock, err := store.Lock()
			if err != nil {
				return err
			}
			defer unlock()
			return fixBridgeMAC(br, sf, store, log)
		}()
		if err != nil {
			errs = append(errs, err)
		}
	}

	podIdx := -1
	var podLink netlink.Link
	for i, ifc := range prev.Interfaces {
		switch {
		case ifc.Sandbox != "":
			if ifc.Name != owner.IfName {
				continue
			}
			podIdx = i
			l, err := pod.LinkByName(ifc.Name)
			if err != nil {
				missing("interface %s is missing in pod namespace %s", ifc.Name, podNS.Path())
				continue
			}
			podLink = l
			if ifc.Mac != "" && l.Attrs().HardwareAddr.String() != ifc.Mac {
				missing("interface %s in pod has MAC %s, not %s", ifc.Name, l.Attrs().HardwareAddr, ifc.Mac)
			}
			if l.Attrs().OperState == netlink.OperDown || l.Attrs().Flags&net.FlagUp == 0 {
				missing("interface %s in pod is down", ifc.Name)
			}
			if sf.IsSublink() {
				if err := checkSubInterface(sf, l); err != nil {
					errs = append(errs, err)
				}
			}
		case ifc.Name == conf.Bridge:
		default:
			l, err := netlinksafe.LinkByName(ifc.Name)
			if err != nil {
				missing("veth %s is missing on the node", ifc.Name)
				continue
			}
			if br != nil && l.Attrs().MasterIndex != br.Attrs().Index {
				missing("veth %s is not on bridge %s", ifc.Name, conf.Bridge)
			}
		}
	}
	if podIdx < 0 {
		missing("prevResult has no interface %s in a sandbox", owner.IfName)
	}

	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface != podIdx {
			continue
		}
		want, ok := prefixOf(&ipc.Address)
		if !ok {
			missing("prevResult address %s does not parse", ipc.Address.String())
			continue
		}
		if podLink != nil {
			addrs, err := pod.AddrList(podLink, family(want.Addr()))
			found := false
			for _, a := range addrs {
				if p, ok := prefixOf(a.IPNet); ok && p == want {
					found = true
				}
			}
			if err != nil || !found {
				missing("address %s is missing on %s in pod", want, owner.IfName)
			}
		}
		who, held, err := store.Owner(want.Addr())
		switch {
		case err != nil:
			errs = append(errs, err)
		case !held:
			missing("address %s has no allocation in %s", want.Addr(), store.Dir())
		case who != owner:
			missing("address %s is allocated to %s, not %s", want.Addr(), who, owner)
		}
	}

	if podLink != nil {
		for _, r := range prev.Routes {
			want, ok := prefixOf(&r.Dst)
			if !ok {
				continue
			}
			routes, err := pod.RouteList(podLink, family(want.Addr()))
			found := false
			for _, kr := range routes {
				dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				if want.Addr().Is6() {
					dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
				if kr.Dst != nil {
					dst, _ = prefixOf(kr.Dst)
				}
				if dst == want && (r.GW == nil || r.GW.Equal(kr.Gw)) {
					found = true
				}
			}
			if err != nil || !found {
				missing("route to %s via %s is missing in pod", want, r.GW)
			}
		}
	}
	return errors.Join(errs...)
}

// sameNS says whether two namespace file descriptors name one namespace.
func sameNS(a, b uintptr) (bool, error) {
	var sa, sb syscall.Stat_t
	if err := syscall.Fstat(int(a), &sa); err != nil {
		return false, fmt.Errorf("stat network namespace: %w", err)
	}
	if err := syscall.Fstat(int(b), &sb); err != nil {
		return false, fmt.Errorf("stat network namespace: %w", err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}
