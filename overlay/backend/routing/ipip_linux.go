package routing

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twillnet/twill/overlay/plan"
)

// ErrNoIPIP is returned (wrapped) when the kernel cannot create ipip
// devices.
var ErrNoIPIP = errors.New("the kernel has no ipip support (module ipip not built or not loadable)")

// EnsureIPIP creates or repairs the ipip device twill.ipip (plan.IPIPDevice)
// with local address local, no fixed remote and the given MTU, and brings
// it up: the device of the ipip backend and of the bgp backend's IPIP
// modes. A device of that name that is not such a tunnel is replaced.
func EnsureIPIP(nl *netlink.Handle, log *slog.Logger, local netip.Addr, mtu int, own netip.Prefix) error {
	name := plan.IPIPDevice
	want := &netlink.Iptun{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu},
		Local:     local.AsSlice(),
		PMtuDisc:  1,
	}
	link, err := nl.LinkByName(name)
	if err != nil && !IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err == nil {
		t, ok := link.(*netlink.Iptun)
		why := ""
		switch {
		case !ok:
			why = fmt.Sprintf("a %s device, not ipip", link.Type())
		case !t.Local.Equal(want.Local):
			why = fmt.Sprintf("local %s, want %s", t.Local, local)
		case t.Remote != nil && !t.Remote.IsUnspecified():
			why = fmt.Sprintf("remote %s, want none", t.Remote)
		}
		if why != "" {
			log.Warn("replacing device", "device", name, "reason", why)
			if err := nl.LinkDel(link); err != nil {
				return fmt.Errorf("delete %s (%s): %w", name, why, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		if err := nl.LinkAdd(want); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
				err = fmt.Errorf("%w: %w", ErrNoIPIP, err)
			}
			return fmt.Errorf("create ipip device %s (local %s): %w", name, local, err)
		}
		log.Info("device created", "device", name, "local", local, "mtu", mtu)
		if link, err = nl.LinkByName(name); err != nil {
			return fmt.Errorf("look up %s after creating it: %w", name, err)
		}
	}
	return SetUpDevice(nl, link, mtu, nil, own)
}
