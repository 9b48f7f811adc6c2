package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/twillnet/twill/overlay/subnetfile"
)

// Versions are the CNI spec versions the plugin speaks. Results are built as
// 1.1.0 and converted down.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is what the plugin prints when run without CNI_COMMAND.
const About = "twill CNI plugin: veth + bridge attachment to the node's twill subnet, or macvlan/ipvlan attachment to the underlay"

// Plugin is the CNI plugin. Its methods are the CNI verbs, called by skel
// with the command's arguments; they act in the current network namespace
// (the node's) and in the pod's.
type Plugin struct {
	Log *slog.Logger
}

// Funcs are the plugin's verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

func cniError(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

// vethPrefix starts the name of every node-side veth the plugin creates.
const vethPrefix = "tw"

// VethName is the name of the node-side veth for an attachment: derived from
// it, so DEL and GC find the veth without the pod namespace.
func VethName(a Attachment) string {
	sum := sha256.Sum256([]byte(a.ContainerID + "/" + a.IfName))
	return vethPrefix + hex.EncodeToString(sum[:])[:12]
}

func parseConf(data []byte) (Conf, *types.Error) {
	c, err := ParseConf(data)
	if err != nil {
		return Conf{}, cniError(types.ErrInvalidNetworkConfig, "%v", err)
	}
	return c, nil
}

func readSubnetFile(c Conf) (subnetfile.File, *types.Error) {
	sf, err := subnetfile.Read(c.SubnetFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return sf, cniError(types.ErrTryAgainLater, "subnet file %s does not exist: is twilld running on this node? (%v)", c.SubnetFile, err)
	case err != nil:
		return sf, cniError(types.ErrInvalidNetworkConfig, "%v", err)
	}
	if c.IPMasq != nil && *c.IPMasq && !sf.IPMasq {
		return sf, cniError(types.ErrInvalidNetworkConfig,
			"field \"ipMasq\" (value true): twill-cni does not masquerade, and %s says TWILL_IPMASQ=false; run twilld with masquerading on or drop ipMasq", c.SubnetFile)
	}
	for _, s := range sf.Subnets() {
		if s.Addr() == s.Masked().Addr() {
			key := "TWILL_SUBNET"
			if s.Addr().Is6() {
				key = "TWILL_IPV6_SUBNET"
			}
			return sf, cniError(types.ErrInvalidNetworkConfig, "%s: %s=%s is not a gateway address in its subnet", c.SubnetFile, key, s)
		}
	}
	return sf, nil
}

// podSubnets are the subnets a pod gets an address in, each with the
// gateway as its address: one per family of the node's lease; on the
// underlay (macvlan, ipvlan) the IPv4 one only.
func podSubnets(sf subnetfile.File) []netip.Prefix {
	if sf.IsSublink() {
		return []netip.Prefix{sf.Subnet}
	}
	return sf.Subnets()
}

// Add attaches the pod: IPAM, bridge, veth, address and route.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return cerr
	}
	sf, cerr := readSubnetFile(conf)
	if cerr != nil {
		return cerr
	}
	owner := Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	log := p.Log.With("container", args.ContainerID, "ifname", args.IfName, "subnets", podSubnets(sf))

	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return cniError(types.ErrInvalidNetNS, "open pod network namespace %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	if same, err := sameAsCurrent(podNS); err != nil {
		return cniError(types.ErrInvalidNetNS, "%v", err)
	} else if same {
		return cniError(types.ErrInvalidNetNS, "pod network namespace %q is the plugin's own (the node's)", args.Netns)
	}

	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return cniError(types.ErrIOFailure, "%v", err)
	}
	var addrs []netip.Addr // one per podSubnets
	var bridge netlink.Link
	err = func() error {
		unlock, err := store.Lock()
		if err != nil {
			return err
		}
		defer unlock()
		if !sf.IsSublink() {
			if bridge, err = ensureBridge(conf, sf, store, log); err != nil {
				return err
			}
		}
		for _, s := range podSubnets(sf) {
			a, err := store.Allocate(s.Masked(), s.Addr(), owner)
			if err != nil {
				return err
			}
			addrs = append(addrs, a)
		}
		return nil
	}()
	if err != nil {
		var errs []error
		errs = append(errs, err)
		if rerr := releaseAttachment(store, owner); rerr != nil {
			errs = append(errs, rerr)
		}
		return cniError(types.ErrInternal, "%v", errors.Join(errs...))
	}
	log = log.With("addrs", addrs)

	var result *types100.Result
	if sf.IsSublink() {
		result, err = attachSublink(sf, podNS, owner, addrs[0])
	} else {
		result, err = attach(conf, sf, bridge, podNS, owner, addrs)
	}
	if err != nil {
		var errs []error
		errs = append(errs, err)
		if derr := deletePodSubInterface(args.Netns, owner.IfName); derr != nil {
			errs = append(errs, derr)
		}
		if derr := deleteLink(VethName(owner)); derr != nil {
			errs = append(errs, derr)
		}
		if rerr := releaseAttachment(store, owner); rerr != nil {
			errs = append(errs, rerr)
		}
		return cniError(types.ErrInternal, "%v", errors.Join(errs...))
	}
	result.DNS = conf.DNS
	log.Debug("attached pod")
	return types.PrintResult(result, conf.CNIVersion)
}

