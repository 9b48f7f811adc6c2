package wireguard_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/twillnet/twill/overlay/backend"
	"github.com/twillnet/twill/overlay/backend/backendtest"
	"github.com/twillnet/twill/overlay/backend/wireguard"
	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/netconf"
)

const config = `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","PersistentKeepaliveInterval":25}}`

// stateDirs gives each node of a test a state directory of its own.
func stateDirs(t testing.TB) func(backend.Node, *slog.Logger) (backend.Backend, error) {
	dir := t.TempDir()
	return func(n backend.Node, log *slog.Logger) (backend.Backend, error) {
		n.StateDir = filepath.Join(dir, n.Name)
		return wireguard.New(n, log)
	}
}

func parse(t testing.TB, s string) *netconf.Config {
	t.Helper()
	cfg, err := netconf.Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// pingBoth pings each way and checks that the peers' byte counters grew
// and that a handshake happened.
func pingBoth(t *testing.T, rs []*backendtest.Running) {
	t.Helper()
	for _, from := range rs {
		for _, to := range rs {
			if from == to {
				continue
			}
			waitHandshake(t, from, to)
			before, _ := from.Peer(to.Node.Subnet)
			if got := from.Node.Ping(t, to.Node.PodIP, 5); got != 5 {
				t.Fatalf("ping %s -> %s: %d of 5 replies\n%s", from.Node.PodIP, to.Node.PodIP, got, from.Node.IP(t, "route"))
			}
			after, ok := from.Peer(to.Node.Subnet)
			if !ok {
				t.Fatalf("%s lists no peer %s", from.Node.Name, to.Node.Subnet)
			}
			// 5 echo requests of 84 bytes, encrypted: at least that went out
			// and came back.
			if after.TxBytes-before.TxBytes < 5*84 || after.RxBytes-before.RxBytes < 5*84 {
				t.Errorf("%s counters to %s: tx +%d rx +%d bytes, want at least %d each", from.Node.Name, to.Node.Subnet,
					after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes, 5*84)
			}
			if after.LastHandshake.IsZero() || time.Since(after.LastHandshake) > time.Minute {
				t.Errorf("%s peer %s: last handshake %v", from.Node.Name, to.Node.Subnet, after.LastHandshake)
			}
		}
	}
}

// waitHandshake pings until a reply comes. Each node greets a peer it
// learns (a handshake at once), so the first reply comes well within
// WireGuard's 5 s rekey timeout: a test that needed a retry fails here.
func waitHandshake(t *testing.T, from, to *backendtest.Running) {
	t.Helper()
	start := time.Now()
	backendtest.Eventually(t, 4*time.Second, func() string {
		if from.Node.Ping(t, to.Node.PodIP, 1) == 1 {
			return ""
		}
		return fmt.Sprintf("no ping reply %s -> %s", from.Node.PodIP, to.Node.PodIP)
	})
	t.Logf("%s -> %s: first reply after %v", from.Node.PodIP, to.Node.PodIP, time.Since(start).Round(time.Millisecond))
}

func TestTwoNodesUserspace(t *testing.T) {
	lab := backendtest.New(t, "wg", 2)
	cfg := parse(t, config)
	rs := lab.Start(t, cfg, stateDirs(t))
	n1 := lab.Nodes[0]
	podMTU(t, lab, 1440)
	for _, r := range rs {
		if r.Prepared.MTU != 1440 {
			t.Errorf("%s MTU %d, want 1440", r.Node.Name, r.Prepared.MTU)
		}
		key := r.Backend.(*wireguard.Backend).PublicKey()
		if want := `{"PublicKey":"` + key.String() + `"}`; string(r.Prepared.BackendData) != want {
			t.Errorf("%s BackendData %s, want %s", r.Node.Name, r.Prepared.BackendData, want)
		}
		if m := r.Backend.Status().Mode; !strings.HasPrefix(m, "userspace (") && m != "kernel" {
			t.Errorf("%s mode %q", r.Node.Name, m)
		}
		t.Logf("%s: mode %s", r.Node.Name, r.Backend.Status().Mode)
		link := r.Node.IP(t, "-d", "addr", "show", "twill-wg")
		for _, want := range []string{"mtu 1440", "inet " + r.Node.Subnet.Addr().String() + "/32", ",UP"} {
			if !strings.Contains(link, want) {
				t.Errorf("%s twill-wg lacks %q:\n%s", r.Node.Name, want, link)
			}
		}
	}
	if got := n1.IP(t, "route", "show", "10.244.2.0/24"); !strings.Contains(got, "10.244.2.0/24 dev twill-wg proto 126") {
		t.Errorf("route to the peer: %q", got)
	}
	// The node with the greater key turns the keepalive on with its
	// greeting, 300 ms after it added the peer.
	var p wgtypes.Peer
	backendtest.Eventually(t, 2*time.Second, func() string {
		peers, err := rs[0].Backend.(*wireguard.Backend).Peers()
		if err != nil || len(peers) != 1 {
			return fmt.Sprintf("node1 peers %v, %v", peers, err)
		}
		if p = peers[0]; p.PersistentKeepaliveInterval != 25*time.Second {
			return fmt.Sprintf("node1's peer has keepalive %v, want 25s", p.PersistentKeepaliveInterval)
		}
		return ""
	})
	if p.PublicKey != rs[1].Backend.(*wireguard.Backend).PublicKey() || p.Endpoint.String() != "192.168.56.12:51820" ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "10.244.2.0/24" || p.PersistentKeepaliveInterval != 25*time.Second ||
		p.PresharedKey.String() != "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" {
		t.Errorf("node1's peer: key %s endpoint %s allowed %v keepalive %v psk %s", p.PublicKey, p.Endpoint, p.AllowedIPs, p.PersistentKeepaliveInterval, p.PresharedKey)
	}
	pingBoth(t, rs)

	took := backendtest.BulkTransfer(t, rs[0].Node, rs[1].Node, 64<<20)
	t.Logf("64 MiB pod to pod in %v (%.0f Mbit/s)", took, 64*8*1.048576/took.Seconds())

	checkWire(t, lab, rs)

	// A deleted device comes back, key and peers and all.
	n1.IP(t, "link", "del", "twill-wg")
	start := time.Now()
	backendtest.Eventually(t, 20*time.Second, func() string {
		if n1.Ping(t, rs[1].Node.PodIP, 1) == 1 {
			return ""
		}
		return "no reply after twill-wg was deleted: " + n1.IP(t, "-o", "link", "show")
	})
	t.Logf("twill-wg deleted: pods talk again after %v", time.Since(start).Round(time.Millisecond))
	if got := rs[0].Logged("device gone"); len(got) == 0 {
		t.Error("the repair was not logged")
	}
	backendtest.CheckPeerExpires(t, rs)
	if peers, _ := rs[0].Backend.(*wireguard.Backend).Peers(); len(peers) != 0 {
		t.Errorf("the expired peer is still on the device: %v", peers)
	}

	rs[0].Stop()
	if err := rs[0].Backend.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n1.IP(t, "-o", "link", "show"); strings.Contains(got, "twill-wg") {
		t.Errorf("device left after Cleanup:\n%s", got)
	}
}

// checkWire sends UDP datagrams with a marker from pod 1 to pod 2 while
// capturing on node 1's switch port: the marker arrives in pod 2 but is
// nowhere on the wire, and what crosses is WireGuard data messages (type
// 4) from and to UDP port 51820.
func checkWire(t *testing.T, lab *backendtest.Lab, rs []*backendtest.Running) {
	t.Helper()
	checkWireFamily(t, lab, rs, false, rs[0].Node.PublicIP, 51820)
}

// podMTU sets the pods' MTU, as the CNI plugin does from the subnet file.
func podMTU(t testing.TB, lab *backendtest.Lab, mtu int) {
	for _, n := range lab.Nodes {
		backendtest.Run(t, "ip", "-n", n.Pod, "link", "set", "eth0", "mtu", strconv.Itoa(mtu))
	}
}

// TestKeyKeptAndReplaced: a restart keeps the key (the state file), and a
// regenerated key replaces the old peer on the other node within the one
// lease event that publishes it.
func TestKeyKeptAndReplaced(t *testing.T) {
	lab := backendtest.New(t, "wgkey", 2)
	cfg := parse(t, config)
	dir := t.TempDir()
	newBackend := func(n backend.Node, log *slog.Logger) (backend.Backend, error) {
		n.StateDir = filepath.Join(dir, n.Name)
		return wireguard.New(n, log)
	}
	rs := lab.Start(t, cfg, newBackend)
	n2 := lab.Nodes[1]
	key2 := rs[1].Backend.(*wireguard.Backend).PublicKey()
	keyFile := filepath.Join(dir, strings.TrimPrefix(n2.Name, "twt-"), wireguard.KeyFile)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v, %v; want mode 0600", keyFile, fi, err)
	}
	pingBoth(t, rs)

	// restart stops node 2's backend and starts it again in the lab, as a
	// restarted twilld does, and tells node 1 its lease.
	stop := rs[1].Stop
	var b *wireguard.Backend = rs[1].Backend.(*wireguard.Backend)
	restart := func() {
		t.Helper()
		stop()
		b.Close()
		be, err := newBackend(n2.BackendNode(cfg), slog.New(slog.NewTextHandler(t.Output(), nil)).With("node", n2.Name))
		if err != nil {
			t.Fatal(err)
		}
		b = be.(*wireguard.Backend)
		ctx, cancel := context.WithCancel(context.Background())
		p, err := b.Prepare(ctx)
		if err != nil {
			t.Fatal(err)
		}
		own := n2.Lease(b.Type(), p.BackendData)
		if err := b.SetLease(ctx, own); err != nil {
			t.Fatal(err)
		}
		if err := b.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: rs[0].Lease}}); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); b.Run(ctx) }()
		stop = sync.OnceFunc(func() { cancel(); <-done })
		t.Cleanup(stop)
		if err := rs[0].Backend.Handle(ctx, []lease.Event{{Type: lease.Added, Lease: own}}); err != nil {
			t.Fatal(err)
		}
		rs[1] = &backendtest.Running{Node: n2, Backend: b, Prepared: p, Lease: own}
	}
	restart()
	if got := b.PublicKey(); got != key2 {
		t.Fatalf("public key after a restart %s, want %s (kept in %s)", got, key2, keyFile)
	}
	waitHandshake(t, rs[0], rs[1])
	if got := lab.Nodes[0].Ping(t, n2.PodIP, 5); got != 5 {
		t.Errorf("after a restart: %d of 5 replies", got)
	}

	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	restart()
	newKey := b.PublicKey()
	if newKey == key2 {
		t.Fatal("a new key file gave the old key")
	}
	// At once: Handle returned, and the old key is off node 1's device.
	peers, err := rs[0].Backend.(*wireguard.Backend).Peers()
	if err != nil {
		t.Fatal(err)
	}
	var keys []wgtypes.Key
	for _, p := range peers {
		keys = append(keys, p.PublicKey)
	}
	if len(keys) != 1 || keys[0] != newKey {
		t.Errorf("node 1's peers after node 2's key changed: %v, want only %s (old %s)", keys, newKey, key2)
	}
	waitHandshake(t, rs[0], rs[1])
	if got := lab.Nodes[0].Ping(t, n2.PodIP, 5); got != 5 {
		t.Errorf("after the key changed: %d of 5 replies", got)
	}
}

