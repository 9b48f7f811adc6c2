//go:build !linux

package kernelpath

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netns"
)

// MaxPeers is how many peer subnets the fast path carries.
const MaxPeers = 16384

// Config says where the fast path is attached and what it sends.
type Config struct {
	TUN, Underlay string
	LocalIP       netip.Addr
	Port          uint16
	Attach        string
	PinDir        string
}

// Counters are a peer's fast-path traffic.
type Counters struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	LastReceived                           time.Time
}

// Path is the attached fast path; it exists only on Linux.
type Path struct{}

var errNotLinux = errors.New("the kernel path needs Linux")

// Supported says why the fast path cannot run here.
func Supported() error { return errNotLinux }

// Attach fails off Linux.
func Attach(netns.NsHandle, Config) (*Path, error) { return nil, errNotLinux }

// SetSubnet does nothing off Linux.
func (p *Path) SetSubnet(netip.Prefix) error { return errNotLinux }

// Peer is a peer subnet's entry in the fast path.
type Peer struct {
	PublicIP netip.Addr
	Send     bool
}

// SetPeers does nothing off Linux.
func (p *Path) SetPeers(map[netip.Prefix]Peer) error { return errNotLinux }

// Counters is empty off Linux.
func (p *Path) Counters() (map[netip.Prefix]Counters, error) { return nil, errNotLinux }

// Attachment is empty off Linux.
func (p *Path) Attachment() string { return "" }

// Close does nothing off Linux.
func (p *Path) Close() error { return nil }

// MaxPods is how many local pods the ingress program delivers to directly.
const MaxPods = 4096

// Pod is a pod on this node's bridge.
type Pod struct {
	Ifindex        int
	MAC, BridgeMAC net.HardwareAddr
}

// SetPods does nothing off Linux.
func (p *Path) SetPods(map[netip.Addr]Pod) error { return errNotLinux }

// Pods is empty off Linux.
func (p *Path) Pods() map[netip.Addr]Pod { return nil }

// WatchPods fails off Linux.
func (p *Path) WatchPods(context.Context, netns.NsHandle, func() (netip.Prefix, bool), *slog.Logger) error {
	return errNotLinux
}

// Cleanup does nothing off Linux.
func Cleanup(netns.NsHandle, ...string) error { return nil }

// PinDir fails off Linux.
func PinDir(netns.NsHandle) (string, error) { return "", errNotLinux }

// RemovePins does nothing off Linux.
func RemovePins(string) error { return nil }

// Release does nothing off Linux.
func (p *Path) Release() error { return nil }

// Adopted is false off Linux.
func (p *Path) Adopted() bool { return false }

// Peers is empty off Linux.
func (p *Path) Peers() map[netip.Prefix]Peer { return nil }
