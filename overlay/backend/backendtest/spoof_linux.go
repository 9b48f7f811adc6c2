package backendtest

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/packet"
	"github.com/twillnet/twill/overlay/namespace"
)

// VXLANFrame is a VXLAN datagram's payload carrying one inner UDP datagram
// (payload msg) from src to dst, to the VTEP MAC dstMAC on VNI vni: what a
// peer's kernel sends, and what anyone who can reach the port could forge.
func VXLANFrame(vni int, dstMAC net.HardwareAddr, src, dst netip.AddrPort, msg []byte) []byte {
	return packet.VXLAN(vni, dstMAC, src, dst, msg)
}

// CheckSpoofedVXLAN sends forged VXLAN datagrams to r's node from a host on
// the underlay that is no peer (192.168.56.66, a namespace of its own on
// the lab's switch), each carrying a datagram to r's pod with the peer's
// pod as its source; none may reach the pod, the node must count them as
// unknown-peer drops, and the peer's rx counter must not move. The same
// datagrams sent from the peer's own address (a control that the frame is
// one the kernel takes) do reach the pod.
func CheckSpoofedVXLAN(tb testing.TB, l *Lab, r, peer *Running, vni int, mac net.HardwareAddr) {
	tb.Helper()
	attacker := l.netns(tb, "spoofer")
	Run(tb, "ip", "-n", l.Switch, "link", "add", "spoof0", "type", "veth", "peer", "name", "eth0", "netns", attacker)
	Run(tb, "ip", "-n", l.Switch, "link", "set", "spoof0", "master", "br0", "up")
	Run(tb, "ip", "-n", attacker, "addr", "add", "192.168.56.66/24", "dev", "eth0")
	Run(tb, "ip", "-n", attacker, "link", "set", "eth0", "up")

	var pod *net.UDPConn
	target := netip.AddrPortFrom(r.Node.PodIP, 7777)
	if err := namespace.DoPath("/run/netns/"+r.Node.Pod, func() (err error) {
		pod, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(target))
		return err
	}); err != nil {
		tb.Fatalf("listen in %s: %v", r.Node.Pod, err)
	}
	defer pod.Close()
	send := func(ns string, from netip.Addr, msg string, n int) {
		tb.Helper()
		frame := VXLANFrame(vni, mac, netip.AddrPortFrom(peer.Node.PodIP, 4444), target, []byte(msg))
		err := namespace.DoPath("/run/netns/"+ns, func() error {
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)),
				net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.Node.PublicIP, 8472)))
			if err != nil {
				return err
			}
			defer c.Close()
			for range n {
				if _, err := c.Write(frame); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatalf("send VXLAN from %s: %v", from, err)
		}
	}
	received := func(wait time.Duration) map[string]int {
		got := map[string]int{}
		buf := make([]byte, 2000)
		for {
			pod.SetReadDeadline(time.Now().Add(wait))
			n, err := pod.Read(buf)
			if err != nil {
				return got
			}
			got[string(buf[:n])]++
		}
	}
	peerRx := func() uint64 {
		p, _ := r.Peer(peer.Node.Subnet)
		return p.RxPackets
	}
	dropsBefore, rxBefore := r.Backend.Status().Drops["unknown-peer"], peerRx()
	send(attacker, netip.MustParseAddr("192.168.56.66"), "spoofed", 5)
	if got := received(time.Second); len(got) != 0 {
		tb.Errorf("forged VXLAN from a host that is no peer reached the pod: %v", got)
	}
	Eventually(tb, 5*time.Second, func() string {
		if d := r.Backend.Status().Drops["unknown-peer"] - dropsBefore; d != 5 {
			return fmt.Sprintf("unknown-peer drops grew by %d, want 5", d)
		}
		return ""
	})
	if d := peerRx() - rxBefore; d != 0 {
		tb.Errorf("the peer's rx counter grew by %d for datagrams it never sent", d)
	}
	send(peer.Node.Name, peer.Node.PublicIP, "from the peer", 3)
	if got := received(2 * time.Second); got["from the peer"] != 3 {
		tb.Errorf("the same frames from the peer's address: the pod got %v, want 3 (the forged frame is not one the kernel takes?)", got)
	}
	if d := peerRx() - rxBefore; d < 3 {
		tb.Errorf("the peer's rx counter grew by %d after 3 datagrams from it", d)
	}
}
