package wireguard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/internal/capture"
	"github.com/twillnet/twill/internal/packet"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/wireguard"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/namespace"
)

// dualConfig is a dual-stack wireguard network of the given Mode.
func dualConfig(mode string) string {
	return `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,` +
		`"Backend":{"Type":"wireguard","Mode":"` + mode + `","PSK":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}`
}

// pingFamily pings every pod from every other over one family (the pods'
// IPv6 addresses with v6) and checks the peer's byte counters grew.
func pingFamily(t *testing.T, rs []*backendtest.Running, v6 bool) {
	t.Helper()
	for _, from := range rs {
		for _, to := range rs {
			if from == to {
				continue
			}
			dst, subnet := to.Node.PodIP, to.Node.Subnet
			if v6 {
				dst, subnet = to.Node.PodIP6, to.Node.Subnet6
			}
			backendtest.Eventually(t, 4*time.Second, func() string {
				if from.Node.Ping(t, dst, 1) == 1 {
					return ""
				}
				return fmt.Sprintf("no ping reply %s -> %s", from.Node.Pod, dst)
			})
			before, _ := from.Peer(subnet)
			if got := from.Node.Ping(t, dst, 5); got != 5 {
				t.Fatalf("ping %s -> %s: %d of 5 replies\n%s", from.Node.Pod, dst, got, from.Node.IP(t, "-6", "route"))
			}
			after, ok := from.Peer(subnet)
			if !ok {
				t.Fatalf("%s lists no peer %s", from.Node.Name, subnet)
			}
			if after.TxBytes-before.TxBytes < 5*84 || after.RxBytes-before.RxBytes < 5*84 || after.LastHandshake.IsZero() {
				t.Errorf("%s peer %s: tx +%d rx +%d bytes, last handshake %v", from.Node.Name, subnet,
					after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes, after.LastHandshake)
			}
		}
	}
}

