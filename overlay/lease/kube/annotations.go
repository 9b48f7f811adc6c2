package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/twillnet/twill/overlay/lease"
)

// Annotation prefixes. Twill's own is DefaultPrefix; with FlannelPrefix a
// twill node and a flannel node (kube-subnet-mgr) share one cluster: each
// reads the other's annotations.
const (
	DefaultPrefix = "twill.twillnet.github.io"
	FlannelPrefix = "flannel.alpha.coreos.com"
)

// Annotations are the names of the node annotations a node publishes its
// lease in, flannel's under a prefix: <prefix>/backend-type and so on.
type Annotations struct {
	KubeSubnetManager   string // "true" on nodes whose subnet manager is the API
	BackendType         string
	BackendData         string
	BackendV6Data       string
	PublicIP            string
	PublicIPv6          string
	PublicIPOverwrite   string // set by an operator: the public IP to publish instead
	PublicIPv6Overwrite string
	// Dashboard is twill's own: the node's dashboard URL. flannel ignores it.
	Dashboard string
}

// prefixPattern is flannel's check of a prefix once it ends in "/" or "-":
// a DNS name, one slash, then an optional name part ending in "-".
var prefixPattern = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// NewAnnotations names the annotations under prefix, as flannel does:
// "example.com" gives example.com/backend-type, "example.com/net" gives
// example.com/net-backend-type.
func NewAnnotations(prefix string) (Annotations, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return Annotations{}, fmt.Errorf("--kube-annotation-prefix %q: at most one slash", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixPattern.MatchString(p) {
		return Annotations{}, fmt.Errorf("--kube-annotation-prefix %q: want a DNS name, optionally /name (lower-case letters, digits, '-', '_', '.')", prefix)
	}
	return Annotations{
		KubeSubnetManager:   p + "kube-subnet-manager",
		BackendType:         p + "backend-type",
		BackendData:         p + "backend-data",
		BackendV6Data:       p + "backend-v6-data",
		PublicIP:            p + "public-ip",
		PublicIPv6:          p + "public-ipv6",
		PublicIPOverwrite:   p + "public-ip-overwrite",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
		Dashboard:           p + "twill-dashboard",
	}, nil
}

// PodCIDRs are a node's pod subnets, one per family.
type PodCIDRs struct {
	V4, V6 netip.Prefix
}

// NodePodCIDRs reads spec.podCIDRs (spec.podCIDR when that is empty): at most
// one subnet per family. None is not an error: the CIDR is not assigned yet.
func NodePodCIDRs(n *corev1.Node) (PodCIDRs, error) {
	field, list := "spec.podCIDRs", n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		field, list = "spec.podCIDR", []string{n.Spec.PodCIDR}
	}
	if len(list) > 2 {
		return PodCIDRs{}, fmt.Errorf("node %q %s %v: want one subnet, or one per family (dual stack)", n.Name, field, list)
	}
	var c PodCIDRs
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			return PodCIDRs{}, fmt.Errorf("node %q %s %q: not a subnet in CIDR notation", n.Name, field, s)
		}
		dst := &c.V4
		if p.Addr().Is6() {
			dst = &c.V6
		}
		if dst.IsValid() {
			return PodCIDRs{}, fmt.Errorf("node %q %s %v: two subnets of one family", n.Name, field, list)
		}
		*dst = p
	}
	return c, nil
}

// errNotPublished says that a node publishes no lease: it is not marked
// kube-subnet-manager=true, or has no pod CIDR of a family in use yet.
var errNotPublished = errors.New("node publishes no lease")

// Families says which address families the network config enables
// (netconf EnableIPv4, EnableIPv6).
type Families struct{ V4, V6 bool }

