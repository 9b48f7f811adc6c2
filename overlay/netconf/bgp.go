package netconf

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// TypeBGP is the bgp backend: pod routes learned over BGP (a node-to-node
// mesh, route reflectors, or the network's routers), not from the leases.
const TypeBGP = "bgp"

// Defaults of the bgp backend's options.
const (
	DefaultBGPASN      = 64512
	DefaultBGPPort     = 179
	DefaultBGPHoldTime = 90
	// DefaultBGPRestartTime is how long, in seconds, a peer keeps this
	// node's routes while its speaker restarts (graceful restart).
	DefaultBGPRestartTime = 120
	// MaxASN is the largest 4-byte AS number.
	MaxASN = 4294967295
)

// The IPIP modes of the bgp backend, as Calico names them.
const (
	IPIPNever       = "Never"
	IPIPAlways      = "Always"
	IPIPCrossSubnet = "CrossSubnet"
)

var ipipModes = []string{IPIPNever, IPIPAlways, IPIPCrossSubnet}

// BGP holds the bgp backend's options (Backend.BGP, nil for other types).
type BGP struct {
	// ASN is the cluster's AS number (default 64512); a node may override
	// it with its own (an AS per rack).
	ASN uint32
	// NodeMesh peers every node with every other (default true).
	NodeMesh bool
	// Peers are external peers every node has (the network's routers).
	Peers []BGPPeer
	// IPIP says when routes go through the ipip device: Never (default),
	// Always, or CrossSubnet (only to peers off this node's subnet).
	IPIP string
	// HoldTime is the session hold time in seconds (default 90; the
	// keepalive interval is a third of it). A node that stops is
	// unpeered, and its subnet withdrawn, within it.
	HoldTime int
	// ConnectRetry is the seconds between connection attempts (default 5).
	ConnectRetry int
	// RestartTime is the graceful-restart time in seconds (default 120).
	RestartTime int
}

// BGPPeer is an external BGP peer.
type BGPPeer struct {
	Address  netip.Addr
	ASN      uint32
	Password string `json:",omitempty"`
}

var bgpOptions = []string{"ASN", "NodeMesh", "Peers", "IPIP", "Port", "HoldTime", "ConnectRetry", "RestartTime", "MTU"}

func defaultBGP() *BGP {
	return &BGP{ASN: DefaultBGPASN, NodeMesh: true, IPIP: IPIPNever, HoldTime: DefaultBGPHoldTime,
		ConnectRetry: 5, RestartTime: DefaultBGPRestartTime}
}

// ParseASN reads an AS number 1..4294967295 (asplain).
func ParseASN(v json.RawMessage) (uint32, error) {
	var n json.Number
	if t := strings.TrimSpace(string(v)); t == "" || t[0] < '0' || t[0] > '9' {
		return 0, fmt.Errorf("not a number")
	}
	if err := strictUnmarshal(v, &n); err != nil {
		return 0, err
	}
	var x int64
	if _, err := fmt.Sscan(n.String(), &x); err != nil || n.String() != fmt.Sprint(x) {
		return 0, fmt.Errorf("not an integer")
	}
	if x < 1 || x > MaxASN {
		return 0, fmt.Errorf("out of range")
	}
	return uint32(x), nil
}

// parseBGPOption reads one bgp option into b.BGP; it returns the error
// naming the field and the value, or nil.
func parseBGPOption(b *Backend, key string, v json.RawMessage) []error {
	field := "Backend." + key
	g := b.BGP
	switch key {
	case "ASN":
		asn, err := ParseASN(v)
		if err != nil {
			return []error{fieldErr(field, v, "must be an AS number 1..%d", MaxASN)}
		}
		g.ASN = asn
	case "NodeMesh":
		if json.Unmarshal(v, &g.NodeMesh) != nil {
			return []error{fieldErr(field, v, "must be true or false")}
		}
	case "IPIP":
		if json.Unmarshal(v, &g.IPIP) != nil || !slices.Contains(ipipModes, g.IPIP) {
			return []error{fieldErr(field, v, "unknown IPIP mode; known modes are %s", strings.Join(ipipModes, ", "))}
		}
	case "HoldTime":
		if intIn(v, &g.HoldTime, 3, 65535) != nil {
			return []error{fieldErr(field, v, "must be a hold time in seconds, 3..65535")}
		}
	case "ConnectRetry":
		if intIn(v, &g.ConnectRetry, 1, 3600) != nil {
			return []error{fieldErr(field, v, "must be seconds between connection attempts, 1..3600")}
		}
	case "RestartTime":
		if intIn(v, &g.RestartTime, 1, 4095) != nil {
			return []error{fieldErr(field, v, "must be a graceful-restart time in seconds, 1..4095")}
		}
	case "Peers":
		return parseBGPPeers(g, v)
	}
	return nil
}

