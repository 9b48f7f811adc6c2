package nft

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/namespace"
	"github.com/twillnet/twill/overlay/namespace/nstest"
)

// TestTunnelGuardUDP: VXLAN-like datagrams to the tunnel port reach the
// node only from a peer's public IP; those from any other address are
// dropped and counted, and the admitted ones are counted by source.
func TestTunnelGuardUDP(t *testing.T) {
	c := newCluster(t)
	spoofer := netip.MustParseAddr("192.168.56.3")
	ipCmd(t, "-n", c.peer, "addr", "add", spoofer.String()+"/32", "dev", "u0")
	rules := Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Peers: []netip.Prefix{peerSubnet},
		Tunnel: &Tunnel{Proto: ProtoUDP, Port: 8472, Sources: []netip.Addr{peerUnderlay, netip.MustParseAddr("192.168.56.9")}}}
	if err := c.table.Apply(rules); err != nil {
		t.Fatalf("apply: %v", err)
	}
	listener := udpListen(t, c.node, 8472)
	other := udpListen(t, c.node, 9999)
	dst := netip.AddrPortFrom(nodeUnderlay, 8472)
	const payload = 50
	send := func(src netip.Addr, to netip.AddrPort, n int) {
		conn := udpDial(t, c.peer, src, to)
		for range n {
			if _, err := conn.Write(make([]byte, payload)); err != nil {
				t.Fatalf("send from %s: %v", src, err)
			}
		}
	}
	send(peerUnderlay, dst, 5)
	send(spoofer, dst, 7)
	send(spoofer, netip.AddrPortFrom(nodeUnderlay, 9999), 2) // another port: not the guard's business
	got := map[netip.Addr]int{}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(5 * time.Second) // the machine may be busy: wait for the peer's five
	for {
		if got[peerUnderlay] >= 5 {
			deadline = time.Now().Add(300 * time.Millisecond) // and then a little for anything else
		}
		listener.SetReadDeadline(deadline)
		_, from, err := listener.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		got[from.Addr().Unmap()]++
	}
	if got[peerUnderlay] != 5 || got[spoofer] != 0 {
		t.Errorf("the tunnel port received %v; want 5 from the peer and none from %s", got, spoofer)
	}
	other.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := other.ReadFromUDPAddrPort(buf); err != nil {
		t.Errorf("a datagram to another port from %s was dropped: %v", spoofer, err)
	}
	tc, err := c.table.Tunnel()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Counter{5, 5 * (payload + 28)}); tc.Sources[peerUnderlay] != want {
		t.Errorf("admitted from %s: %+v, want %+v", peerUnderlay, tc.Sources[peerUnderlay], want)
	}
	if want := (Counter{7, 7 * (payload + 28)}); tc.Dropped != want {
		t.Errorf("dropped: %+v, want %+v", tc.Dropped, want)
	}
	if _, ok := tc.Sources[netip.MustParseAddr("192.168.56.9")]; !ok || len(tc.Sources) != 2 {
		t.Errorf("sources %v, want the two peers", tc.Sources)
	}

	// Peers come and go: the counters of those that stay are kept, and the
	// drop counter too.
	rules.Tunnel.Sources = []netip.Addr{peerUnderlay, netip.MustParseAddr("192.168.56.10")}
	rules.Peers = append(rules.Peers, netip.MustParsePrefix("10.244.3.0/24"))
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	tc, _ = c.table.Tunnel()
	if tc.Sources[peerUnderlay].Packets != 5 || tc.Dropped.Packets != 7 || len(tc.Sources) != 2 {
		t.Errorf("after a change of peers: %+v", tc)
	}
	// The spoofer becomes a peer: its datagrams pass.
	rules.Tunnel.Sources = append(rules.Tunnel.Sources, spoofer)
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	if src := sourceSeen(t, c.peer, spoofer, dst, listener); src != spoofer {
		t.Errorf("datagram from the new peer seen from %s", src)
	}

	// Without a Tunnel the guard and its set go; anyone reaches the port.
	rules.Tunnel = nil
	if err := c.table.Apply(rules); err != nil {
		t.Fatal(err)
	}
	kt := readTable(t, c.node)
	if slices.ContainsFunc(ruleComments(kt.rules[chainInput]), func(s string) bool { return s != "ip saddr @peers-rx" }) {
		t.Errorf("input chain without a tunnel: %q", ruleComments(kt.rules[chainInput]))
	}
	if _, ok := kt.elements[setSources]; ok {
		t.Errorf("set %s still there without a tunnel", setSources)
	}
	if src := sourceSeen(t, c.peer, netip.MustParseAddr("192.168.56.3"), dst, listener); src != spoofer {
		t.Errorf("without a guard the datagram came from %s", src)
	}
}

