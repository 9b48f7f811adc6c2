package wireguard

import (
	"encoding/hex"
	"net"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func hexOf(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

func mustUDP(s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func mustNets(ss ...string) []net.IPNet {
	var out []net.IPNet
	for _, s := range ss {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			panic(err)
		}
		out = append(out, *n)
	}
	return out
}

func TestUAPIText(t *testing.T) {
	priv, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	pub := peer.PublicKey()
	port, keepalive := 51820, 25*time.Second
	cfg := wgtypes.Config{PrivateKey: &priv, ListenPort: &port, Peers: []wgtypes.PeerConfig{
		{PublicKey: pub, Remove: true},
		{PublicKey: pub, PresharedKey: &priv, Endpoint: mustUDP("192.168.56.12:51820"), PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs: true, AllowedIPs: mustNets("10.244.2.0/24", "10.244.7.0/24")},
	}}
	got := uapiSet(cfg)
	want := "private_key=" + hexOf(priv) + "\nlisten_port=51820\npublic_key=" + hexOf(pub) + "\nremove=true\n" +
		"public_key=" + hexOf(pub) + "\npreshared_key=" + hexOf(priv) + "\nendpoint=192.168.56.12:51820\n" +
		"persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=10.244.7.0/24\n"
	if got != want {
		t.Errorf("uapiSet:\n%s\nwant:\n%s", got, want)
	}
	get := "private_key=" + hexOf(priv) + "\nlisten_port=51820\npublic_key=" + hexOf(pub) + "\npreshared_key=" + hexOf(priv) +
		"\nprotocol_version=1\nendpoint=192.168.56.12:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n" +
		"tx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=25\nallowed_ip=10.244.2.0/24\nerrno=0\n"
	peers, err := uapiPeers(get)
	if err != nil || len(peers) != 1 {
		t.Fatalf("uapiPeers: %v, %v", peers, err)
	}
	p := peers[0]
	if p.PublicKey != pub || p.PresharedKey != priv || p.Endpoint.String() != "192.168.56.12:51820" || p.TransmitBytes != 1000 ||
		p.ReceiveBytes != 2000 || !p.LastHandshakeTime.Equal(time.Unix(1700000000, 5)) || p.PersistentKeepaliveInterval != keepalive ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "10.244.2.0/24" {
		t.Errorf("uapiPeers: %+v", p)
	}
	if _, err := uapiPeers("public_key=zz\n"); err == nil {
		t.Error("a bad key: no error")
	}
}