func sameAsCurrent(target ns.NetNS) (bool, error) {
	cur, err := ns.GetCurrentNS()
	if err != nil {
		return false, fmt.Errorf("open the plugin's network namespace: %w", err)
	}
	defer cur.Close()
	return sameNS(cur.Fd(), target.Fd())
}

func releaseAttachment(store *Store, owner Attachment) error {
	unlock, err := store.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	_, err = store.Release(owner)
	return err
}

// Del detaches the pod: frees its address and deletes its veth (or, on the
// underlay, its macvlan or ipvlan interface in the pod namespace). A
// container the plugin does not know, or a pod namespace that is gone, is
// not an error.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return cerr
	}
	owner := Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	var errs []error
	if err := deleteLink(VethName(owner)); err != nil {
		errs = append(errs, err)
	}
	if err := deletePodSubInterface(args.Netns, owner.IfName); err != nil {
		errs = append(errs, err)
	}
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err == nil {
		err = releaseAttachment(store, owner)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return cniError(types.ErrInternal, "delete attachment %s: %v", owner, err)
	}
	p.Log.Debug("detached pod", "container", args.ContainerID, "ifname", args.IfName)
	return nil
}

// Check verifies that what ADD reported (the prevResult) is still in place.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return cerr
	}
	if conf.RawPrevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network configuration")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return cniError(types.ErrDecodingFailure, "parse prevResult: %v", err)
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cniError(types.ErrDecodingFailure, "convert prevResult: %v", err)
	}
	sf, cerr := readSubnetFile(conf)
	if cerr != nil {
		return cerr
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return cniError(types.ErrInvalidNetNS, "open pod network namespace %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return cniError(types.ErrIOFailure, "%v", err)
	}
	owner := Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	log := p.Log.With("container", args.ContainerID, "ifname", args.IfName, "subnets", podSubnets(sf))
	if err := check(conf, sf, podNS, store, owner, prev, log); err != nil {
		return cniError(types.ErrInternal, "check attachment %s: %v", owner, err)
	}
	return nil
}

// Status reports whether the plugin can attach pods: it can once twilld has
// written a subnet file that parses.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return cerr
	}
	if _, err := subnetfile.Read(conf.SubnetFile); err != nil {
		return cniError(types.ErrPluginNotAvailable, "twill is not ready on this node: %v", err)
	}
	return nil
}

// GC frees the addresses of attachments that are not in
// cni.dev/valid-attachments, and deletes the node-side veths on the bridge
// that belong to no valid attachment.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return cerr
	}
	valid := map[Attachment]bool{}
	validVeth := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		at := Attachment{ContainerID: a.ContainerID, IfName: a.IfName}
		valid[at] = true
		validVeth[VethName(at)] = true
	}
	var errs []error
	store, err := OpenStore(conf.DataDir, conf.Name)
	if err != nil {
		return cniError(types.ErrIOFailure, "%v", err)
	}
	err = func() error {
		unlock, err := store.Lock()
		if err != nil {
			return err
		}
		defer unlock()
		allocs, err := store.List()
		if err != nil {
			return err
		}
		for _, a := range allocs {
			if valid[a.Owner] {
				continue
			}
			if err := store.Free(a.Addr); err != nil {
				errs = append(errs, err)
				continue
			}
			p.Log.Info("gc: freed address", "addr", a.Addr, "owner", a.Owner)
		}
		return nil
	}()
	if err != nil {
		errs = append(errs, err)
	}
	removed, err := removeStaleVeths(conf.Bridge, validVeth)
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range removed {
		p.Log.Info("gc: deleted stale veth", "veth", name)
	}
	if err := errors.Join(errs...); err != nil {
		return cniError(types.ErrInternal, "gc: %v", err)
	}
	return nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func defaultRoute(gw netip.Addr) *types.Route {
	zero := netip.IPv4Unspecified()
	if gw.Is6() {
		zero = netip.IPv6Unspecified()
	}
	return &types.Route{Dst: ipNet(netip.PrefixFrom(zero, 0)), GW: net.IP(gw.AsSlice())}
}
