package udp

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/udp/kernelpath"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

func TestTwoNodes(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if m.attach != "" {
				t.Setenv("TWILL_UDP_ATTACH", m.attach)
			}
			testTwoNodes(t, m.name, m.options, m.optionsB)
		})
	}
}

// userspaceCounters are what the userspace loops counted for subnet s
// (the kernel path's counters are not in them).
func userspaceCounters(n *node, s netip.Prefix) backend.PeerStatus {
	for _, p := range n.be.table.Load().status() {
		if p.Subnet == s {
			return p
		}
	}
	return backend.PeerStatus{}
}

func testTwoNodes(t *testing.T, mode, options, optionsB string) {
	c := newCluster(t, options, optionsB)
	a, b := c.a, c.b
	subA, subB := a.lease.Subnet, b.lease.Subnet
	kernelPath := strings.HasPrefix(mode, "kernel-path")
	if kernelPath || mode == "mixed" {
		if err := kernelpath.Supported(); err != nil {
			t.Skipf("no kernel path here: %v", err)
		}
	}
	// Auto attaches with tcx where the kernel has it, else as classic tc.
	wantMode := map[string][]string{"kernel-path": {"kernel path (tcx)", "kernel path (tc)"}, "mixed": {"kernel path (tcx)", "kernel path (tc)"},
		"kernel-path-tc": {"kernel path (tc)"}, "userspace-offload": {"userspace (kernel path: off (KernelPath is false))"},
		"userspace-no-offload": {"userspace (kernel path: off (Offload is false))"}}[mode]
	if got := a.be.Status().Mode; !slices.Contains(wantMode, got) {
		t.Fatalf("Status().Mode = %q, want one of %q", got, wantMode)
	}

	t.Run("kernel state", func(t *testing.T) {
		routes := run(t, "ip", "-n", a.ns, "route", "show", "proto", "126")
		if strings.TrimSpace(routes) != "10.244.0.0/16 dev twill0 scope link" {
			t.Errorf("twill routes in %s:\n%s\nwant only 10.244.0.0/16 dev twill0", a.ns, routes)
		}
		addrs := run(t, "ip", "-n", a.ns, "-4", "-o", "addr", "show", "dev", "twill0")
		if !strings.Contains(addrs, "inet 10.244.1.0/32") || strings.Count(addrs, "inet ") != 1 {
			t.Errorf("twill0 addresses: %s, want only 10.244.1.0/32", addrs)
		}
		link := run(t, "ip", "-n", a.ns, "-d", "link", "show", "twill0")
		if !strings.Contains(link, "mtu 1472") || !strings.Contains(link, "tun type tun") {
			t.Errorf("twill0: %s, want a TUN with mtu 1472", link)
		}
		if tables := run(t, "ip", "netns", "exec", a.ns, "nft", "list", "tables"); !strings.Contains(tables, "table ip twill") {
			t.Errorf("no twill nftables table: %s", tables)
		}
		// The reconciler puts a deleted route back.
		run(t, "ip", "-n", a.ns, "route", "del", "10.244.0.0/16", "dev", "twill0")
		eventually(t, "the cluster route to come back", func() bool {
			out, _ := exec.Command("ip", "-n", a.ns, "route", "show", "proto", "126").Output()
			return strings.Contains(string(out), "10.244.0.0/16 dev twill0")
		})
	})

	t.Run("ping", func(t *testing.T) {
		if out, ok := ping(t, a.pod, b.podIP, 3); !ok {
			t.Fatalf("pod A cannot ping pod B:\n%s", out)
		}
		if out, ok := ping(t, b.pod, a.podIP, 3); !ok {
			t.Fatalf("pod B cannot ping pod A:\n%s", out)
		}
		pa, _ := peerStatus(a, subB)
		pb, _ := peerStatus(b, subA)
		if pa.TxPackets < 3 || pa.RxPackets < 3 || pb.TxPackets < 3 || pb.RxPackets < 3 {
			t.Errorf("counters after 6 pings: A->B %+v, B->A %+v", pa, pb)
		}
		if time.Since(pa.LastSeen) > time.Minute {
			t.Errorf("A last saw B at %v", pa.LastSeen)
		}
		if kernelPath {
			// Once B has talked to its pod, B's ingress program delivers
			// into the pod's namespace directly.
			eventually(t, "B's kernel path to find its pod", func() bool {
				pod, ok := b.be.kp.Pods()[b.podIP]
				return ok && pod.Ifindex > 0 && len(pod.MAC) == 6
			})
		}
	})

	t.Run("tcp transfer", func(t *testing.T) {
		before, _ := peerStatus(a, subB)
		beforeRx, _ := peerStatus(b, subA)
		const size = 64 << 20
		sent, got := transfer(t, a, b, size)
		if sent != got {
			t.Fatalf("SHA-256 differs: sent %x, received %x", sent, got)
		}
		// Wait for datagrams in flight, then compare A's tx towards B with
		// B's rx from A: both count inner IP bytes, so they are equal
		// unless the underlay lost datagrams (which TCP then resent).
		var tx, rx uint64
		eventually(t, "B's rx to catch up with A's tx", func() bool {
			pa, _ := peerStatus(a, subB)
			pb, _ := peerStatus(b, subA)
			tx, rx = pa.TxBytes-before.TxBytes, pb.RxBytes-beforeRx.RxBytes
			return tx == rx
		})
		if rx < size {
			t.Errorf("B received %d inner bytes from A, less than the %d bytes of data", rx, size)
		}
		// Headers: at most 20 (IP) + 60 (TCP) per packet of at least 1000
		// bytes of payload, plus a few small packets.
		if rx > size+size/10 {
			t.Errorf("B received %d inner bytes for %d bytes of data: more than headers explain", rx, size)
		}
		t.Logf("A->B: tx %d bytes, rx %d bytes for %d bytes of data", tx, rx, size)
		// Which path carried it: in kernel-path mode the userspace loops
		// saw (almost) none of it, in the others all of it.
		ua, ub := userspaceCounters(a, subB), userspaceCounters(b, subA)
		if kernelPath && (ua.TxBytes > size/100 || ub.RxBytes > size/100) {
			t.Errorf("kernel path: the userspace loops carried A->B tx %d, rx %d bytes of %d", ua.TxBytes, ub.RxBytes, size)
		}
		// In mixed mode A sends from userspace (B does not advertise the
		// kernel path), and B receives in userspace.
		if !kernelPath && (ua.TxBytes < size || ub.RxBytes < size) {
			t.Errorf("%s: the userspace loops sent %d and received %d bytes of %d", mode, ua.TxBytes, ub.RxBytes, size)
		}
	})

	t.Run("256 MiB both ways at once", func(t *testing.T) {
		// Segmentation, coalescing and checksums under load in both
		// directions: every byte arrives, in order, unchanged.
		const size = 256 << 20
		for _, dir := range [][2]*node{{a, b}, {b, a}} {
			t.Run(dir[0].ns+"->"+dir[1].ns, func(t *testing.T) {
				t.Parallel()
				sent, got := transfer(t, dir[0], dir[1], size)
				if sent != got {
					t.Fatalf("SHA-256 differs: sent %x, received %x", sent, got)
				}
			})
		}
	})

	// A UDP listener in pod A shows what the spoof checks let through.
	var podListener *net.UDPConn
	inNS(t, a.podH, func() (err error) {
		podListener, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.podIP, 9999)))
		return err
	})
	defer podListener.Close()
	receive := func() string {
		buf := make([]byte, 100)
		_ = podListener.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := podListener.Read(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	toA := netip.AddrPortFrom(ipA, 8285)

	t.Run("legitimate handmade datagram arrives", func(t *testing.T) {
		// The control for the spoof tests: a datagram built as they are, but
		// valid, is delivered.
		sendFrom(t, b.h, ipB, toA, udpInPacket(b.podIP, a.podIP, 9999, "hello"))
		if got := receive(); got != "hello" {
			t.Fatalf("pod A got %q, want hello", got)
		}
	})

	t.Run("flannel wire format", func(t *testing.T) {
		// A flannel udp node is a socket on port 8285 that sends and takes
		// bare IPv4 packets as datagrams. Play one at 192.168.56.66 holding
		// 10.244.3.0/24.
		var flannel *net.UDPConn
		inNS(t, b.h, func() (err error) {
			flannel, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ipStranger, 8285)))
			return err
		})
		defer flannel.Close()
		fake := lease.Lease{Subnet: netip.MustParsePrefix("10.244.3.0/24"),
			Attrs: lease.Attrs{PublicIP: ipStranger, BackendType: "udp"}}
		if err := a.be.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: fake}}); err != nil {
			t.Fatal(err)
		}
		defer a.be.Handle(context.Background(), []lease.Event{{Type: lease.Expired, Lease: fake}})

		fakePod := netip.MustParseAddr("10.244.3.5")
		var pc *net.UDPConn
		inNS(t, a.podH, func() (err error) {
			pc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(fakePod, 7777)))
			return err
		})
		defer pc.Close()
		if _, err := pc.Write([]byte("to flannel")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2000)
		_ = flannel.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := flannel.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("the flannel node got nothing: %v", err)
		}
		if from != toA {
			t.Errorf("datagram from %s, want %s (the backend's socket)", from, toA)
		}
		pkt := buf[:n]
		if !validIPv4(pkt) || pkt[9] != 17 || n != 20+8+len("to flannel") ||
			netip.AddrFrom4([4]byte(pkt[12:16])) != a.podIP || netip.AddrFrom4([4]byte(pkt[16:20])) != fakePod ||
			binary.BigEndian.Uint16(pkt[22:24]) != 7777 || string(pkt[28:]) != "to flannel" {
			t.Errorf("datagram is not the bare IPv4/UDP packet from pod A: % x", pkt)
		}
		// And back: a bare packet from the flannel node reaches pod A.
		if _, err := flannel.WriteToUDPAddrPort(udpInPacket(fakePod, a.podIP, 9999, "from flannel"), toA); err != nil {
			t.Fatal(err)
		}
		if got := receive(); got != "from flannel" {
			t.Errorf("pod A got %q, want \"from flannel\"", got)
		}
	})

	t.Run("unknown peer", func(t *testing.T) {
		before := a.be.Status().Drops[DropUnknownPeer]
		sendFrom(t, b.h, ipStranger, toA, udpInPacket(b.podIP, a.podIP, 9999, "stranger"))
		if got := receive(); got != "" {
			t.Errorf("pod A received %q from a stranger", got)
		}
		eventually(t, "unknown-peer drop", func() bool { return a.be.Status().Drops[DropUnknownPeer] == before+1 })
	})

	t.Run("spoofed source", func(t *testing.T) {
		before, _ := peerStatus(a, subB)
		sendFrom(t, b.h, ipB, toA, udpInPacket(netip.MustParseAddr("10.244.7.7"), a.podIP, 9999, "spoofed"))
		if got := receive(); got != "" {
			t.Errorf("pod A received %q with a spoofed source", got)
		}
		eventually(t, "spoofed-source drop", func() bool {
			p, _ := peerStatus(a, subB)
			return p.Drops[DropSpoofedSource] == before.Drops[DropSpoofedSource]+1
		})
	})

	t.Run("random bytes", func(t *testing.T) {
		before, _ := peerStatus(a, subB)
		for range 20 {
			junk := make([]byte, 1+int(time.Now().UnixNano()%1400))
			rand.Read(junk)
			junk[0] = 0x13 // never a valid IPv4 version nibble
			sendFrom(t, b.h, ipB, toA, junk)
		}
		eventually(t, "malformed drops", func() bool {
			p, _ := peerStatus(a, subB)
			return p.Drops[DropMalformed] == before.Drops[DropMalformed]+20
		})
		if out, ok := ping(t, a.pod, b.podIP, 2); !ok {
			t.Fatalf("traffic stopped after random datagrams:\n%s", out)
		}
	})

	t.Run("net unreachable", func(t *testing.T) {
		before := a.be.Status().Drops[DropNoRoute]
		out, ok := ping(t, a.pod, netip.MustParseAddr("10.244.9.9"), 1)
		if ok || !strings.Contains(out, "Destination Net Unreachable") || !strings.Contains(out, "From 10.244.9.0") {
			t.Errorf("ping to a subnet nobody holds:\n%s\nwant Destination Net Unreachable from 10.244.9.0", out)
		}
		if got := a.be.Status().Drops[DropNoRoute]; got <= before {
			t.Errorf("no-route drops %d, want more than %d", got, before)
		}
	})

	t.Run("expired peer", func(t *testing.T) {
		if err := a.be.Handle(context.Background(), []lease.Event{{Type: lease.Expired, Lease: b.lease}}); err != nil {
			t.Fatal(err)
		}
		if out, ok := ping(t, a.pod, b.podIP, 2); ok {
			t.Errorf("pod A still reaches pod B after B's lease expired:\n%s", out)
		}
		if p, ok := peerStatus(a, subB); ok {
			t.Errorf("A still reports B: %+v", p)
		}
		// B still knows A, but A no longer accepts B's datagrams.
		if got := a.be.Status().Drops[DropUnknownPeer]; got == 0 {
			t.Errorf("A counted no unknown-peer drops for B's replies")
		}
		if err := a.be.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: b.lease}}); err != nil {
			t.Fatal(err)
		}
		if out, ok := ping(t, a.pod, b.podIP, 2); !ok {
			t.Errorf("pod A cannot reach pod B after B's lease came back:\n%s", out)
		}
		if p, _ := peerStatus(a, subB); p.TxPackets == 0 || p.Drops[DropSpoofedSource] != 0 {
			t.Errorf("B's counters did not start afresh: %+v", p)
		}
	})

	t.Run("cleanup", func(t *testing.T) {
		if err := a.be.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := exec.Command("ip", "-n", a.ns, "link", "show", "twill0").Run(); err == nil {
			t.Error("twill0 still exists after Cleanup")
		}
		if routes := run(t, "ip", "-n", a.ns, "route", "show", "proto", "126"); strings.TrimSpace(routes) != "" {
			t.Errorf("twill routes left after Cleanup: %s", routes)
		}
		if tables := run(t, "ip", "netns", "exec", a.ns, "nft", "list", "tables"); strings.Contains(tables, "twill") {
			t.Errorf("twill nftables table left after Cleanup: %s", tables)
		}
	})
}

