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
// kube-subnet-manager=true, or has no pod CIDR yet.
var errNotPublished = errors.New("node publishes no lease")

// NodeLease is the lease a node publishes: its IPv4 pod CIDR and what its
// annotations say, read as flannel reads them. A node not marked
// <prefix>/kube-subnet-manager=true, or without an IPv4 pod CIDR, publishes
// none (errNotPublished); one with a bad public IP or pod CIDR is an error
// naming the value.
func (a Annotations) NodeLease(n *corev1.Node) (lease.Lease, error) {
	if n.Annotations[a.KubeSubnetManager] != "true" {
		return lease.Lease{}, errNotPublished
	}
	cidrs, err := NodePodCIDRs(n)
	if err != nil {
		return lease.Lease{}, err
	}
	if !cidrs.V4.IsValid() {
		return lease.Lease{}, errNotPublished
	}
	ip, err := netip.ParseAddr(n.Annotations[a.PublicIP])
	if err != nil || !ip.Is4() {
		return lease.Lease{}, fmt.Errorf("node %q annotation %s=%q: not an IPv4 address", n.Name, a.PublicIP, n.Annotations[a.PublicIP])
	}
	attrs := lease.Attrs{PublicIP: ip, BackendType: n.Annotations[a.BackendType],
		Twill: &lease.NodeInfo{Node: n.Name, Dashboard: n.Annotations[a.Dashboard]}}
	if d := n.Annotations[a.BackendData]; d != "" && d != "null" {
		if !json.Valid([]byte(d)) {
			return lease.Lease{}, fmt.Errorf("node %q annotation %s=%q: not JSON", n.Name, a.BackendData, d)
		}
		attrs.BackendData = json.RawMessage(d)
	}
	return lease.Lease{Subnet: cidrs.V4, Attrs: attrs, Revision: resourceVersion(n)}, nil
}

// publicIP is the public IP a node publishes: the operator's overwrite
// annotation if set, else its own.
func (a Annotations) publicIP(n *corev1.Node, own netip.Addr) (netip.Addr, error) {
	v := n.Annotations[a.PublicIPOverwrite]
	if v == "" {
		return own, nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("node %q annotation %s=%q: not an IPv4 address", n.Name, a.PublicIPOverwrite, v)
	}
	return ip, nil
}

// Wanted is the annotations a node with attrs publishes, with public the
// public IP it publishes (publicIP): flannel's set, and twill's dashboard.
func (a Annotations) Wanted(attrs lease.Attrs, public netip.Addr) map[string]string {
	data := "null"
	if len(attrs.BackendData) > 0 {
		data = string(attrs.BackendData)
	}
	m := map[string]string{
		a.BackendType:       attrs.Backend(),
		a.BackendData:       data,
		a.PublicIP:          public.String(),
		a.KubeSubnetManager: "true",
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
