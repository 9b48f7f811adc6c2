package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/internal/binaries"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
	"github.com/twillnet/twill/overlay/subnetfile"
)

func TestParseArgsFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{
		"TWILLD_ETCD_ENDPOINTS":   "http://10.0.0.1:2379,http://10.0.0.2:2379",
		"TWILLD_IFACE":            "eth1, eth2",
		"TWILLD_SUBNET_LEASE_TTL": "2h",
		"TWILLD_IP_MASQ":          "true",
		"TWILLD_ETCD_PREFIX":      "/from/env",
		"TWILLD_SUBNET_FILE":      "/tmp/env.env",
		"TWILLD_PUBLIC_IPV6":      "fd00:56::11",
	}
	a, err := parseArgs([]string{"--etcd-prefix=/coreos.com/network", "--public-ip", "192.168.56.11"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := a.cfg
	if got := strings.Join(a.etcd.Endpoints, " "); got != "http://10.0.0.1:2379 http://10.0.0.2:2379" {
		t.Errorf("endpoints %q", got)
	}
	if a.etcd.Prefix != "/coreos.com/network" {
		t.Errorf("the flag must win over the environment: prefix %q", a.etcd.Prefix)
	}
	if strings.Join(c.Ifaces, " ") != "eth1 eth2" || c.SubnetLeaseTTL != 2*time.Hour || !c.IPMasq || c.SubnetFile != "/tmp/env.env" {
		t.Errorf("from the environment: %+v", c)
	}
	if c.PublicIP.String() != "192.168.56.11" || c.RenewMargin != time.Hour || c.PublicIPv6.String() != "fd00:56::11" {
		t.Errorf("public IP %s, public IPv6 %s, margin %v", c.PublicIP, c.PublicIPv6, c.RenewMargin)
	}

	for _, bad := range []struct {
		argv []string
		env  map[string]string
		want string
	}{
		{[]string{"--public-ip", "nope"}, nil, `--public-ip "nope"`},
		{[]string{"--public-ipv6", "192.168.56.11"}, nil, `--public-ipv6 "192.168.56.11": not a global IPv6 address`},
		{[]string{"--public-ipv6", "fe80::1"}, nil, `--public-ipv6 "fe80::1"`},
		{nil, map[string]string{"TWILLD_PUBLIC_IPV6": "fd00::zz"}, `TWILLD_PUBLIC_IPV6="fd00::zz"`},
		{nil, map[string]string{"TWILLD_SUBNET_LEASE_TTL": "forever"}, `TWILLD_SUBNET_LEASE_TTL="forever"`},
		{nil, map[string]string{"TWILLD_IP_MASQ": "sometimes"}, `TWILLD_IP_MASQ="sometimes"`},
		{[]string{"stray"}, nil, `unexpected argument "stray"`},
		{[]string{"--no-such-flag"}, nil, "no-such-flag"},
	} {
		_, err := parseArgs(bad.argv, func(k string) string { return bad.env[k] }, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseArgs(%v, %v) = %v, want an error naming %s", bad.argv, bad.env, err, bad.want)
		}
	}
}

// cluster is an embedded etcd and a built twilld binary.
type cluster struct {
	t      *testing.T
	dir    string
	bin    string
	etcd   *embedded.Server
	url    string
	prefix string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("builds twilld and starts processes; skipped with -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(binaries.ForTest(t), "twilld")
	c := &cluster{t: t, dir: dir, bin: bin, prefix: "/test/" + strings.ReplaceAll(t.Name(), "/", "-")}
	c.startEtcd("")
	t.Cleanup(func() {
		if c.etcd != nil {
			c.etcd.Close()
		}
	})
	reg := c.registry()
	if err := reg.PutNetworkConfig(context.Background(), []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) startEtcd(url string) {
	c.t.Helper()
	srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(c.dir, "etcd"), ClientURL: url})
	if err != nil {
		c.t.Fatal(err)
	}
	c.etcd, c.url = srv, srv.ClientURL()
}

func (c *cluster) registry() *etcd.Registry {
	c.t.Helper()
	reg, err := etcd.New(etcd.Config{Endpoints: []string{c.url}, Prefix: c.prefix})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { reg.Close() })
	return reg
}

