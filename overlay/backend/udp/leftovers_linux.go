package udp

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/plan"
)

// RemoveLeftovers removes, in node's namespace, what a udp twilld leaves
// in the kernel when it stops: the persistent TUN twill0 (its address and
// routes go with it) and the kernel path (pinned tcx links and maps, tc
// filters on the underlay). A node whose config changed from udp to
// another backend calls it before that backend prepares (cmd/twilld does),
// so that no twill0 keeps taking the cluster's traffic and no program the
// peers' datagrams. It touches nothing of the other backends (the
// nftables table and routes of other devices stay) and does nothing where
// udp left nothing. A nil log discards.
func RemoveLeftovers(node backend.Node, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var ns netns.NsHandle
	var err error
	if node.NetNS == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(node.NetNS)
	}
	if err != nil {
		return fmt.Errorf("open network namespace %q: %w", node.NetNS, err)
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle in network namespace %q: %w", node.NetNS, err)
	}
	defer nl.Close()
	var errs []error
	if link, err := nl.LinkByName(plan.UDPDevice); err == nil && link.Type() == "tuntap" {
		if err := nl.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete the udp backend's %s: %w", plan.UDPDevice, err))
		} else {
			log.Info("removed the udp backend's device", "device", plan.UDPDevice)
		}
	}
	var devs []string
	if node.Iface != "" {
		devs = append(devs, node.Iface)
	}
	if err := kernelpath.Cleanup(ns, devs...); err != nil {
		errs = append(errs, fmt.Errorf("remove the udp backend's kernel path: %w", err))
	}
	return errors.Join(errs...)
}
