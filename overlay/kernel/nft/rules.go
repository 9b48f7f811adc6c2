// Package nft keeps twill's nftables table: masquerade for pod traffic that
// leaves the cluster network, forward accept for the cluster network, and
// per-peer traffic counters.
//
// It owns exactly one table per family, "twill" in the ip family and, for
// the IPv6 pod network of a dual-stack or IPv6-only node (New with IPv6),
// "twill" in the ip6 family; it never reads or changes anything outside
// them. Apply brings the table to a desired Rules value
// in one netlink batch (atomic: the kernel sees the old table or the new one);
// Counters reads the per-peer counters in three netlink dumps (the table
// list, then one per direction) whatever the number of peers; Cleanup deletes
// the table. It talks to the kernel through
// github.com/google/nftables and never runs the nft command.
//
// What is in the table (nft syntax, for a cluster network 10.244.0.0/16 and a
// node subnet 10.244.1.0/24):
//
//	table ip twill {
//		set peers-tx { type ipv4_addr; flags interval; counter; elements = { 10.244.2.0/24, ... } }
//		set peers-rx { type ipv4_addr; flags interval; counter; elements = { 10.244.2.0/24, ... } }
//		chain forward { type filter hook forward priority filter; policy accept;
//			ip daddr @peers-tx
//			ip saddr @peers-rx
//			ip saddr 10.244.0.0/16 accept
//			ip daddr 10.244.0.0/16 accept
//		}
//		chain output { type filter hook output priority filter; policy accept;
//			ip daddr @peers-tx
//		}
//		chain input { type filter hook input priority filter; policy accept;
//			udp dport 8472 ip saddr != @tunnel-sources counter drop  # only with a Tunnel
//			udp dport 8472 ip saddr @tunnel-sources
//			ip saddr @peers-rx
//		}
//		set tunnel-sources { type ipv4_addr; counter; elements = { 192.168.56.12, ... } }  # only with a Tunnel
//		chain postrouting { type nat hook postrouting priority srcnat; policy accept;  # only with Masquerade
//			ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
//			ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
//			ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
//			ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
//		}
//	}
//
// The ip6 table is the same with ip6 matches, ipv6_addr sets, and ff00::/8
// as the multicast range the masquerade leaves alone; its tunnel guard
// watches VXLAN over the IPv6 underlay (the peers' PublicIPv6). Two tables
// rather than one inet table keep the ip table byte for byte what it was,
// so a node that turns IPv6 on does not rewrite its IPv4 rules or lose
// their counters.
//
// The postrouting rules are flannel's --ip-masq rules, in flannel's order:
// pod-to-pod traffic keeps its addresses, pod traffic to anywhere else but
// multicast is masqueraded, traffic from outside the cluster network to this
// node's pods keeps its source (so pods see real client addresses), and
// traffic from outside the cluster network (the host itself, typically) to
// other nodes' pods is masqueraded so that replies come back through the
// overlay.
//
// Apply recognises its rules by their comments (each rule's comment is its
// nft text, as above) and rewrites a chain whose comments differ from the
// desired ones; the counters live in set elements, not in rules, so a
// rewritten chain loses nothing.
//
// Per-peer counters are counters on the elements of the two interval sets: a
// lookup that matches an element counts the packet on that element. tx is
// traffic towards a peer's subnet (forwarded from local pods, or sent by the
// host itself), rx is traffic from a peer's subnet (forwarded to local pods,
// or delivered to the host). Bytes are IP packet lengths as the node routes
// them, before any tunnel encapsulation. An element lives as long as its peer
// is in the Rules, so a reconcile that keeps a peer keeps its counters;
// removing a peer removes its counters.
//
// With a Tunnel (vxlan: UDP to its port; ipip: "ip protocol ipip"), the
// input chain drops encapsulated packets whose outer source is not a
// peer's public IP before the kernel decapsulates them, so that no host
// that can reach the port injects packets into pods, and counts them on the
// drop rule; those from peers are counted per outer source on the elements
// of tunnel-sources. The drop counter lives in a rule: it restarts from zero
// when the input chain is rewritten (its rules changed).
//
// Forward accept is only an accept in twill's own base chain. In nftables a
// packet passes every base chain on a hook, and a drop in any of them is
// final: a host whose own firewall (another table, or iptables-nft) has a
// default-drop forward policy still drops pod traffic, whatever twill
// accepts. Such a host must allow the cluster network in its own firewall.
package nft

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// TableName is the name of the tables this package touches (family ip, and
// ip6).
const TableName = "twill"

// Rules is the desired content of the twill table.
type Rules struct {
	// ClusterNetwork is the whole pod network (flannel's Network), e.g.
	// 10.244.0.0/16. Required.
	ClusterNetwork netip.Prefix
	// NodeSubnet is this node's pod subnet (its lease), e.g. 10.244.1.0/24.
	// Required when Masquerade is set.
	NodeSubnet netip.Prefix
	// Masquerade turns on flannel's --ip-masq rules.
	Masquerade bool
	// Peers are the other nodes' pod subnets; each gets a tx and an rx
	// counter. They must not overlap one another. Order does not matter.
	Peers []netip.Prefix
	// Tunnel, if set, admits the backend's encapsulated packets (VXLAN,
	// IP-in-IP) only from the peers' public IPs.
	Tunnel *Tunnel
}

