package wireguard

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/overlay/backend/routing"
	"github.com/twillnet/twill/overlay/namespace"
)

// wgDevice is a WireGuard device, in the kernel or in userspace.
type wgDevice interface {
	// configure applies cfg (wgctrl's semantics: peers not named stay).
	configure(cfg wgtypes.Config) error
	// peers reads the device's peers and their counters.
	peers() ([]wgtypes.Peer, error)
	// close releases twilld's side: a userspace device goes with it, a
	// kernel one stays.
	close() error
}

// ErrNoKernelWireGuard is returned (wrapped) when the kernel cannot create
// wireguard links.
var ErrNoKernelWireGuard = errors.New("the kernel cannot create wireguard links (no wireguard module)")

// kernelDevice is kernel WireGuard, configured through wgctrl's generic
// netlink socket, opened in the device's namespace.
type kernelDevice struct {
	name   string
	client *wgctrl.Client
}

// openKernel makes (or keeps) the kernel wireguard link name in ns. It
// fails with ErrNoKernelWireGuard where the kernel has none; a link of that
// name that is not a wireguard link is replaced.
func openKernel(ns netns.NsHandle, nl *netlink.Handle, name string, mtu int, log *slog.Logger) (*kernelDevice, error) {
	if l, err := nl.LinkByName(name); err == nil && l.Type() != "wireguard" {
		log.Warn("replacing device", "device", name, "reason", fmt.Sprintf("a %s device, not wireguard", l.Type()))
		if err := nl.LinkDel(l); err != nil {
			return nil, fmt.Errorf("delete %s: %w", name, err)
		}
	}
	if _, err := nl.LinkByName(name); routing.IsNotFound(err) {
		if err := nl.LinkAdd(&netlink.GenericLink{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, LinkType: "wireguard"}); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w: %w", ErrNoKernelWireGuard, err)
			}
			return nil, fmt.Errorf("create wireguard link %s: %w", name, err)
		}
		log.Info("device created", "device", name, "implementation", "kernel", "mtu", mtu)
	} else if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	d := &kernelDevice{name: name}
	err := namespace.Do(ns, func() (err error) {
		d.client, err = wgctrl.New()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	return d, nil
}

func (d *kernelDevice) configure(cfg wgtypes.Config) error {
	return d.client.ConfigureDevice(d.name, cfg)
}

func (d *kernelDevice) peers() ([]wgtypes.Peer, error) {
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, err
	}
	return dev.Peers, nil
}

func (d *kernelDevice) close() error { return d.client.Close() }

// userDevice is wireguard-go in twilld: a TUN device named as the kernel
// device would be and its UDP sockets, both made in the node's namespace.
type userDevice struct {
	ns  netns.NsHandle
	dev *device.Device
}

// openUserspace creates the TUN device name in ns and starts wireguard-go
// on it. It replaces a link of that name left by someone else.
func openUserspace(ns netns.NsHandle, nl *netlink.Handle, name string, mtu int, log *slog.Logger) (*userDevice, error) {
	if l, err := nl.LinkByName(name); err == nil {
		log.Warn("replacing device", "device", name, "reason", fmt.Sprintf("a %s device left behind", l.Type()))
		if err := nl.LinkDel(l); err != nil && !routing.IsNotFound(err) {
			return nil, fmt.Errorf("delete %s: %w", name, err)
		}
	}
	var t tun.Device
	err := namespace.Do(ns, func() (err error) {
		t, err = tun.CreateTUN(name, mtu)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	logger := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, args ...any) { log.Warn("wireguard-go: " + fmt.Sprintf(format, args...)) },
	}
	d := &userDevice{ns: ns, dev: device.NewDevice(inNetNS{Device: t, ns: ns, events: filterEvents(t.Events())}, conn.NewDefaultBind(), logger)}
	if err := namespace.Do(ns, d.dev.Up); err != nil {
		d.dev.Close()
		return nil, fmt.Errorf("start wireguard-go on %s: %w", name, err)
	}
	log.Info("device created", "device", name, "implementation", "userspace", "mtu", mtu)
	return d, nil
}

// configure runs in the namespace: a listen_port change opens the UDP
// sockets there.
func (d *userDevice) configure(cfg wgtypes.Config) error {
	return namespace.Do(d.ns, func() error { return d.dev.IpcSet(uapiSet(cfg)) })
}

func (d *userDevice) peers() ([]wgtypes.Peer, error) {
	text, err := d.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	return uapiPeers(text)
}

func (d *userDevice) close() error {
	d.dev.Close()
	return nil
}

// inNetNS is a TUN device made for wireguard-go in another namespace than
// the threads it runs on. wireguard-go does not see its up and down
// events: on them it would open its sockets again from whatever thread
// runs its event loop, which is in twilld's namespace and not the node's
// (the backend brings the device up itself, once, in the namespace). Its
// MTU is read in the namespace: the ioctl names the device, which twilld's
// namespace does not have (wireguard-go would assume 1420 and pad a full
// packet past the underlay's MTU).
type inNetNS struct {
	tun.Device
	ns     netns.NsHandle
	events chan tun.Event
}

func (d inNetNS) Events() <-chan tun.Event { return d.events }

func (d inNetNS) MTU() (mtu int, err error) {
	err = namespace.Do(d.ns, func() (err error) {
		mtu, err = d.Device.MTU()
		return err
	})
	return mtu, err
}

// filterEvents passes on the MTU updates of in.
func filterEvents(in <-chan tun.Event) chan tun.Event {
	out := make(chan tun.Event, 1)
	go func() {
		defer close(out)
		for e := range in {
			if e&tun.EventMTUUpdate != 0 {
				out <- tun.EventMTUUpdate
			}
		}
	}()
	return out
}