// parseBGPPeers reads Backend.Peers: every peer that is wrong is an error of
// its own, named by its index.
func parseBGPPeers(g *BGP, v json.RawMessage) []error {
	var raw []map[string]json.RawMessage
	if strictUnmarshal(v, &raw) != nil {
		return []error{fieldErr("Backend.Peers", v, `must be a list of peers such as [{"Address": "192.168.56.1", "ASN": 64513}]`)}
	}
	var errs []error
	seen := map[netip.Addr]int{}
	for i, p := range raw {
		prefix := fmt.Sprintf("Backend.Peers[%d].", i)
		if err := checkKeys(prefix, p, []string{"Address", "ASN", "Password"}); err != nil {
			errs = append(errs, err)
		}
		var peer BGPPeer
		var s string
		switch a, ok := p["Address"]; {
		case !ok:
			errs = append(errs, fieldErr(prefix+"Address", nil, "missing; every peer needs its IP address"))
		case json.Unmarshal(a, &s) != nil:
			errs = append(errs, fieldErr(prefix+"Address", a, "must be an IP address"))
		default:
			addr, err := netip.ParseAddr(s)
			switch {
			case err != nil || addr.Zone() != "":
				errs = append(errs, fieldErr(prefix+"Address", a, "not an IP address"))
			case addr.IsUnspecified() || addr.IsMulticast() || addr.IsLoopback():
				errs = append(errs, fieldErr(prefix+"Address", a, "must be a unicast address of a router"))
			default:
				peer.Address = addr.Unmap()
				if j, dup := seen[peer.Address]; dup {
					errs = append(errs, fieldErr(prefix+"Address", a, "duplicate peer: Backend.Peers[%d] has the same address", j))
				}
				seen[peer.Address] = i
			}
		}
		if a, ok := p["ASN"]; !ok {
			errs = append(errs, fieldErr(prefix+"ASN", nil, "missing; every peer needs its AS number"))
		} else if asn, err := ParseASN(a); err != nil {
			errs = append(errs, fieldErr(prefix+"ASN", a, "must be an AS number 1..%d", MaxASN))
		} else {
			peer.ASN = asn
		}
		if a, ok := p["Password"]; ok && (json.Unmarshal(a, &peer.Password) != nil || len(peer.Password) > 80) {
			errs = append(errs, fieldErr(prefix+"Password", json.RawMessage(`"..."`), "must be a string of at most 80 bytes (TCP MD5 key)"))
		}
		g.Peers = append(g.Peers, peer)
	}
	return errs
}

// marshalBGP adds the bgp options to m.
func (g *BGP) marshal(m map[string]any) {
	if g == nil {
		return
	}
	m["ASN"], m["NodeMesh"], m["IPIP"] = g.ASN, g.NodeMesh, g.IPIP
	m["HoldTime"], m["ConnectRetry"], m["RestartTime"] = g.HoldTime, g.ConnectRetry, g.RestartTime
	if len(g.Peers) > 0 {
		ps := make([]map[string]any, len(g.Peers))
		for i, p := range g.Peers {
			ps[i] = map[string]any{"Address": p.Address.String(), "ASN": p.ASN}
			if p.Password != "" {
				ps[i]["Password"] = p.Password
			}
		}
		m["Peers"] = ps
	}
}