// TestImplementationForced: Implementation kernel on a kernel without
// WireGuard fails saying so; userspace says it was asked for.
func TestImplementationForced(t *testing.T) {
	lab := backendtest.New(t, "wgimpl", 1)
	n := lab.Nodes[0].BackendNode(parse(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Implementation":"kernel"}}`))
	n.StateDir = t.TempDir()
	b, err := wireguard.New(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Prepare(context.Background())
	b.Close()
	switch {
	case err == nil:
		t.Log("this kernel has WireGuard: Implementation kernel prepared")
	case !errors.Is(err, wireguard.ErrNoKernelWireGuard):
		t.Errorf("Implementation kernel without the module: %v, want ErrNoKernelWireGuard", err)
	default:
		t.Logf("Implementation kernel: %v", err)
	}

	n.Network = parse(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Implementation":"userspace"}}`)
	b, err = wireguard.New(n, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := b.Implementation(); got != "userspace (Backend.Implementation says so)" {
		t.Errorf("implementation %q", got)
	}
	if got := lab.Nodes[0].IP(t, "-d", "link", "show", "twill-wg"); !strings.Contains(got, "tun") {
		t.Errorf("userspace twill-wg is not a TUN device:\n%s", got)
	}
}

// TestHandshakeAtOnce: with no keepalive and no pod traffic, two nodes
// handshake as soon as they know each other. The lab hands node 1 node 2's
// lease first, so node 1's greeting reaches a node 2 that does not know it
// yet and is dropped (WireGuard would retry after 5 s, or never without
// traffic); node 2, learning last, greets and is answered. Then a peer
// that never answers, and one whose handshake is older than the limit,
// are not handshaking, named in the status.
func TestHandshakeAtOnce(t *testing.T) {
	lab := backendtest.New(t, "wghs", 2)
	rs := lab.Start(t, parse(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}`), stateDirs(t))
	start := time.Now()
	// Less than WireGuard's 5 s rekey timeout: a retry would be too late.
	backendtest.Eventually(t, 4*time.Second, func() string {
		for _, r := range rs {
			for _, o := range rs {
				if p, ok := r.Peer(o.Node.Subnet); r != o && (!ok || p.LastHandshake.IsZero()) {
					return fmt.Sprintf("%s: no handshake with %s yet (no pod traffic sent)", r.Node.Name, o.Node.Subnet)
				}
			}
		}
		return ""
	})
	t.Logf("both nodes handshook, with no traffic, %v after the lab started", time.Since(start).Round(time.Millisecond))
	for _, r := range rs {
		if st := r.Backend.Status(); len(st.Problems) != 0 {
			t.Errorf("%s problems: %v", r.Node.Name, st.Problems)
		}
	}
	peers, err := rs[0].Backend.(*wireguard.Backend).Peers()
	if err != nil || len(peers) != 1 || peers[0].PersistentKeepaliveInterval != 0 {
		t.Errorf("node 1's peers after the greeting: %v, %v; want one without keepalive", peers, err)
	}

	// Between idle nodes the handshake ages (WireGuard handshakes for
	// traffic only); a handshake getting old is greeted: a keepalive goes
	// out (32 bytes: header and tag), one that is fresh is left alone.
	b1 := rs[0].Backend.(*wireguard.Backend)
	txBytes := func() uint64 {
		p, _ := rs[0].Peer(rs[1].Node.Subnet)
		return p.TxBytes
	}
	before := txBytes()
	b1.RefreshHandshakes(time.Now())
	time.Sleep(200 * time.Millisecond)
	if got := txBytes(); got != before {
		t.Errorf("a fresh handshake was greeted: tx %d -> %d bytes", before, got)
	}
	b1.RefreshHandshakes(time.Now().Add(10 * time.Minute))
	backendtest.Eventually(t, 2*time.Second, func() string {
		if got := txBytes(); got < before+32 {
			return fmt.Sprintf("no keepalive to a peer whose handshake is getting old: tx %d -> %d bytes", before, got)
		}
		return ""
	})

	// A peer at an address where nobody answers.
	silentKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	silent := lease.Lease{Subnet: netip.MustParsePrefix("10.244.9.0/24"), Expiration: time.Now().Add(time.Hour),
		Attrs: lease.Attrs{PublicIP: lab.Nodes[1].PublicIP.Next(), BackendType: "wireguard",
			BackendData: []byte(`{"PublicKey":"` + silentKey.PublicKey().String() + `"}`)}}
	b := rs[0].Backend.(*wireguard.Backend)
	if err := b.Handle(context.Background(), []lease.Event{{Type: lease.Added, Lease: silent}}); err != nil {
		t.Fatal(err)
	}
	b.SetStaleAfter(time.Second)
	time.Sleep(1100 * time.Millisecond)
	problems := map[netip.Prefix]string{}
	for _, p := range b.Status().Peers {
		problems[p.Subnet] = p.HandshakeProblem
	}
	if got := problems[silent.Subnet]; !strings.HasPrefix(got, "no handshake in the ") {
		t.Errorf("the silent peer's handshake problem %q, want none since it became a peer", got)
	}
	if got := problems[rs[1].Node.Subnet]; !strings.HasPrefix(got, "last handshake ") {
		t.Errorf("node 2's handshake problem with a 1 s limit: %q", got)
	}
	st := b.Status()
	if !slices.ContainsFunc(st.Problems, func(p string) bool {
		return strings.Contains(p, "peer 10.244.9.0/24 ("+silentKey.PublicKey().String()+") is not handshaking: no handshake")
	}) {
		t.Errorf("problems do not name the silent peer: %v", st.Problems)
	}
	t.Logf("problems with a 1 s limit: %v", st.Problems)
	b.SetStaleAfter(wireguard.StaleHandshake)
	if st := b.Status(); len(st.Problems) != 0 {
		t.Errorf("problems with the 3 minute limit: %v", st.Problems)
	}
}