// node is one twilld process.
type node struct {
	name, ip   string
	subnetFile string
	cmd        *exec.Cmd
	log        *syncBuffer
	notify     *net.UnixConn
	notes      chan string
	exited     chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *cluster) start(name, ip string, extra ...string) *node {
	c.t.Helper()
	n := &node{name: name, ip: ip, subnetFile: filepath.Join(c.dir, name, "subnet.env"), log: &syncBuffer{},
		notes: make(chan string, 16), exited: make(chan error, 1)}
	// A socket standing in for systemd's, to see READY=1 and STOPPING=1.
	sock := filepath.Join(c.dir, name+".notify")
	os.Remove(sock)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		c.t.Fatal(err)
	}
	n.notify = conn
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.notes <- string(buf[:k])
		}
	}()
	args := append([]string{
		"--etcd-endpoints", c.url, "--etcd-prefix", c.prefix,
		"--public-ip", ip, "--node-name", name, "--subnet-file", n.subnetFile,
		"--listen", "127.0.0.1:0",
	}, extra...)
	n.cmd = exec.Command(c.bin, args...)
	n.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { n.exited <- n.cmd.Wait() }()
	c.t.Cleanup(func() {
		// Stop only what this test started, by its PID.
		if n.cmd.ProcessState == nil {
			n.cmd.Process.Kill()
		}
		conn.Close()
		if c.t.Failed() {
			c.t.Logf("%s log:\n%s", n.name, n.log.String())
		}
	})
	return n
}

// waitReady waits for READY=1 and returns the subnet file.
func (n *node) waitReady(t *testing.T) subnetfile.File {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case note := <-n.notes:
			if strings.Contains(note, "READY=1") {
				f, err := subnetfile.Read(n.subnetFile)
				if err != nil {
					t.Fatalf("%s is ready but: %v", n.name, err)
				}
				return f
			}
		case err := <-n.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", n.name, err, n.log.String())
		case <-deadline:
			t.Fatalf("%s not ready within 30 s:\n%s", n.name, n.log.String())
		}
	}
}

// stop sends SIGTERM and returns how long the process took to exit.
func (n *node) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM:\n%s", n.name, err, n.log.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still running 10 s after SIGTERM", n.name)
	}
	took := time.Since(start)
	// The datagram was sent before the process exited; the goroutine that
	// reads the socket may not have queued it yet.
	sawStopping := false
	deadline := time.After(2 * time.Second)
wait:
	for !sawStopping {
		select {
		case note := <-n.notes:
			sawStopping = strings.Contains(note, "STOPPING=1")
		case <-deadline:
			break wait
		}
	}
	if !sawStopping {
		t.Errorf("%s did not tell systemd STOPPING=1", n.name)
	}
	return took
}

func TestThreeNodesLeaseStopAndRestart(t *testing.T) {
	c := newCluster(t)
	ips := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}
	first := map[string]string{}
	var nodes []*node
	for i, ip := range ips {
		nodes = append(nodes, c.start(fmt.Sprintf("n%d", i+1), ip))
	}
	seen := map[string]string{}
	for _, n := range nodes {
		f := n.waitReady(t)
		s := f.NodeSubnet().String()
		if other, dup := seen[s]; dup {
			t.Fatalf("%s and %s both got %s", other, n.name, s)
		}
		seen[s] = n.name
		first[n.ip] = s
		if f.Network.String() != "10.244.0.0/16" || f.MTU <= 0 || f.Gateway() != f.NodeSubnet().Addr().Next() {
			t.Errorf("%s subnet file %+v", n.name, f)
		}
	}
	// etcd holds the three leases, each with its node's public IP.
	leases, _, err := c.registry().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 {
		t.Fatalf("etcd holds %d leases, want 3", len(leases))
	}
	for _, l := range leases {
		if first[l.Attrs.PublicIP.String()] != l.Subnet.String() || l.Attrs.BackendType != "alloc" {
			t.Errorf("lease %s %s does not match a node's subnet file", l.Subnet, l.Attrs.PublicIP)
		}
	}

	for _, n := range nodes {
		if took := n.stop(t); took > 2*time.Second {
			t.Errorf("%s took %v to stop after SIGTERM, want within 2 s", n.name, took)
		}
	}
	// The leases outlive the daemons (no --release-on-exit).
	if leases, _, _ := c.registry().List(context.Background()); len(leases) != 3 {
		t.Errorf("after stopping, etcd holds %d leases, want 3", len(leases))
	}
	// Start again, without the subnet files: each gets its subnet back by
	// its public IP.
	for i := range ips {
		os.Remove(filepath.Join(c.dir, fmt.Sprintf("n%d", i+1), "subnet.env"))
	}
	nodes = nodes[:0]
	for i, ip := range ips {
		nodes = append(nodes, c.start(fmt.Sprintf("n%d", i+1), ip))
	}
	for _, n := range nodes {
		f := n.waitReady(t)
		if got := f.NodeSubnet().String(); got != first[n.ip] {
			t.Errorf("%s restarted with %s, want %s", n.name, got, first[n.ip])
		}
	}
	for _, n := range nodes {
		n.stop(t)
	}
}

