package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
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
	l := lease.Lease{Revision: resourceVersion(n)}
	l.Attrs = lease.Attrs{BackendType: n.Annotations[a.BackendType], Twill: &lease.NodeInfo{Node: n.Name, Dashboard: n.Annotations[a.Dashboard]}}
	half := func(cidr netip.Prefix, ipKey, dataKey string, v6 bool, subnet *netip.Prefix, ip *netip.Addr, data *json.RawMessage) error {
		if !cidr.IsValid() {
			return nil
		}
		v := n.Annotations[ipKey]
		addr, err := netip.ParseAddr(v)
		if err != nil || addr.Is6() != v6 || addr.Is4In6() {
			return fmt.Errorf("node %q annotation %s=%q: not an %s address", n.Name, ipKey, v, map[bool]string{false: "IPv4", true: "IPv6"}[v6])
		}
		if d := n.Annotations[dataKey]; d != "" && d != "null" {
			if !json.Valid([]byte(d)) {
				return fmt.Errorf("node %q annotation %s=%q: not JSON", n.Name, dataKey, d)
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

// publicIPs are the public IPs a node publishes: per family, the operator's
// overwrite annotation if set, else its own.
func (a Annotations) publicIPs(n *corev1.Node, own lease.Attrs) (v4, v6 netip.Addr, err error) {
	pick := func(key string, own netip.Addr, want6 bool) (netip.Addr, error) {
		v := n.Annotations[key]
		if v == "" {
			return own, nil
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Is6() != want6 {
			return netip.Addr{}, fmt.Errorf("node %q annotation %s=%q: not an %s address", n.Name, key, v, map[bool]string{false: "IPv4", true: "IPv6"}[want6])
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
