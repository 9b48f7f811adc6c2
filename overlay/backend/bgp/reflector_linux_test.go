package bgp_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/namespace/nstest"
	"github.com/twillnet/twill/web/api"
)

// newSegmentLab is n nodes on one L2 segment (a bridge in a switch
// namespace, which also holds etcd), each with a pod; nodeArgs[i] are
// node i's extra twilld flags.
func newSegmentLab(t *testing.T, netConfig string, n int, nodeArgs ...[]string) *gatewayLab {
	nstest.NeedRoot(t, "creates network namespaces, a bridge and pods")
	l := &gatewayLab{t: t, bin: binaries.ForTest(t), dir: t.TempDir()}
	l.router = nstest.New(t, "sw")
	const hub = "192.168.56.129"
	ipc(t, "-n", l.router.Name, "link", "add", "br0", "type", "bridge")
	ipc(t, "-n", l.router.Name, "addr", "add", hub+"/26", "dev", "br0")
	ipc(t, "-n", l.router.Name, "link", "set", "br0", "up")
	for i := range n {
		node := &gwNode{name: fmt.Sprintf("n%d", i+1), ip: netip.MustParseAddr(fmt.Sprintf("192.168.56.%d", 130+i))}
		if i < len(nodeArgs) {
			node.args = nodeArgs[i]
		}
		node.ns, node.pod = nstest.New(t, node.name), nstest.New(t, node.name+"p")
		port := "p" + node.name
		ipc(t, "-n", l.router.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.ns.Name)
		ipc(t, "-n", l.router.Name, "link", "set", port, "master", "br0", "up")
		ipc(t, "-n", node.ns.Name, "addr", "add", node.ip.String()+"/26", "dev", "eth0")
		ipc(t, "-n", node.ns.Name, "link", "set", "eth0", "up")
		mustIn(t, node.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		l.nodes = append(l.nodes, node)
	}
	l.startCluster(netConfig, hub)
	return l
}

// sessions lists a node's BGP sessions from its API.
func (l *gatewayLab) sessions(n *gwNode) []api.BGPSession {
	var bs api.BGPSessions
	_ = json.Unmarshal([]byte(l.twillctl(n, "bgp", "-o", "json")), &bs)
	return bs.Sessions
}

// TestRouteReflectors: four nodes on one segment, n1 and n2 reflectors.
// The clients have sessions with the reflectors only, every pod reaches
// every other, and each learned route's next hop is the node that holds
// the subnet. When n1 stops, n2 carries the routes alone: n1's subnet is
// withdrawn (after the restart time), the others' stay and their pods talk.
func TestRouteReflectors(t *testing.T) {
	cfg := `{"Network":"10.244.0.0/16","Backend":{"Type":"bgp","HoldTime":9,"ConnectRetry":1,"RestartTime":3}}`
	rr := []string{"--bgp-route-reflector", "224.0.0.1"}
	l := newSegmentLab(t, cfg, 4, rr, rr)
	want := map[string][]string{ // node -> its established peers
		"n1": {"192.168.56.131 mesh", "192.168.56.132 client", "192.168.56.133 client"},
		"n2": {"192.168.56.130 mesh", "192.168.56.132 client", "192.168.56.133 client"},
		"n3": {"192.168.56.130 reflector", "192.168.56.131 reflector"},
		"n4": {"192.168.56.130 reflector", "192.168.56.131 reflector"},
	}
	for _, n := range l.nodes {
		waitFor(t, 30*time.Second, n.name+"'s sessions", func() (bool, string) {
			var got []string
			for _, s := range l.sessions(n) {
				got = append(got, s.Peer+" "+s.Type+" "+s.State)
			}
			w := want[n.name]
			if len(got) != len(w) {
				return false, strings.Join(got, "; ")
			}
			for i := range w {
				if got[i] != w[i]+" Established" {
					return false, strings.Join(got, "; ")
				}
			}
			return true, ""
		})
	}
	for _, from := range l.nodes {
		for _, to := range l.nodes {
			if from == to {
				continue
			}
			waitFor(t, 20*time.Second, from.name+" routes "+to.subnet.String()+" via "+to.ip.String(), func() (bool, string) {
				r := twillRoute(t, from, to.subnet)
				return strings.Contains(r, "via "+to.ip.String()+" dev eth0"), r
			})
			if err := ping(t, from, to.podIP); err != nil {
				t.Error(err)
			}
		}
	}
	n1, n3, n4 := l.nodes[0], l.nodes[2], l.nodes[3]
	_ = n1.cmd.Process.Kill()
	_ = n1.cmd.Wait()
	ipc(t, "-n", n1.ns.Name, "link", "set", "eth0", "down")
	gone := waitFor(t, 30*time.Second, "n1's subnet withdrawn at n3", func() (bool, string) {
		r := twillRoute(t, n3, n1.subnet)
		return r == "", r
	})
	t.Logf("reflector n1 stopped: its subnet gone from n3 after %s (restart time 3 s)", gone.Round(time.Millisecond))
	for _, pair := range [][2]*gwNode{{n3, n4}, {n4, n3}} {
		if r := twillRoute(t, pair[0], pair[1].subnet); !strings.Contains(r, "via "+pair[1].ip.String()) {
			t.Errorf("%s's route to %s after n1 stopped = %q", pair[0].name, pair[1].subnet, r)
		}
		if err := ping(t, pair[0], pair[1].podIP); err != nil {
			t.Error(err)
		}
	}
}