// NodeLease is the lease a node publishes, read as flannel reads it: per
// family in use, its pod CIDR and the public IP and backend data of its
// annotations. A node not marked <prefix>/kube-subnet-manager=true, or
// without a pod CIDR of any family in use, publishes none
// (errNotPublished); a bad public IP, pod CIDR or backend data is an error
// naming the node, the field and the value.
func (a Annotations) NodeLease(n *corev1.Node, fam Families) (lease.Lease, error) {
	if n.Annotations[a.KubeSubnetManager] != "true" {
		return lease.Lease{}, errNotPublished
	}
	cidrs, err := NodePodCIDRs(n)
	if err != nil {
		return lease.Lease{}, err
	}
	// Created orders Nodes by age (between two that claim one subnet the
	// older is routed); the API server sets it, to the second.
	l := lease.Lease{Revision: resourceVersion(n), Created: n.CreationTimestamp.Unix()}
	for _, k := range []string{a.BackendType, a.Dashboard, a.PublicIP, a.PublicIPv6} {
		if v, size := annotation(n, k); size > maxShortValue {
			return lease.Lease{}, fmt.Errorf("node %q annotation %s: %d bytes, more than the %d twill reads (%s)", n.Name, k, size, maxShortValue, capQuote(v))
		}
	}
	l.Attrs = lease.Attrs{BackendType: n.Annotations[a.BackendType], Twill: &lease.NodeInfo{Node: n.Name, Dashboard: n.Annotations[a.Dashboard]}}
	half := func(cidr netip.Prefix, ipKey, dataKey string, v6 bool, subnet *netip.Prefix, ip *netip.Addr, data *json.RawMessage) error {
		if !cidr.IsValid() {
			return nil
		}
		v := n.Annotations[ipKey]
		addr, err := netip.ParseAddr(v)
		if err != nil || addr.Is6() != v6 || addr.Is4In6() || addr.Zone() != "" {
			return fmt.Errorf("node %q annotation %s=%s: not an %s address", n.Name, ipKey, capQuote(v), map[bool]string{false: "IPv4", true: "IPv6"}[v6])
		}
		if why := unroutable(addr); why != "" {
			return fmt.Errorf("node %q annotation %s=%q: %s, not a node's address", n.Name, ipKey, v, why)
		}
		if d, size := annotation(n, dataKey); d != "" && d != "null" {
			if size > MaxBackendData {
				return fmt.Errorf("node %q annotation %s: %d bytes, more than the %d twill reads (%s)", n.Name, dataKey, size, MaxBackendData, capQuote(d))
			}
			if !json.Valid([]byte(d)) {
				return fmt.Errorf("node %q annotation %s=%s: not JSON", n.Name, dataKey, capQuote(d))
			}
			*data = json.RawMessage(d)
		}
		*subnet, *ip = cidr, addr
		return nil
	}
	if fam.V4 {
		if err := half(cidrs.V4, a.PublicIP, a.BackendData, false, &l.Subnet, &l.Attrs.PublicIP, &l.Attrs.BackendData); err != nil {
			return lease.Lease{}, err
		}
	}
	if fam.V6 {
		if err := half(cidrs.V6, a.PublicIPv6, a.BackendV6Data, true, &l.IPv6Subnet, &l.Attrs.PublicIPv6, &l.Attrs.BackendV6Data); err != nil {
			return lease.Lease{}, err
		}
	}
	if !l.Subnets().IsValid() {
		return lease.Lease{}, errNotPublished
	}
	return l, nil
}

// MaxBackendData is the largest backend-data (and backend-v6-data)
// annotation a Node's lease is read with: flannel's and twill's are under
// 100 bytes; the API server allows 256 KiB of annotations. A larger one is
// refused, and never logged whole.
const MaxBackendData = 4096

// maxShortValue bounds the annotations that hold a word or a URL
// (backend-type, twill-dashboard).
const maxShortValue = 256

// names are the annotations the registry reads.
func (a Annotations) names() []string {
	return []string{a.KubeSubnetManager, a.BackendType, a.BackendData, a.BackendV6Data, a.PublicIP, a.PublicIPv6,
		a.PublicIPOverwrite, a.PublicIPv6Overwrite, a.Dashboard}
}

