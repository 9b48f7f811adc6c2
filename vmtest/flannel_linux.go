package vmtest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/subnetfile"
)

// A flannel node (Spec.FlannelNodes) runs flannel's own flanneld in its
// namespace instead of twilld: the lab's etcd and prefix, eth0, the node's
// public addresses, its subnet file where twilld's would be. Its pods are
// attached as flannel's CNI plugin attaches them: it hands the pod to the
// reference bridge plugin (bridge cni0, the gateway on it, no masquerade
// when flanneld masquerades, the file's MTU) with host-local IPAM over the
// node's subnet and a route to the network (flannel's cni-plugin,
// flannel_linux.go); the lab writes that delegate config itself, from
// flannel's subnet file, since flannel's CNI plugin is not on the module
// proxy.

// flannelReady is what flanneld logs once its subnet file is written and
// its traffic rules are in place.
const flannelReady = "flannel is ready"

// flannelDir finds flanneld and the CNI plugins: Spec.FlannelBin, else
// build/flannel of the source tree.
func flannelDir(spec Spec) (string, error) {
	if spec.FlannelBin == "" {
		return binaries.FlannelDir()
	}
	dir, err := filepath.Abs(spec.FlannelBin)
	if err != nil {
		return "", err
	}
	for _, n := range binaries.FlannelNames {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return "", fmt.Errorf("flannel binaries: %w (%s builds them)", err, binaries.FlannelTarget)
		}
	}
	return dir, nil
}

// flannelArgs are flanneld's flags on node n. --ip-masq is always given,
// as kube-flannel runs flanneld: without it flannel's CNI plugin has the
// bridge plugin masquerade whatever leaves the node's subnet, other nodes'
// pods included (so a peer sees the node's address, not the pod's).
func flannelArgs(st *state, n nodeState) []string {
	args := []string{
		"--ip-masq",
		"--etcd-endpoints", st.EtcdURL,
		"--etcd-prefix", cmp.Or(st.Spec.EtcdPrefix, etcd.DefaultPrefix),
		"--iface", "eth0",
		"--public-ip", n.IP.String(),
		"--subnet-file", n.SubnetFile,
	}
	if n.IP6.IsValid() {
		args = append(args, "--public-ipv6", n.IP6.String())
	}
	return args
}

// flannelConflist is the CNI config of a flannel node's pods: what
// flannel's CNI plugin hands the bridge plugin for a node with subnet file
// f (kube-flannel's delegate settings: hairpin mode, the default gateway).
func flannelConflist(f subnetfile.File, dataDir string) ([]byte, error) {
	var ranges [][]map[string]string
	var routes []map[string]string
	if f.Subnet.IsValid() {
		ranges = append(ranges, []map[string]string{{"subnet": f.NodeSubnet().String()}})
		routes = append(routes, map[string]string{"dst": f.Network.String()})
	}
	if f.IPv6Subnet.IsValid() {
		ranges = append(ranges, []map[string]string{{"subnet": f.IPv6NodeSubnet().String()}})
		routes = append(routes, map[string]string{"dst": f.IPv6Network.String()})
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("flannel's subnet file has no subnet")
	}
	bridge := map[string]any{
		"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
		"ipMasq": !f.IPMasq, "mtu": f.MTU,
		"ipam": map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": ranges, "routes": routes},
	}
	return json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "cbr0", "plugins": []any{bridge}})
}
