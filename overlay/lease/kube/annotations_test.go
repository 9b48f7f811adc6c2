package kube

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twillnet/twill/overlay/lease"
)

// The prefix rules are flannel's (pkg/subnet/kube/annotations_test.go).
func TestNewAnnotations(t *testing.T) {
	for _, tc := range []struct {
		prefix, backendType string // "" for an error
	}{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"},
		{"flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"},
		{"flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"},
		{"org9.com", "org9.com/backend-type"},
		{"org.com/9", "org.com/9-backend-type"},
		{DefaultPrefix, DefaultPrefix + "/backend-type"},
		{"org", ""},
		{"org/", ""},
		{"org/prefix", ""},
		{"org.COM", ""},
		{"org.com/PREFIX", ""},
		{"a.com/b/c", ""},
	} {
		a, err := NewAnnotations(tc.prefix)
		switch {
		case tc.backendType == "" && err == nil:
			t.Errorf("prefix %q: accepted (%s), want an error", tc.prefix, a.BackendType)
		case tc.backendType == "" && !strings.Contains(err.Error(), tc.prefix):
			t.Errorf("prefix %q: error %q does not name it", tc.prefix, err)
		case tc.backendType != "" && err != nil:
			t.Errorf("prefix %q: %v", tc.prefix, err)
		case tc.backendType != "" && a.BackendType != tc.backendType:
			t.Errorf("prefix %q: backend-type annotation %q, want %q", tc.prefix, a.BackendType, tc.backendType)
		}
	}
	a, _ := NewAnnotations(FlannelPrefix)
	want := Annotations{
		KubeSubnetManager: "flannel.alpha.coreos.com/kube-subnet-manager", BackendType: "flannel.alpha.coreos.com/backend-type",
		BackendData: "flannel.alpha.coreos.com/backend-data", BackendV6Data: "flannel.alpha.coreos.com/backend-v6-data",
		PublicIP: "flannel.alpha.coreos.com/public-ip", PublicIPv6: "flannel.alpha.coreos.com/public-ipv6",
		PublicIPOverwrite: "flannel.alpha.coreos.com/public-ip-overwrite", PublicIPv6Overwrite: "flannel.alpha.coreos.com/public-ipv6-overwrite",
		Dashboard: "flannel.alpha.coreos.com/twill-dashboard",
	}
	if a != want {
		t.Errorf("flannel's annotations:\n%+v\nwant\n%+v", a, want)
	}
}

func node(name string, podCIDRs []string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, ResourceVersion: "42"}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	return n
}