// TestRouterRepairsAndReports: a udp node runs on the one Router, so its
// nftables table comes back within one resync and a peer the plan refuses
// is a peer problem (peers-routable fails), as on the kernel backends.
func TestRouterRepairsAndReports(t *testing.T) {
	c := newCluster(t, `,"KernelPath":false`, `,"KernelPath":false`)
	backendtest.CheckNftablesRepaired(t, c.a.running, c.b.running)
	backendtest.CheckUnroutablePeer(t, c.a.running)
}

// TestDeviceDeleted: `ip link del twill0` kills the TUN queues; the
// backend recreates them (address, MTU, route, the kernel path) and pods
// talk again within 2 s, with Run still running.
func TestDeviceDeleted(t *testing.T) {
	for _, m := range modes[:3] {
		t.Run(m.name, func(t *testing.T) {
			if m.name == "kernel-path" {
				if err := kernelpath.Supported(); err != nil {
					t.Skipf("no kernel path here: %v", err)
				}
			}
			c := newCluster(t, m.options, m.optionsB)
			a, b := c.a, c.b
			if out, ok := ping(t, a.pod, b.podIP, 2); !ok {
				t.Fatalf("before: pod A cannot ping pod B:\n%s", out)
			}
			mode := a.be.Status().Mode
			run(t, "ip", "-n", a.ns, "link", "del", "twill0")
			start := time.Now()
			for {
				err := exec.Command("ip", "netns", "exec", a.pod, "ping", "-n", "-q", "-c", "1", "-W", "0.2", b.podIP.String()).Run()
				if err == nil {
					break
				}
				if time.Since(start) > 2*time.Second {
					t.Fatalf("pod A cannot reach pod B 2 s after twill0 was deleted; status %+v\nroutes:\n%s", a.be.Status(),
						run(t, "ip", "-n", a.ns, "route"))
				}
			}
			t.Logf("pods talk again %v after twill0 was deleted", time.Since(start).Round(time.Millisecond))
			a.running.WaitInSync(t)
			st := a.be.Status()
			if st.Mode != mode || len(st.Problems) != 0 || !st.DeviceUp {
				t.Errorf("after the repair: mode %q (was %q), problems %q, device up %t", st.Mode, mode, st.Problems, st.DeviceUp)
			}
			addrs := run(t, "ip", "-n", a.ns, "-4", "-o", "addr", "show", "dev", "twill0")
			if !strings.Contains(addrs, "inet 10.244.1.0/32") || strings.Count(addrs, "inet ") != 1 {
				t.Errorf("twill0 addresses after the repair: %s, want only 10.244.1.0/32", addrs)
			}
			if link := run(t, "ip", "-n", a.ns, "link", "show", "twill0"); !strings.Contains(link, "mtu 1472") {
				t.Errorf("twill0 after the repair: %s, want mtu 1472", link)
			}
			for _, dir := range [][2]*node{{a, b}, {b, a}} {
				if out, ok := ping(t, dir[0].pod, dir[1].podIP, 3); !ok {
					t.Errorf("after the repair: %s cannot ping %s:\n%s", dir[0].pod, dir[1].podIP, out)
				}
			}
			// Bulk data takes the same path as before the repair: the kernel
			// path's programs were attached to the new twill0.
			const size = 16 << 20
			before := userspaceCounters(a, b.lease.Subnet)
			if sent, got := transfer(t, a, b, size); sent != got {
				t.Fatalf("SHA-256 differs after the repair")
			}
			carried := userspaceCounters(a, b.lease.Subnet).TxBytes - before.TxBytes
			if strings.HasPrefix(m.name, "kernel-path") && carried > size/100 {
				t.Errorf("kernel path: the userspace loops sent %d bytes of %d after the repair", carried, size)
			}
			if !strings.HasPrefix(m.name, "kernel-path") && carried < size {
				t.Errorf("%s: the userspace loops sent %d bytes of %d after the repair", m.name, carried, size)
			}
		})
	}
}

