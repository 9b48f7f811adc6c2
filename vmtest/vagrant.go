package vmtest

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The vagrant driver plays scenarios on a running Vagrant cluster of the
// project's Vagrantfile (make vagrant-up): its machines node1 .. nodeN,
// provisioned by ansible/site.yml, are a Remote cluster reached with the
// ssh config `vagrant ssh-config` prints, as the vagrant user with sudo.
// It brings nothing up and tears nothing down.

// VagrantOptions says where the Vagrant cluster is.
type VagrantOptions struct {
	// Dir is the directory of the Vagrantfile (default ".").
	Dir string
	// StateDir keeps the ssh config and subnet file copies (default: a
	// directory per Vagrant project under the system's temp directory).
	StateDir string
	// Env is extra environment for vagrant (TWILL_NODES=..., VAGRANT_*).
	Env []string
}

// OpenVagrant reads the running machines of the Vagrant cluster in
// opt.Dir and returns them as a Remote cluster. Each node's underlay
// address is the public IP its twilld was configured with; the host
// outside the cluster is this machine, when it has an address on the
// nodes' /24 (the private network's host side, 192.168.56.1).
func OpenVagrant(ctx context.Context, opt VagrantOptions, log *slog.Logger) (*Remote, error) {
	dir, err := filepath.Abs(cmp.Or(opt.Dir, "."))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "Vagrantfile")); err != nil {
		return nil, fmt.Errorf("vagrant driver: no Vagrantfile in %s: %w", dir, err)
	}
	if opt.StateDir == "" {
		sum := sha256.Sum256([]byte(dir))
		opt.StateDir = filepath.Join(os.TempDir(), "twill-vagrant-"+hex.EncodeToString(sum[:6]))
	}
	if err := os.MkdirAll(opt.StateDir, 0o700); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "vagrant", "ssh-config")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "VAGRANT_CHECKPOINT_DISABLE=1"), opt.Env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("vagrant ssh-config in %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	hosts, err := ParseSSHConfig(string(out))
	if err != nil {
		return nil, fmt.Errorf("vagrant ssh-config in %s: %w", dir, err)
	}
	nodes, err := vagrantNodes(hosts)
	if err != nil {
		return nil, fmt.Errorf("vagrant cluster in %s: %w", dir, err)
	}
	config := filepath.Join(opt.StateDir, "ssh-config")
	if err := os.WriteFile(config, out, 0o600); err != nil {
		return nil, err
	}
	ssh := []string{"ssh", "-F", config, "-q", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(opt.StateDir, "ssh-%C"), "-o", "ControlPersist=60s"}

	// Each node's public IP, from twilld's settings.
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			argv := append(append([]string(nil), ssh...), nodes[i].Host,
				"sudo -n sh -c "+shellQuote(`. `+remoteEnvFile+` && echo "$TWILLD_PUBLIC_IP"`))
			out, err := runToFile(ctx, nil, argv...)
			if err != nil {
				errs[i] = fmt.Errorf("read %s on %s (is twill installed? vagrant provision does it): %w: %s", remoteEnvFile, nodes[i].Host, err, strings.TrimSpace(string(out)))
				return
			}
			a, err := netip.ParseAddr(strings.TrimSpace(string(out)))
			if err != nil {
				errs[i] = fmt.Errorf("%s on %s has no TWILLD_PUBLIC_IP: %q", remoteEnvFile, nodes[i].Host, out)
				return
			}
			nodes[i].UnderlayIP = a
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	spec := RemoteSpec{Name: "vagrant", Nodes: nodes, SSH: ssh, Sudo: true, Dir: opt.StateDir}
	if a, ok := localAddrIn(netip.PrefixFrom(nodes[0].UnderlayIP, 24).Masked()); ok {
		spec.Outside = &RemoteOutside{Addr: a}
	}
	return NewRemote(spec, log)
}

// localAddrIn finds an address of this machine's (this namespace's) in
// prefix.
func localAddrIn(prefix netip.Prefix) (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && prefix.Contains(ip) {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// SSHHost is one Host block of an ssh_config, as `vagrant ssh-config`
// prints one per running machine.
type SSHHost struct {
	Name string
	// Options by their lower-cased keyword (hostname, user, port,
	// identityfile, ...); the first value of a keyword wins, as in ssh.
	Options map[string]string
}

// ParseSSHConfig reads the Host blocks of an ssh_config. Options before the
// first Host, Match blocks and comments are not supported: vagrant prints
// none of them.
func ParseSSHConfig(text string) ([]SSHHost, error) {
	var hosts []SSHHost
	sc := bufio.NewScanner(strings.NewReader(text))
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		key, value, ok := strings.Cut(strings.Replace(s, "=", " ", 1), " ")
		value = strings.TrimSpace(value)
		if !ok || value == "" {
			return nil, fmt.Errorf("ssh config line %d: %q has no value", line, s)
		}
		key = strings.ToLower(key)
		switch {
		case key == "host":
			if strings.ContainsAny(value, " *?!") {
				return nil, fmt.Errorf("ssh config line %d: host pattern %q: want one plain name", line, value)
			}
			hosts = append(hosts, SSHHost{Name: value, Options: map[string]string{}})
		case key == "match":
			return nil, fmt.Errorf("ssh config line %d: Match blocks are not supported", line)
		case len(hosts) == 0:
			return nil, fmt.Errorf("ssh config line %d: %s before the first Host", line, key)
		default:
			h := &hosts[len(hosts)-1]
			if _, ok := h.Options[key]; !ok {
				h.Options[key] = strings.Trim(value, `"`)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("ssh config has no Host")
	}
	return hosts, nil
}

var vagrantNodeRE = regexp.MustCompile(`^node([1-9][0-9]*)$`)

// vagrantNodes picks the project Vagrantfile's machines (node1 .. nodeN)
// from the ssh config's hosts, in order, and names them as the scenarios
// do (n1 .. nN). The numbers must run from 1 without a gap: a scenario's
// n2 is the Vagrantfile's node2.
func vagrantNodes(hosts []SSHHost) ([]RemoteNode, error) {
	byNum := map[int]string{}
	for _, h := range hosts {
		m := vagrantNodeRE.FindStringSubmatch(h.Name)
		if m == nil {
			continue
		}
		i, _ := strconv.Atoi(m[1])
		byNum[i] = h.Name
	}
	if len(byNum) == 0 {
		names := make([]string, 0, len(hosts))
		for _, h := range hosts {
			names = append(names, h.Name)
		}
		return nil, fmt.Errorf("no machine named node<N> among %s (the project's Vagrantfile names them so)", strings.Join(names, ", "))
	}
	nums := make([]int, 0, len(byNum))
	for i := range byNum {
		nums = append(nums, i)
	}
	slices.Sort(nums)
	var nodes []RemoteNode
	for k, i := range nums {
		if i != k+1 {
			return nil, fmt.Errorf("machines %v: node%d is not running (vagrant up brings it up)", nums, k+1)
		}
		nodes = append(nodes, RemoteNode{Name: "n" + strconv.Itoa(i), Host: byNum[i]})
	}
	return nodes, nil
}