// IP protocols of the encapsulations a Tunnel guards.
const (
	ProtoIPIP = 4
	ProtoUDP  = 17
)

// Tunnel is the guard on a tunnel's receiving side: encapsulated packets
// from an address that is not a peer's are dropped before the kernel
// decapsulates them, and counted; those from a peer are counted by their
// outer source.
type Tunnel struct {
	// Proto is the encapsulation's IP protocol: ProtoUDP (VXLAN, on Port)
	// or ProtoIPIP.
	Proto uint8
	// Port is the UDP destination port (8472 for flannel's VXLAN).
	Port uint16
	// Sources are the peers' public IPs. Order does not matter.
	Sources []netip.Addr
}

// TunnelCounters are the counters of a Tunnel guard.
type TunnelCounters struct {
	// Sources counts the encapsulated packets admitted, by outer source,
	// with their outer (on the wire) lengths.
	Sources map[netip.Addr]Counter
	// Dropped counts the encapsulated packets from addresses that are not
	// peers'.
	Dropped Counter
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// PeerCounters are the counters of one peer subnet.
type PeerCounters struct {
	// Tx counts packets towards the peer's subnet.
	Tx Counter
	// Rx counts packets from the peer's subnet.
	Rx Counter
}

// normalized checks r for a table of one family (IPv6 addresses for the
// ip6 table, IPv4 for the ip table) and returns it with its prefixes masked
// and Peers sorted and free of duplicates.
func (r Rules) normalized(ipv6 bool) (Rules, error) {
	var errs []error
	fam, is := "IPv4", netip.Addr.Is4
	if ipv6 {
		fam, is = "IPv6", func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }
	}
	if !r.ClusterNetwork.IsValid() || !is(r.ClusterNetwork.Addr()) {
		errs = append(errs, fmt.Errorf("cluster network %v: want an %s prefix", r.ClusterNetwork, fam))
	}
	if r.NodeSubnet.IsValid() && !is(r.NodeSubnet.Addr()) {
		errs = append(errs, fmt.Errorf("node subnet %v: want an %s prefix", r.NodeSubnet, fam))
	}
	if r.Masquerade && !r.NodeSubnet.IsValid() {
		errs = append(errs, errors.New("masquerade needs the node subnet"))
	}
	out := Rules{
		ClusterNetwork: r.ClusterNetwork.Masked(),
		NodeSubnet:     r.NodeSubnet.Masked(),
		Masquerade:     r.Masquerade,
		Peers:          make([]netip.Prefix, 0, len(r.Peers)),
	}
	for _, p := range r.Peers {
		if !p.IsValid() || !is(p.Addr()) {
			errs = append(errs, fmt.Errorf("peer %v: want an %s prefix", p, fam))
			continue
		}
		out.Peers = append(out.Peers, p.Masked())
	}
	slices.SortFunc(out.Peers, comparePrefix)
	out.Peers = slices.Compact(out.Peers)
	for i := 1; i < len(out.Peers); i++ {
		if out.Peers[i-1].Overlaps(out.Peers[i]) {
			errs = append(errs, fmt.Errorf("peers %v and %v overlap", out.Peers[i-1], out.Peers[i]))
		}
	}
	if t := r.Tunnel; t != nil {
		nt := &Tunnel{Proto: t.Proto, Port: t.Port, Sources: make([]netip.Addr, 0, len(t.Sources))}
		switch {
		case t.Proto == ProtoUDP && t.Port == 0:
			errs = append(errs, errors.New("tunnel: UDP needs a port"))
		case t.Proto == ProtoIPIP && t.Port != 0:
			errs = append(errs, fmt.Errorf("tunnel: IP-in-IP has no port (got %d)", t.Port))
		case t.Proto != ProtoUDP && t.Proto != ProtoIPIP:
			errs = append(errs, fmt.Errorf("tunnel: protocol %d: want UDP (17) or IP-in-IP (4)", t.Proto))
		case t.Proto == ProtoIPIP && ipv6:
			errs = append(errs, errors.New("tunnel: IP-in-IP is IPv4 only; the ip6 table guards UDP tunnels"))
		}
		for _, a := range t.Sources {
			if !is(a) {
				errs = append(errs, fmt.Errorf("tunnel source %v: want an %s address", a, fam))
				continue
			}
			nt.Sources = append(nt.Sources, a)
		}
		slices.SortFunc(nt.Sources, netip.Addr.Compare)
		nt.Sources = slices.Compact(nt.Sources)
		out.Tunnel = nt
	}
	if err := errors.Join(errs...); err != nil {
		return Rules{}, fmt.Errorf("nft rules: %w", err)
	}
	return out, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