// TestTunnelGuardIPIP: IP-in-IP packets (protocol 4) from a non-peer are
// dropped before decapsulation; those from a peer are counted.
func TestTunnelGuardIPIP(t *testing.T) {
	c := newCluster(t)
	spoofer := netip.MustParseAddr("192.168.56.3")
	ipCmd(t, "-n", c.peer, "addr", "add", spoofer.String()+"/32", "dev", "u0")
	rules := Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Peers: []netip.Prefix{peerSubnet},
		Tunnel: &Tunnel{Proto: ProtoIPIP, Sources: []netip.Addr{peerUnderlay}}}
	if err := c.table.Apply(rules); err != nil {
		t.Fatalf("apply: %v", err)
	}
	// An inner IPv4 header (20 bytes) from a peer pod to the local pod.
	inner := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 2, 1, 10, 244, 1, 2}
	send := func(src netip.Addr, n int) {
		err := namespace.DoName(c.peer, func() error {
			pc, err := net.ListenPacket("ip4:4", src.String())
			if err != nil {
				return err
			}
			defer pc.Close()
			for range n {
				if _, err := pc.WriteTo(inner, &net.IPAddr{IP: nodeUnderlay.AsSlice()}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("send IP-in-IP from %s: %v", src, err)
		}
	}
	send(peerUnderlay, 3)
	send(spoofer, 4)
	var tc TunnelCounters
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
		var err error
		if tc, err = c.table.Tunnel(); err != nil {
			t.Fatal(err)
		}
		if tc.Sources[peerUnderlay].Packets+tc.Dropped.Packets >= 7 { // delivery may lag on a busy machine
			break
		}
	}
	if want := (Counter{3, 3 * 40}); tc.Sources[peerUnderlay] != want {
		t.Errorf("admitted from %s: %+v, want %+v", peerUnderlay, tc.Sources[peerUnderlay], want)
	}
	if want := (Counter{4, 4 * 40}); tc.Dropped != want {
		t.Errorf("dropped: %+v, want %+v", tc.Dropped, want)
	}
	if cm := ruleComments(readTable(t, c.node).rules[chainInput]); len(cm) != 3 || cm[0] != "ip protocol ipip ip saddr != @tunnel-sources counter drop" {
		t.Errorf("input chain: %q", cm)
	}
}

// TestWatchSeesDeletions: deleting the twill table (or one of its chains)
// is reported at once; another table's deletion is not.
func TestWatchSeesDeletions(t *testing.T) {
	ns := nstest.New(t, "watch")
	tbl := New(testLog(t), InNetNS(nsFD(t, ns.Name)))
	if err := tbl.Apply(Rules{ClusterNetwork: clusterNet, NodeSubnet: nodeSubnet, Peers: []netip.Prefix{peerSubnet}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kicks := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() { done <- tbl.Watch(ctx, func() { kicks <- struct{}{} }) }()
	time.Sleep(100 * time.Millisecond) // the monitor joins its group
	nft := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	nft("add", "table", "ip", "other")
	nft("delete", "table", "ip", "other")
	select {
	case <-kicks:
		t.Fatal("another table's deletion was reported")
	case <-time.After(300 * time.Millisecond):
	}
	nft("delete", "chain", "ip", TableName, "output")
	select {
	case <-kicks:
	case <-time.After(2 * time.Second):
		t.Fatal("a deleted chain of the twill table was not reported")
	}
	nft("delete", "table", "ip", TableName)
	select {
	case <-kicks:
	case <-time.After(2 * time.Second):
		t.Fatal("the deleted twill table was not reported")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch: %v", err)
	}
}