// sizeKey is where the informer's copy of a Node keeps the size of an
// annotation it cut short (a key the API server cannot hold: it has a
// space).
func sizeKey(k string) string { return "twill size of " + k }

// annotation is n's annotation k and its size: that of the value the API
// server holds, also when the informer kept only its first bytes.
func annotation(n *corev1.Node, k string) (string, int) {
	v := n.Annotations[k]
	if s, ok := n.Annotations[sizeKey(k)]; ok {
		if size, err := strconv.Atoi(s); err == nil {
			return v, size
		}
	}
	return v, len(v)
}

// capQuote quotes v for a message, cut to its first 64 bytes (a hostile
// annotation may be 256 KiB), saying how long it was.
func capQuote(v string) string {
	const keep = 64
	if len(v) <= keep {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%q… (%d bytes)", v[:keep], len(v))
}

// unroutable says why addr cannot be a node's public address ("" if it
// can be): unspecified, loopback, multicast, link-local or broadcast.
func unroutable(addr netip.Addr) string {
	switch {
	case addr.IsUnspecified():
		return "the unspecified address"
	case addr.IsLoopback():
		return "a loopback address"
	case addr.IsMulticast():
		return "a multicast address"
	case addr.IsLinkLocalUnicast():
		return "a link-local address"
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// publicIPs are the public IPs a node publishes: per family, the operator's
// overwrite annotation if set, else its own.
func (a Annotations) publicIPs(n *corev1.Node, own lease.Attrs) (v4, v6 netip.Addr, err error) {
	pick := func(key string, own netip.Addr, want6 bool) (netip.Addr, error) {
		v := n.Annotations[key]
		if v == "" {
			return own, nil
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Is6() != want6 || ip.Is4In6() || ip.Zone() != "" {
			return netip.Addr{}, fmt.Errorf("node %q annotation %s=%s: not an %s address", n.Name, key, capQuote(v), map[bool]string{false: "IPv4", true: "IPv6"}[want6])
		}
		if why := unroutable(ip); why != "" {
			return netip.Addr{}, fmt.Errorf("node %q annotation %s=%q: %s, not a node's address", n.Name, key, v, why)
		}
		return ip, nil
	}
	v4, err4 := pick(a.PublicIPOverwrite, own.PublicIP, false)
	v6, err6 := pick(a.PublicIPv6Overwrite, own.PublicIPv6, true)
	return v4, v6, errors.Join(err4, err6)
}

// Wanted is the annotations a node publishing attrs writes, flannel's set
// (the IPv4 half when attrs has a public IP, the IPv6 half when it has a
// public IPv6 address; "null" for no backend data, as flannel writes it) and
// twill's dashboard.
func (a Annotations) Wanted(attrs lease.Attrs) map[string]string {
	data := func(d json.RawMessage) string {
		if len(d) == 0 {
			return "null"
		}
		return string(d)
	}
	m := map[string]string{
		a.BackendType:       attrs.Backend(),
		a.KubeSubnetManager: "true",
	}
	if attrs.PublicIP.IsValid() {
		m[a.PublicIP] = attrs.PublicIP.String()
		m[a.BackendData] = data(attrs.BackendData)
	}
	if attrs.PublicIPv6.IsValid() {
		m[a.PublicIPv6] = attrs.PublicIPv6.String()
		m[a.BackendV6Data] = data(attrs.BackendV6Data)
	}
	if attrs.Twill != nil && attrs.Twill.Dashboard != "" {
		m[a.Dashboard] = attrs.Twill.Dashboard
	}
	return m
}

// differ returns the annotations of want that n does not carry already.
func differ(n *corev1.Node, want map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range want {
		if have, ok := n.Annotations[k]; !ok || have != v {
			out[k] = v
		}
	}
	return out
}
