// Package bgprouter writes the configs of the routers that labs and tests
// run beside twill's nodes, BIRD 2 and FRR (the network's routers in
// gateway BGP: one router joining racks in L3 subnets), and reads their
// session tables (birdc show protocols, vtysh show bgp summary).
//
// It only renders text and parses it: it starts nothing and touches no
// network (vmtest and the bgp backend's tests start the daemons in their
// own namespaces).
package bgprouter

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Config is a router that peers with every node from one address of its
// own (a loopback address the nodes reach through their rack's gateway).
type Config struct {
	// ID is the router ID and the address the router peers from.
	ID  netip.Addr
	ASN uint32
	// Neighbors are the nodes, one session each.
	Neighbors []Neighbor
	// DirectInterfaces is a BIRD interface pattern (such as "r*") whose
	// connected prefixes the router also advertises; empty for none.
	DirectInterfaces string
	// HoldTime is the sessions' hold time in seconds (keepalives every
	// third of it); 0 for 9.
	HoldTime int
	// Extra is more BIRD config (static protocols), put before the rest.
	Extra string
}

// Neighbor is one node the router peers with.
type Neighbor struct {
	// Name names the session (a BIRD protocol name: letters, digits, _).
	Name string
	Addr netip.Addr
	// ASN is the node's AS: the router's for iBGP (the router then
	// reflects routes to it), another for eBGP.
	ASN uint32
	// NextHop is the router's address on the node's segment: the next hop
	// of every route the router advertises to it.
	NextHop netip.Addr
}

func (c Config) hold() int {
	if c.HoldTime > 0 {
		return c.HoldTime
	}
	return 9
}

// BIRD is the config for BIRD 2: each session with graceful restart, the
// learned routes into the kernel. The kernel protocol keeps its routes
// when BIRD stops (persist) and, when BIRD is started with -R, waits for
// the BGP sessions' End-of-RIB before it touches the kernel (graceful
// restart): a BIRD restart loses no route.
func (c Config) BIRD() string {
	var b strings.Builder
	b.WriteString(c.Extra)
	fmt.Fprintf(&b, "log stderr { info, remote, warning, error, auth, fatal, bug };\nrouter id %s;\nprotocol device {}\n", c.ID)
	if c.DirectInterfaces != "" {
		fmt.Fprintf(&b, "protocol direct { ipv4; interface %q; }\n", c.DirectInterfaces)
	}
	b.WriteString("protocol kernel { persist; graceful restart; ipv4 { import none; export where source = RTS_BGP; }; }\n")
	for _, n := range c.Neighbors {
		rr := ""
		if n.ASN == c.ASN {
			rr = "rr client;"
		}
		fmt.Fprintf(&b, `protocol bgp %s {
	local %s as %d;
	neighbor %s as %d;
	multihop;
	%s
	graceful restart on;
	connect retry time 1;
	hold time %d;
	ipv4 { import all; export all; next hop self on; next hop address %s; };
}
`, n.Name, c.ID, c.ASN, n.Addr, n.ASN, rr, c.hold(), n.NextHop)
	}
	return b.String()
}

// FRR is the config for FRR's bgpd: the same sessions as BIRD's (route
// reflector for iBGP nodes, itself as next hop on each node's segment,
// graceful restart).
func (c Config) FRR() string {
	var b strings.Builder
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n bgp graceful-restart\n bgp route-reflector allow-outbound-policy\n", c.ASN, c.ID)
	for _, n := range c.Neighbors {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s update-source %s\n neighbor %s timers %d %d\n neighbor %s timers connect 1\n",
			n.Addr, n.ASN, n.Addr, c.ID, n.Addr, max(1, c.hold()/3), c.hold(), n.Addr)
		if n.ASN != c.ASN {
			fmt.Fprintf(&b, " neighbor %s ebgp-multihop 2\n", n.Addr)
		}
	}
	b.WriteString(" address-family ipv4 unicast\n")
	for _, n := range c.Neighbors {
		if n.ASN == c.ASN {
			fmt.Fprintf(&b, "  neighbor %s route-reflector-client\n", n.Addr)
		}
		fmt.Fprintf(&b, "  neighbor %s route-map to-%s out\n", n.Addr, n.Name)
	}
	b.WriteString(" exit-address-family\n")
	for _, n := range c.Neighbors {
		fmt.Fprintf(&b, "route-map to-%s permit 10\n set ip next-hop %s\n", n.Name, n.NextHop)
	}
	return b.String()
}

// birdEstablished matches a BGP protocol's line of birdc show protocols
// that is up and Established: "node0 BGP --- up 12:00:00.000 Established".
var birdEstablished = regexp.MustCompile(`(?m)^(\S+)\s+BGP\s+\S+\s+up\s+\S+\s+Established`)

// BIRDEstablished returns the names of the BGP protocols that are
// established in the output of birdc show protocols.
func BIRDEstablished(showProtocols string) []string {
	var out []string
	for _, m := range birdEstablished.FindAllStringSubmatch(showProtocols, -1) {
		out = append(out, m[1])
	}
	return out
}

var digits = regexp.MustCompile(`^\d+$`)

// FRREstablished returns the neighbours that are established in the
// output of vtysh -c 'show bgp summary' (the State/PfxRcd column is a
// count only then).
func FRREstablished(summary string) []netip.Addr {
	var out []netip.Addr
	for _, line := range strings.Split(summary, "\n") {
		// Neighbor V AS MsgRcvd MsgSent TblVer InQ OutQ Up/Down State/PfxRcd PfxSnt Desc
		f := strings.Fields(line)
		if len(f) < 10 || !digits.MatchString(f[9]) {
			continue
		}
		if a, err := netip.ParseAddr(f[0]); err == nil {
			out = append(out, a)
		}
	}
	return out
}