// TestDeviceBeyondRepair: a twill0 of another kind (a bridge) is replaced by the TUN;
// when twill0 is deleted and cannot be made again (here: no TUN clone
// device), Run returns an error naming what died once the repair has
// failed for repairTimeout, so that twilld exits and is restarted.
func TestDeviceBeyondRepair(t *testing.T) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun: ", err)
	}
	lab := backendtest.New(t, "udp", 1)
	n := lab.Nodes[0]
	n.IP(t, "link", "add", "twill0", "type", "bridge")
	b, err := New(n.BackendNode(udpConfig(t, `,"KernelPath":false`)), slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if link := run(t, "ip", "-n", n.Name, "-d", "link", "show", "twill0"); !strings.Contains(link, "tun type tun") {
		t.Fatalf("the bridge twill0 was not replaced by the TUN: %s", link)
	}
	if err := b.SetLease(ctx, n.Lease(netconf.TypeUDP, nil)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	eventually(t, "in sync", func() bool { return b.Status().InSync })

	oldPath, oldTimeout := tunPath, repairTimeout
	tunPath, repairTimeout = "/nonexistent/tun", time.Second
	defer func() { tunPath, repairTimeout = oldPath, oldTimeout }()
	run(t, "ip", "-n", n.Name, "link", "del", "twill0")
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "twill0 was deleted") || !strings.Contains(err.Error(), "/nonexistent/tun") {
			t.Errorf("Run returned %v, want an error saying twill0 died and why it was not recreated", err)
		}
		t.Logf("Run: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatalf("Run still running 5 s after twill0 died beyond repair; status %+v", b.Status())
	}
	if st := b.Status(); st.InSync || !strings.Contains(strings.Join(st.Problems, "\n"), "data path broken") {
		t.Errorf("status after the data path died: in sync %t, problems %q", st.InSync, st.Problems)
	}
}