// checkWireFamily sends marked UDP datagrams from pod 1 to pod 2 (over
// IPv6 with v6) while capturing on node 1's switch port: all arrive, none
// is on the wire in plain text, and WireGuard data messages cross from
// node 1's underlay address src and port to the peer's port.
func checkWireFamily(t *testing.T, lab *backendtest.Lab, rs []*backendtest.Running, v6 bool, src netip.Addr, port uint16) {
	t.Helper()
	network, dst := "udp4", rs[1].Node.PodIP
	if v6 {
		network, dst = "udp6", rs[1].Node.PodIP6
	}
	marker := []byte("twill-wireguard-marker-" + network + "-" + lab.Nodes[0].Name)
	to := rs[1].Node
	var rc net.PacketConn
	if err := namespace.DoName(to.Pod, func() (err error) {
		rc, err = net.ListenPacket(network, net.JoinHostPort(dst.String(), "9999"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var sc net.Conn
	if err := namespace.DoName(rs[0].Node.Pod, func() (err error) {
		sc, err = net.Dial(network, net.JoinHostPort(dst.String(), "9999"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	const count = 20
	received := 0
	frames, err := capture.Frames(lab.Switch, "p1", func() error {
		rc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		for range count {
			sc.Write(marker)
			if n, _, err := rc.ReadFrom(buf); err == nil && bytes.Equal(buf[:n], marker) {
				received++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("capture on the switch port: %v", err)
	}
	if received != count {
		t.Errorf("pod 2 received %d of %d marked datagrams (%s)", received, count, network)
	}
	data, plain := 0, 0
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			plain++
		}
		s, d, payload, ok := packet.UDPOfFrame(f)
		if ok && s.Port() == port && d.Port() == port && s.Addr() == src && packet.IsWireGuardData(payload) {
			data++
		}
	}
	t.Logf("%s pod traffic: captured %d frames on p1: %d WireGuard data messages from %s port %d to port %d, %d with the marker in plain text",
		network, len(frames), data, src, port, port, plain)
	if plain != 0 {
		t.Errorf("%d frames on the underlay carry the pod payload in plain text", plain)
	}
	if data < count {
		t.Errorf("%d WireGuard data messages from %s port %d on the underlay, want at least %d", data, src, port, count)
	}
}

// endpointAndIPs is a peer's endpoint and allowed IPs: "ip:port [a/n b/m]".
func endpointAndIPs(p wgtypes.Peer) string {
	ips := make([]string, len(p.AllowedIPs))
	for i, a := range p.AllowedIPs {
		ips[i] = a.String()
	}
	return fmt.Sprintf("%s [%s]", p.Endpoint, strings.Join(ips, " "))
}

// TestDualStackSeparate: Mode separate, as flannel's: twill-wg on 51820
// for IPv4 and twill-wg-v6 on 51821 for IPv6, whose peers are at their
// PublicIPv6; one key, published in BackendData and BackendV6Data; MTU
// 1420 for both devices and the pods (an IPv6 outer header); pods talk over
// both families, 64 MiB cross over IPv6 intact, and on the IPv6 underlay
// there is WireGuard on port 51821 and no plain text.
func TestDualStackSeparate(t *testing.T) {
	lab := backendtest.New(t, "wgsep", 2)
	lab.AddIPv6(t, true)
	rs := lab.Start(t, parse(t, dualConfig("separate")), stateDirs(t))
	podMTU(t, lab, 1420)
	for _, r := range rs {
		key := r.Backend.(*wireguard.Backend).PublicKey()
		want := `{"PublicKey":"` + key.String() + `"}`
		if string(r.Prepared.BackendData) != want || string(r.Prepared.BackendV6Data) != want {
			t.Errorf("%s BackendData %s BackendV6Data %s, want %s for both", r.Node.Name, r.Prepared.BackendData, r.Prepared.BackendV6Data, want)
		}
		if r.Prepared.MTU != 1420 {
			t.Errorf("%s MTU %d, want 1420", r.Node.Name, r.Prepared.MTU)
		}
		for dev, addr := range map[string]string{"twill-wg": "inet " + r.Node.Subnet.Addr().String() + "/32", "twill-wg-v6": "inet6 " + r.Node.Subnet6.Addr().String() + "/128"} {
			link := r.Node.IP(t, "addr", "show", dev)
			for _, want := range []string{"mtu 1420", addr, ",UP"} {
				if !strings.Contains(link, want) {
					t.Errorf("%s %s lacks %q:\n%s", r.Node.Name, dev, want, link)
				}
			}
		}
		if link := r.Node.IP(t, "-4", "addr", "show", "twill-wg-v6"); strings.Contains(link, "inet ") {
			t.Errorf("%s twill-wg-v6 has an IPv4 address:\n%s", r.Node.Name, link)
		}
	}
	n1, n2 := rs[0].Node, rs[1].Node
	if got := n1.IP(t, "-6", "route", "show", n2.Subnet6.String()); !strings.Contains(got, n2.Subnet6.String()+" dev twill-wg-v6 proto 126") {
		t.Errorf("IPv6 route to the peer: %q", got)
	}
	if got := n1.IP(t, "route", "show", n2.Subnet.String()); !strings.Contains(got, n2.Subnet.String()+" dev twill-wg proto 126") {
		t.Errorf("IPv4 route to the peer: %q", got)
	}
	b1 := rs[0].Backend.(*wireguard.Backend)
	for dev, want := range map[string]string{
		"twill-wg":    fmt.Sprintf("%s:51820 [%s]", n2.PublicIP, n2.Subnet),
		"twill-wg-v6": fmt.Sprintf("[%s]:51821 [%s]", n2.PublicIPv6, n2.Subnet6),
	} {
		peers, err := b1.PeersOf(dev)
		if err != nil || len(peers) != 1 {
			t.Fatalf("%s peers of %s: %v, %v", n1.Name, dev, peers, err)
		}
		p := peers[0]
		if got := endpointAndIPs(p); got != want || p.PublicKey != rs[1].Backend.(*wireguard.Backend).PublicKey() {
			t.Errorf("%s peer on %s: %s key %s, want %s key %s", n1.Name, dev, got, p.PublicKey, want, rs[1].Backend.(*wireguard.Backend).PublicKey())
		}
	}
	pingFamily(t, rs, false)
	pingFamily(t, rs, true)
	took := backendtest.BulkTransfer6(t, n1, n2, 64<<20)
	t.Logf("64 MiB pod to pod over IPv6 in %v (%.0f Mbit/s)", took, 64*8*1.048576/took.Seconds())
	checkWireFamily(t, lab, rs, true, n1.PublicIPv6, 51821)
	checkWire(t, lab, rs) // IPv4 still rides twill-wg, port 51820

	// A new key in node 2's lease replaces the old one on both devices in
	// that one lease event.
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	newKey := priv.PublicKey()
	changed := rs[1].Lease
	changed.Attrs.BackendData = json.RawMessage(`{"PublicKey":"` + newKey.String() + `"}`)
	changed.Attrs.BackendV6Data = changed.Attrs.BackendData
	if err := b1.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: changed}}); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"twill-wg", "twill-wg-v6"} {
		peers, err := b1.PeersOf(dev)
		if err != nil || len(peers) != 1 || peers[0].PublicKey != newKey {
			t.Errorf("%s peers of %s after the key changed: %v, %v; want only %s", n1.Name, dev, peers, err, newKey)
		}
	}

	// The IPv6 peer goes with its lease, from twill-wg-v6 too.
	backendtest.CheckPeerExpires(t, rs)
	for _, dev := range []string{"twill-wg", "twill-wg-v6"} {
		if peers, _ := b1.PeersOf(dev); len(peers) != 0 {
			t.Errorf("the expired peer is still on %s: %v", dev, peers)
		}
	}
	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, "twill-wg") {
		t.Errorf("devices left after Cleanup:\n%s", got)
	}
}

// TestDualStackAuto: Mode auto keeps both families on twill-wg, one peer
// per node with both subnets as allowed IPs, at the endpoint the underlay
// suggests: between nodes whose IPv4 is private and IPv6 unique local,
// flannel's choice is the IPv4 address; MTU 1420 (a peer may be over
// IPv6). Pods talk over both families, 64 MiB cross over IPv6, and the
// IPv6 pod traffic is WireGuard on the IPv4 underlay, port 51820.
func TestDualStackAuto(t *testing.T) {
	lab := backendtest.New(t, "wgauto", 2)
	lab.AddIPv6(t, true)
	rs := lab.Start(t, parse(t, dualConfig("auto")), stateDirs(t))
	podMTU(t, lab, 1420)
	n1, n2 := rs[0].Node, rs[1].Node
	for _, r := range rs {
		if r.Prepared.MTU != 1420 {
			t.Errorf("%s MTU %d, want 1420", r.Node.Name, r.Prepared.MTU)
		}
		link := r.Node.IP(t, "addr", "show", "twill-wg")
		for _, want := range []string{"mtu 1420", "inet " + r.Node.Subnet.Addr().String() + "/32", "inet6 " + r.Node.Subnet6.Addr().String() + "/128"} {
			if !strings.Contains(link, want) {
				t.Errorf("%s twill-wg lacks %q:\n%s", r.Node.Name, want, link)
			}
		}
		if got := r.Node.IP(t, "-o", "link", "show"); strings.Contains(got, "twill-wg-v6") {
			t.Errorf("%s has twill-wg-v6 in Mode auto", r.Node.Name)
		}
	}
	if got := n1.IP(t, "-6", "route", "show", n2.Subnet6.String()); !strings.Contains(got, n2.Subnet6.String()+" dev twill-wg proto 126") {
		t.Errorf("IPv6 route to the peer: %q", got)
	}
	peers, err := rs[0].Backend.(*wireguard.Backend).Peers()
	if err != nil || len(peers) != 1 {
		t.Fatalf("peers: %v, %v", peers, err)
	}
	if got, want := endpointAndIPs(peers[0]), fmt.Sprintf("%s:51820 [%s %s]", n2.PublicIP, n2.Subnet, n2.Subnet6); got != want {
		t.Errorf("the one peer: %s, want %s", got, want)
	}
	pingFamily(t, rs, false)
	pingFamily(t, rs, true)
	took := backendtest.BulkTransfer6(t, n1, n2, 64<<20)
	t.Logf("64 MiB pod to pod over IPv6 in %v (%.0f Mbit/s)", took, 64*8*1.048576/took.Seconds())
	checkWireFamily(t, lab, rs, true, n1.PublicIP, 51820)
}

// TestDualStackIPv6Mode: Mode ipv6 reaches the peers at their PublicIPv6
// on twill-wg (ListenPort), IPv4 pod traffic included: pods ping over both
// families, and the IPv4 pod traffic is WireGuard on the IPv6 underlay.
func TestDualStackIPv6Mode(t *testing.T) {
	lab := backendtest.New(t, "wgv6", 2)
	lab.AddIPv6(t, true)
	rs := lab.Start(t, parse(t, dualConfig("ipv6")), stateDirs(t))
	podMTU(t, lab, 1420)
	n2 := rs[1].Node
	peers, err := rs[0].Backend.(*wireguard.Backend).Peers()
	if err != nil || len(peers) != 1 {
		t.Fatalf("peers: %v, %v", peers, err)
	}
	if got, want := endpointAndIPs(peers[0]), fmt.Sprintf("[%s]:51820 [%s %s]", n2.PublicIPv6, n2.Subnet, n2.Subnet6); got != want {
		t.Errorf("the one peer: %s, want %s", got, want)
	}
	pingFamily(t, rs, false)
	pingFamily(t, rs, true)
	checkWireFamily(t, lab, rs, false, rs[0].Node.PublicIPv6, 51820)
	checkWireFamily(t, lab, rs, true, rs[0].Node.PublicIPv6, 51820)
}
