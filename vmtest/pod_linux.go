package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// nodeExec runs CNI plugins inside a node's namespace, as the node's
// container runtime would (ip netns exec, so no thread of this process
// changes namespace).
type nodeExec struct {
	*invoke.DefaultExec
	netns string
}

func (e nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.netns, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// A plugin reports its error as JSON on stdout.
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Msg != "" {
			return nil, &perr
		}
		return nil, fmt.Errorf("run %s in %s: %w: %s", filepath.Base(pluginPath), e.netns, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

const conflist = `{
  "cniVersion": "1.1.0",
  "name": "twill",
  "plugins": [{"type": "twill", "subnetFile": %q, "bridge": "cni0", "dataDir": %q, "isGateway": true, "hairpinMode": true}]
}`

// cni returns the CNI runtime and network list of a node.
func (c *Cluster) cni(n nodeState) (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	list, err := libcni.ConfListFromBytes(fmt.Appendf(nil, conflist, n.SubnetFile, filepath.Join(n.Dir, "cni")))
	if err != nil {
		return nil, nil, fmt.Errorf("CNI config of node %s: %w", n.Name, err)
	}
	exe := nodeExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}, netns: n.NetNS}
	rt := libcni.NewCNIConfigWithCacheDir([]string{filepath.Join(labDir(c.name), "cni-bin")}, filepath.Join(n.Dir, "cni-cache"), exe)
	return rt, list, nil
}

func podRuntime(p Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.Name, NetNS: p.NetNSPath, IfName: "eth0"}
}

// AddPod makes a pod namespace <lab>-<node>-<pod> and attaches it to node
// with the CNI plugin (ADD through libcni, run inside the node's
// namespace, exactly as a runtime does).
func (c *Cluster) AddPod(ctx context.Context, node, pod string) (Pod, error) {
	if err := validPodName(pod); err != nil {
		return Pod{}, err
	}
	var p Pod
	vm := c.qemu()
	err := c.update(func(st *state) error {
		i, err := findNode(st, c.name, node)
		if err != nil {
			return err
		}
		for _, q := range st.Pods {
			if q.Name == pod {
				return fmt.Errorf("lab %s has a pod %s already (on %s)", c.name, pod, q.Node)
			}
		}
		n := st.Nodes[i]
		p = Pod{Name: pod, Node: n.Name, NetNS: n.NetNS + "-" + pod}
		p.NetNSPath = filepath.Join("/run/netns", p.NetNS)
		if vm {
			// The namespace is in the node's VM.
			addr, err := c.vmAttachPod(ctx, n, p)
			if err != nil {
				return fmt.Errorf("add pod %s on %s: %w", pod, n.Name, err)
			}
			p.Addr = addr
			st.Pods = append(st.Pods, p)
			return nil
		}
		if err := run(ctx, "ip", "netns", "add", p.NetNS); err != nil {
			return fmt.Errorf("add pod %s: %w", pod, err)
		}
		addr, err := c.cniAdd(ctx, n, p)
		if err != nil {
			return errors.Join(fmt.Errorf("add pod %s on %s: %w", pod, n.Name, err), run(context.WithoutCancel(ctx), "ip", "netns", "del", p.NetNS))
		}
		p.Addr = addr
		st.Pods = append(st.Pods, p)
		return nil
	})
	if err != nil {
		return Pod{}, err
	}
	c.log.Info("pod added", "pod", p.Name, "node", p.Node, "addr", p.Addr)
	return p, nil
}

func (c *Cluster) cniAdd(ctx context.Context, n nodeState, p Pod) (addr netip.Addr, err error) {
	rt, list, err := c.cni(n)
	if err != nil {
		return addr, err
	}
	res, err := rt.AddNetworkList(ctx, list, podRuntime(p))
	if err != nil {
		return addr, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return addr, fmt.Errorf("CNI result: %w", err)
	}
	for _, ip := range r.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok {
			return a, nil
		}
	}
	return addr, fmt.Errorf("CNI result has no IPv4 address: %v", r.IPs)
}

// DelPod detaches a pod (CNI DEL) and deletes its namespace.
func (c *Cluster) DelPod(ctx context.Context, pod string) error {
	var errs []error
	vm := c.qemu()
	err := c.update(func(st *state) error {
		k := -1
		for j, q := range st.Pods {
			if q.Name == pod {
				k = j
			}
		}
		if k < 0 {
			return fmt.Errorf("lab %s has no pod %q", c.name, pod)
		}
		p := st.Pods[k]
		if vm {
			if i, err := findNode(st, c.name, p.Node); err != nil {
				errs = append(errs, err)
			} else if err := c.vmDetachPod(ctx, st.Nodes[i], p); err != nil {
				errs = append(errs, err)
			}
			st.Pods = append(st.Pods[:k], st.Pods[k+1:]...)
			return nil
		}
		if i, err := findNode(st, c.name, p.Node); err != nil {
			errs = append(errs, err)
		} else if rt, list, err := c.cni(st.Nodes[i]); err != nil {
			errs = append(errs, err)
		} else if err := rt.DelNetworkList(ctx, list, podRuntime(p)); err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL of pod %s: %w", pod, err))
		}
		if err := run(ctx, "ip", "netns", "del", p.NetNS); err != nil {
			errs = append(errs, err)
		}
		st.Pods = append(st.Pods[:k], st.Pods[k+1:]...)
		return nil
	})
	if err != nil {
		return err
	}
	c.log.Info("pod deleted", "pod", pod)
	return errors.Join(errs...)
}
