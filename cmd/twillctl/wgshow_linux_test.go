package main

import (
	"net"
	"reflect"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/vmtest"
)

// TestWireGuardDevice: wg-show prints the device's key, port and peers as
// wg show would, a peer's handshake zero before the first (the kernel
// says the epoch), and never a preshared key, only that there is one.
func TestWireGuardDevice(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	psk, _ := wgtypes.GenerateKey()
	hs := time.Date(2026, 12, 1, 16, 0, 0, 0, time.UTC)
	_, subnet, _ := net.ParseCIDR("10.244.7.0/24")
	d := &wgtypes.Device{Name: "flannel-wg", Type: wgtypes.LinuxKernel, PrivateKey: priv, PublicKey: priv.PublicKey(), ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{PublicKey: peer.PublicKey(), PresharedKey: psk, Endpoint: &net.UDPAddr{IP: net.IPv4(192, 168, 56, 12), Port: 51820},
				LastHandshakeTime: hs, ReceiveBytes: 10, TransmitBytes: 20, AllowedIPs: []net.IPNet{*subnet}, ProtocolVersion: 1,
				PersistentKeepaliveInterval: 25 * time.Second},
			{PublicKey: priv.PublicKey(), LastHandshakeTime: time.Unix(0, 0)},
		}}
	want := vmtest.WireGuardDevice{Name: "flannel-wg", Type: "Linux kernel", PublicKey: priv.PublicKey().String(), ListenPort: 51820,
		Peers: []vmtest.WireGuardPeer{
			{PublicKey: peer.PublicKey().String(), PresharedKey: true, Endpoint: "192.168.56.12:51820", AllowedIPs: []string{"10.244.7.0/24"},
				LastHandshake: hs, KeepaliveSeconds: 25, ReceiveBytes: 10, TransmitBytes: 20, ProtocolVersion: 1},
			{PublicKey: priv.PublicKey().String(), AllowedIPs: []string{}},
		}}
	if got := wireGuardDevice(d); !reflect.DeepEqual(got, want) {
		t.Errorf("wireGuardDevice =\n%+v\nwant\n%+v", got, want)
	}
}