// flannelVXLAN is a node as flannel v0.26 annotates it with the vxlan backend.
func flannelVXLAN() *corev1.Node {
	return node("flannel-1", []string{"10.244.7.0/24"}, map[string]string{
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"8e:d1:3a:7f:10:01"}`,
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/public-ip":           "192.168.56.77",
		"node.alpha.kubernetes.io/ttl":                 "0",
	})
}

var v4 = Families{V4: true}

func TestNodeLease(t *testing.T) {
	a, _ := NewAnnotations(FlannelPrefix)
	l, err := a.NodeLease(flannelVXLAN(), v4)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.7.0/24") || l.Attrs.PublicIP != netip.MustParseAddr("192.168.56.77") ||
		l.Attrs.BackendType != "vxlan" || string(l.Attrs.BackendData) != `{"VNI":1,"VtepMAC":"8e:d1:3a:7f:10:01"}` ||
		l.Attrs.NodeName() != "flannel-1" || l.Revision != 42 {
		t.Errorf("lease %+v", l)
	}
	// host-gw: flannel writes "null" backend data.
	hg := flannelVXLAN()
	hg.Annotations["flannel.alpha.coreos.com/backend-type"] = "host-gw"
	hg.Annotations["flannel.alpha.coreos.com/backend-data"] = "null"
	if l, err := a.NodeLease(hg, v4); err != nil || l.Attrs.BackendData != nil || l.Attrs.BackendType != "host-gw" {
		t.Errorf("host-gw node: %+v, %v", l, err)
	}
	// podCIDRs of both families: the IPv4 one is the lease of an IPv4
	// network; both halves, with flannel's IPv6 annotations, of a dual-stack one.
	ds := flannelVXLAN()
	ds.Spec.PodCIDRs = []string{"fd00:10:244:7::/64", "10.244.7.0/24"}
	if l, err := a.NodeLease(ds, v4); err != nil || l.Subnet.String() != "10.244.7.0/24" || l.IPv6Subnet.IsValid() {
		t.Errorf("dual-stack node in an IPv4 network: %+v, %v", l, err)
	}
	ds.Annotations["flannel.alpha.coreos.com/public-ipv6"] = "fd00:56::77"
	ds.Annotations["flannel.alpha.coreos.com/backend-v6-data"] = `{"VNI":1,"VtepMAC":"8e:d1:3a:7f:10:02"}`
	l, err = a.NodeLease(ds, Families{V4: true, V6: true})
	if err != nil || l.Subnet.String() != "10.244.7.0/24" || l.IPv6Subnet.String() != "fd00:10:244:7::/64" ||
		l.Attrs.PublicIPv6.String() != "fd00:56::77" || string(l.Attrs.BackendV6Data) != `{"VNI":1,"VtepMAC":"8e:d1:3a:7f:10:02"}` {
		t.Errorf("dual-stack node in a dual-stack network: %+v, %v", l, err)
	}
	if l, err := a.NodeLease(ds, Families{V6: true}); err != nil || l.Subnet.IsValid() || l.Attrs.PublicIP.IsValid() || l.IPv6Subnet.String() != "fd00:10:244:7::/64" {
		t.Errorf("IPv6-only network: %+v, %v", l, err)
	}

	for _, tc := range []struct {
		name string
		edit func(*corev1.Node)
		err  string // "" for errNotPublished
	}{
		{"not marked", func(n *corev1.Node) { delete(n.Annotations, a.KubeSubnetManager) }, ""},
		{"marked false", func(n *corev1.Node) { n.Annotations[a.KubeSubnetManager] = "false" }, ""},
		{"no pod cidr", func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "", nil }, ""},
		{"only IPv6", func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "fd00::/64", nil }, ""},
		{"IPv6 public ip", func(n *corev1.Node) { n.Annotations[a.PublicIP] = "fd00::1" }, `public-ip="fd00::1": not an IPv4 address`},
		{"bad public ip", func(n *corev1.Node) { n.Annotations[a.PublicIP] = "192.168.56" }, `flannel.alpha.coreos.com/public-ip="192.168.56"`},
		{"bad pod cidr", func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.7.1/24"} }, `spec.podCIDRs "10.244.7.1/24"`},
		{"three pod cidrs", func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.7.0/24", "10.244.8.0/24", "fd00::/64"} }, "want one subnet, or one per family"},
		{"two IPv4", func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.7.0/24", "10.244.8.0/24"} }, "two subnets of one family"},
		{"bad backend data", func(n *corev1.Node) { n.Annotations[a.BackendData] = "{" }, "not JSON"},
	} {
		n := flannelVXLAN()
		tc.edit(n)
		_, err := a.NodeLease(n, v4)
		switch {
		case tc.err == "" && !errors.Is(err, errNotPublished):
			t.Errorf("%s: %v, want no lease", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), `"flannel-1"`)):
			t.Errorf("%s: %v, want an error naming the node and %s", tc.name, err, tc.err)
		}
	}
}

// What twill writes reads back as the same lease, and as flannel reads it:
// the four annotations flannel's AcquireLease compares, with flannel's
// "null" for no backend data.
func TestWantedRoundTrip(t *testing.T) {
	a, _ := NewAnnotations(FlannelPrefix)
	attrs := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.11"), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`),
		Twill:       &lease.NodeInfo{Node: "n1", Dashboard: "http://192.168.56.11:9180"}}
	want := a.Wanted(attrs)
	if want["flannel.alpha.coreos.com/backend-type"] != "vxlan" || want["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" ||
		want["flannel.alpha.coreos.com/public-ip"] != "192.168.56.11" ||
		want["flannel.alpha.coreos.com/backend-data"] != `{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}` {
		t.Errorf("annotations %v", want)
	}
	n := node("n1", []string{"10.244.1.0/24"}, want)
	l, err := a.NodeLease(n, v4)
	if err != nil || !l.Attrs.Equal(attrs) {
		t.Errorf("read back %+v, %v; want %+v", l.Attrs, err, attrs)
	}
	if d := differ(n, want); len(d) != 0 {
		t.Errorf("a node carrying them differs by %v", d)
	}
	hg := a.Wanted(lease.Attrs{PublicIP: attrs.PublicIP, BackendType: "host-gw"})
	if hg[a.BackendData] != "null" {
		t.Errorf("host-gw backend data %q, want flannel's null", hg[a.BackendData])
	}
	if _, ok := hg[a.Dashboard]; ok {
		t.Errorf("no dashboard, but annotated %v", hg)
	}
	if _, ok := hg[a.PublicIPv6]; ok {
		t.Errorf("no IPv6, but annotated %v", hg)
	}
	v6 := a.Wanted(lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00:56::11"), BackendType: "vxlan", BackendV6Data: json.RawMessage(`{"VNI":1}`)})
	if v6[a.PublicIPv6] != "fd00:56::11" || v6[a.BackendV6Data] != `{"VNI":1}` || v6[a.PublicIP] != "" {
		t.Errorf("IPv6 node annotations %v", v6)
	}
	// The overwrite annotation wins.
	n.Annotations[a.PublicIPOverwrite] = "203.0.113.9"
	if ip, _, err := a.publicIPs(n, attrs); err != nil || ip.String() != "203.0.113.9" {
		t.Errorf("overwrite: %v, %v", ip, err)
	}
	n.Annotations[a.PublicIPOverwrite] = "nope"
	if _, _, err := a.publicIPs(n, attrs); err == nil || !strings.Contains(err.Error(), `public-ip-overwrite="nope"`) {
		t.Errorf("bad overwrite: %v", err)
	}
}
