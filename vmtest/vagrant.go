package vmtest

import (
	"bufio"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

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