func TestReleaseOnExit(t *testing.T) {
	c := newCluster(t)
	n := c.start("n1", "127.0.0.21", "--release-on-exit")
	n.waitReady(t)
	if leases, _, _ := c.registry().List(context.Background()); len(leases) != 1 {
		t.Fatalf("want 1 lease, have %d", len(leases))
	}
	n.stop(t)
	if leases, _, _ := c.registry().List(context.Background()); len(leases) != 0 {
		t.Errorf("after --release-on-exit, etcd still holds %v", leases)
	}
}

func TestEtcdOutageKeepsLease(t *testing.T) {
	c := newCluster(t)
	// A short lease renewed often, so that renewals fail during the outage.
	n := c.start("n1", "127.0.0.31", "--subnet-lease-ttl", "20s", "--subnet-lease-renew-margin", "18s")
	before := n.waitReady(t)
	url := c.url
	c.etcd.Close()
	c.etcd = nil
	time.Sleep(12 * time.Second) // renewals time out (5 s each) and are retried with backoff
	select {
	case err := <-n.exited:
		t.Fatalf("twilld exited while etcd was down: %v\n%s", err, n.log.String())
	default:
	}
	log := n.log.String()
	if k := strings.Count(log, "etcd unreachable"); k != 1 {
		t.Errorf("logged 'etcd unreachable' %d times during one outage, want once:\n%s", k, log)
	}
	after, err := subnetfile.Read(n.subnetFile)
	if err != nil || after != before {
		t.Errorf("subnet file changed during the outage: %+v, %v", after, err)
	}
	c.startEtcd(url)
	deadline := time.Now().Add(45 * time.Second)
	for !strings.Contains(n.log.String(), "etcd reachable again") {
		if time.Now().After(deadline) {
			t.Fatalf("twilld did not notice etcd came back:\n%s", n.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	leases, _, err := c.registry().List(context.Background())
	if err != nil || len(leases) != 1 || leases[0].Subnet != before.NodeSubnet() {
		t.Errorf("after the outage: %v %v, want the lease %s", leases, err, before.NodeSubnet())
	}
	n.stop(t)
}

func TestRefusesBadNetworkConfigFile(t *testing.T) {
	c := newCluster(t)
	conf := filepath.Join(c.dir, "net.json")
	os.WriteFile(conf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"geneve"}}`), 0o644)
	n := c.start("n1", "127.0.0.41", "--net-config", conf)
	select {
	case err := <-n.exited:
		if err == nil {
			t.Fatal("twilld accepted an unknown backend")
		}
		log := n.log.String()
		if !strings.Contains(log, "Backend.Type") || !strings.Contains(log, "geneve") {
			t.Errorf("error does not name the field and the value:\n%s", log)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("twilld did not exit on a bad config")
	}
	if _, err := os.Stat(n.subnetFile); err == nil {
		t.Error("a subnet file was written for a refused config")
	}
	if leases, _, _ := c.registry().List(context.Background()); len(leases) != 0 {
		t.Errorf("a lease was taken for a refused config: %v", leases)
	}
}

func TestUnwritableSubnetFileLeavesNoLease(t *testing.T) {
	c := newCluster(t)
	// The subnet file's directory cannot be made, even by root: its parent
	// is a regular file.
	file := filepath.Join(c.dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n := c.start("n1", "127.0.0.51", "--subnet-file", filepath.Join(file, "subnet.env"))
	select {
	case err := <-n.exited:
		if err == nil {
			t.Fatal("twilld exited 0 without a subnet file")
		}
		if log := n.log.String(); !strings.Contains(log, "subnet file") || !strings.Contains(log, "lease given back") {
			t.Errorf("the log does not say what failed and that the lease was given back:\n%s", log)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("twilld did not exit without a subnet file")
	}
	if leases, _, _ := c.registry().List(context.Background()); len(leases) != 0 {
		t.Errorf("a failed start left a lease that peers would route to: %v", leases)
	}
}
