package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/vmtest"
)

func init() {
	register("vm wg-show", "(test harness) print a WireGuard device, as wg show would, in JSON: --device NAME", runWGShow)
}

// runWGShow prints one WireGuard device of the namespace it runs in
// (vmtest.WireGuardDevice): the scenarios' wg(8), which the VM image does
// not have.
func runWGShow(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("vm wg-show")
	name := fs.String("device", "", "the WireGuard device, e.g. twill-wg or flannel-wg")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("--device: missing")
	}
	c, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("open wgctrl: %w", err)
	}
	defer c.Close()
	d, err := c.Device(*name)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", *name, err)
	}
	return json.NewEncoder(out).Encode(wireGuardDevice(d))
}

func wireGuardDevice(d *wgtypes.Device) vmtest.WireGuardDevice {
	v := vmtest.WireGuardDevice{Name: d.Name, Type: d.Type.String(), PublicKey: d.PublicKey.String(), ListenPort: d.ListenPort,
		Peers: []vmtest.WireGuardPeer{}}
	for _, p := range d.Peers {
		wp := vmtest.WireGuardPeer{PublicKey: p.PublicKey.String(), PresharedKey: p.PresharedKey != wgtypes.Key{},
			LastHandshake: p.LastHandshakeTime, KeepaliveSeconds: int(p.PersistentKeepaliveInterval.Seconds()),
			ReceiveBytes: p.ReceiveBytes, TransmitBytes: p.TransmitBytes, ProtocolVersion: p.ProtocolVersion, AllowedIPs: []string{}}
		if p.Endpoint != nil {
			wp.Endpoint = p.Endpoint.String()
		}
		if !p.LastHandshakeTime.IsZero() && p.LastHandshakeTime.Unix() <= 0 {
			wp.LastHandshake = time.Time{}
		}
		for _, a := range p.AllowedIPs {
			wp.AllowedIPs = append(wp.AllowedIPs, a.String())
		}
		v.Peers = append(v.Peers, wp)
	}
	return v
}
