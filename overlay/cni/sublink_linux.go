package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twillnet/twill/overlay/link"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// podGateway is the default gateway of sublink pods: the subnet file's,
// else the master's default route in the node's namespace; invalid if
// neither exists (pods then reach only the segment).
func podGateway(sf subnetfile.File, master netlink.Link) netip.Addr {
	if sf.Sublink.Gateway.IsValid() {
		return sf.Sublink.Gateway
	}
	routes, err := netlinksafe.RouteList(master, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}
	}
	return link.DefaultGateway(routes)
}

// routedMode says the pod's sub-interface does no ARP (ipvlan l3, l3s): its
// default route names the device, not a gateway.
func routedMode(sf subnetfile.File) bool {
	return plan.RoutesPeerSlices(netconf.Backend{Type: sf.Backend, Mode: sf.Sublink.Mode})
}

// attachSublink creates a macvlan or ipvlan sub-interface of the master
// straight in the pod namespace (under a temporary name, then renamed to
// the pod's interface name), gives it the address with the underlay
// subnet's length, so the whole segment is on-link, and a default route via
// the underlay's gateway. It returns the 1.1.0 result.
func attachSublink(sf subnetfile.File, podNS ns.NetNS, owner Attachment, addr netip.Addr) (*types100.Result, error) {
	u := sf.Sublink
	master, err := netlinksafe.LinkByName(u.Master)
	if err != nil {
		return nil, fmt.Errorf("find master interface %s (TWILL_UNDERLAY_MASTER): %w", u.Master, err)
	}
	pod, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netlink in pod namespace %s: %w", podNS.Path(), err)
	}
	defer pod.Close()
	if l, err := pod.LinkByName(owner.IfName); err == nil {
		return nil, fmt.Errorf("pod namespace %s already has an interface %s (%s)", podNS.Path(), owner.IfName, l.Type())
	}
	tmp := VethName(owner)
	if l, err := pod.LinkByName(tmp); err == nil {
		// Left by an ADD that failed half-way.
		if err := pod.LinkDel(l); err != nil {
			return nil, fmt.Errorf("delete leftover %s in pod: %w", tmp, err)
		}
	}
	child, err := link.SubInterface(sf.Backend, u.Mode, netlink.LinkAttrs{
		Name: tmp, ParentIndex: master.Attrs().Index, MTU: sf.MTU, Namespace: netlink.NsFd(podNS.Fd()),
	})
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkAdd(child); err != nil {
		return nil, fmt.Errorf("create %s %s of %s in pod namespace %s: %w", sf.Backend, u.Mode, u.Master, podNS.Path(), err)
	}
	podLink, err := pod.LinkByName(tmp)
	if err != nil {
		return nil, fmt.Errorf("find %s in pod namespace %s: %w", tmp, podNS.Path(), err)
	}
	if err := pod.LinkSetName(podLink, owner.IfName); err != nil {
		return nil, errors.Join(fmt.Errorf("rename %s to %s in pod: %w", tmp, owner.IfName, err), pod.LinkDel(podLink))
	}
	podAddr := netip.PrefixFrom(addr, u.Subnet.Bits())
	n := ipNet(podAddr)
	if err := pod.AddrAdd(podLink, &netlink.Addr{IPNet: &n}); err != nil {
		return nil, errors.Join(fmt.Errorf("add address %s to %s in pod: %w", podAddr, owner.IfName, err), pod.LinkDel(podLink))
	}
	if err := pod.LinkSetUp(podLink); err != nil {
		return nil, errors.Join(fmt.Errorf("bring up %s in pod: %w", owner.IfName, err), pod.LinkDel(podLink))
	}
	if podLink, err = pod.LinkByName(owner.IfName); err != nil {
		return nil, fmt.Errorf("find %s in pod: %w", owner.IfName, err)
	}
	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: owner.IfName, Mac: podLink.Attrs().HardwareAddr.String(), Sandbox: podNS.Path(), Mtu: sf.MTU},
		},
	}
	podIP := &types100.IPConfig{Interface: types100.Int(0), Address: n}
	zero := ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	switch gw := podGateway(sf, master); {
	case routedMode(sf):
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: podLink.Attrs().Index, Dst: &zero, Scope: netlink.SCOPE_LINK}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, errors.Join(fmt.Errorf("add default route dev %s in pod: %w", owner.IfName, err), pod.LinkDel(podLink))
		}
		result.Routes = append(result.Routes, defaultRoute(netip.Addr{}))
	case gw.IsValid():
		podIP.Gateway = net.IP(gw.AsSlice())
		r := defaultRoute(gw)
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: podLink.Attrs().Index, Dst: &r.Dst, Gw: r.GW}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, errors.Join(fmt.Errorf("add default route via %s in pod: %w", gw, err), pod.LinkDel(podLink))
		}
		result.Routes = append(result.Routes, r)
	}
	result.IPs = append(result.IPs, podIP)
	return result, nil
}

// deletePodSubInterface deletes the pod's interface if it is a macvlan or
// ipvlan (a sublink attachment); a veth is left to the node-side delete.
// A pod namespace that is gone is not an error.
func deletePodSubInterface(netnsPath, ifName string) error {
	if netnsPath == "" {
		return nil
	}
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil // the namespace is gone, and the interface with it
	}
	defer podNS.Close()
	pod, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()))
	if err != nil {
		return fmt.Errorf("netlink in pod namespace %s: %w", netnsPath, err)
	}
	defer pod.Close()
	l, err := pod.LinkByName(ifName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s in pod namespace %s: %w", ifName, netnsPath, err)
	}
	if t := l.Type(); t != "macvlan" && t != "ipvlan" {
		return nil
	}
	if err := pod.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s in pod namespace %s: %w", ifName, netnsPath, err)
	}
	return nil
}

// checkSubInterface checks that the pod's interface is a sub-interface of
// the right type, mode and MTU.
func checkSubInterface(sf subnetfile.File, l netlink.Link) error {
	want, err := link.SubInterface(sf.Backend, sf.Sublink.Mode, netlink.LinkAttrs{})
	if err != nil {
		return err
	}
	var errs []error
	switch w := want.(type) {
	case *netlink.Macvlan:
		if got, ok := l.(*netlink.Macvlan); !ok {
			errs = append(errs, fmt.Errorf("interface %s in pod is a %s, not a macvlan", l.Attrs().Name, l.Type()))
		} else if got.Mode != w.Mode {
			errs = append(errs, fmt.Errorf("interface %s in pod is in macvlan mode %d, not %s", l.Attrs().Name, got.Mode, sf.Sublink.Mode))
		}
	case *netlink.IPVlan:
		if got, ok := l.(*netlink.IPVlan); !ok {
			errs = append(errs, fmt.Errorf("interface %s in pod is a %s, not an ipvlan", l.Attrs().Name, l.Type()))
		} else if got.Mode != w.Mode {
			errs = append(errs, fmt.Errorf("interface %s in pod is in ipvlan mode %d, not %s", l.Attrs().Name, got.Mode, sf.Sublink.Mode))
		}
	}
	if l.Attrs().MTU != sf.MTU {
		errs = append(errs, fmt.Errorf("interface %s in pod has MTU %d, not %d", l.Attrs().Name, l.Attrs().MTU, sf.MTU))
	}
	return errors.Join(errs...)
}
