package etcd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
	"github.com/twillnet/twill/overlay/lease/leasetest"
)

var etcdURL string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "twill-etcd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err := embedded.Start(embedded.Config{DataDir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etcdURL = srv.ClientURL()
	code := m.Run()
	srv.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

var prefixes atomic.Int64

// newRegistry returns a registry on a prefix of its own, so tests don't meet.
func newRegistry(tb testing.TB) *etcd.Registry {
	tb.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(tb.Name())
	r, err := etcd.New(etcd.Config{Endpoints: []string{etcdURL}, Prefix: fmt.Sprintf("/test/%s-%d", name, prefixes.Add(1))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

// store is the etcd registry with the compaction the behaviour tests ask
// for, which a node never does.
type store struct{ *etcd.Registry }

func (s store) Compact(ctx context.Context) error {
	resp, err := s.Client().Get(ctx, "/")
	if err != nil {
		return err
	}
	_, err = s.Client().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	return err
}

func TestConformance(t *testing.T) {
	leasetest.Conformance(t, func(tb testing.TB) leasetest.Store { return store{newRegistry(tb)} })
}

func TestFlannelCompatibleKeysAndValues(t *testing.T) {
	reg := newRegistry(t)
	ctx := leasetest.Context(t)
	cli := reg.Client()
	// A lease as flannel writes it.
	key := reg.Prefix() + "/subnets/10.244.7.0-24"
	val := `{"PublicIP":"192.168.56.17","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":null}`
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, key, val, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) != 1 {
		t.Fatalf("list: %v %v", leases, err)
	}
	l := leases[0]
	if l.Subnet.String() != "10.244.7.0/24" || l.Attrs.PublicIP.String() != "192.168.56.17" || l.Attrs.BackendType != "vxlan" || l.Reservation {
		t.Errorf("flannel lease read as %+v", l)
	}
	if d := time.Until(l.Expiration); d < 50*time.Second || d > 61*time.Second {
		t.Errorf("flannel lease expiry in %v, want ~60 s", d)
	}
	// What twill writes, flannel reads: the same key form and JSON names.
	cfg := leasetest.MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	mine, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.56.11"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:11"}`)}, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, reg.Prefix()+"/subnets/"+mine.Subnet.Addr().String()+"-24")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("twill's lease not at flannel's key: %v", err)
	}
	var flannel struct {
		PublicIP    string
		BackendType string
		BackendData map[string]any
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &flannel); err != nil || flannel.PublicIP != "192.168.56.11" || flannel.BackendType != "vxlan" || flannel.BackendData["VtepMAC"] != "02:00:00:00:00:11" {
		t.Errorf("twill's value %s does not read as flannel's (%v)", resp.Kvs[0].Value, err)
	}
	if resp.Kvs[0].Lease == 0 {
		t.Errorf("twill's lease has no TTL")
	}
	if mine.Subnet.String() == "10.244.7.0/24" {
		t.Errorf("twill took flannel's subnet")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, c := range []etcd.Config{
		{},
		{Endpoints: []string{"127.0.0.1:2379"}},
		{Endpoints: []string{"ht!tp://::zz"}},
		{Endpoints: []string{"http://::zz"}},
		{Endpoints: []string{"http://[::zz]:2379"}},
		{Endpoints: []string{"http://127.0.0.1:99999"}},
		{Endpoints: []string{"http://127.0.0.1:"}},
		{Endpoints: []string{"ftp://127.0.0.1:2379"}},
		{Endpoints: []string{"http://:2379"}},
		{Endpoints: []string{"http://127.0.0.1:2379/v3"}},
		{Endpoints: []string{"http://127.0.0.1:2379", "http//127.0.0.2:2379"}},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "twill"},
		{Endpoints: []string{"http://127.0.0.1:2379"}, CertFile: "/x.pem"},
		{Endpoints: []string{"https://127.0.0.1:2379"}, CAFile: "/nonexistent/ca.pem"},
	} {
		if r, err := etcd.New(c); err == nil {
			r.Close()
			t.Errorf("New(%+v) succeeded", c)
		}
	}
}

func TestNewNamesEveryBadEndpoint(t *testing.T) {
	_, err := etcd.New(etcd.Config{Endpoints: []string{"ht!tp://::zz", "http://127.0.0.1:2379", "http://[fe80::1]:0x10"}})
	if err == nil || !strings.Contains(err.Error(), `"ht!tp://::zz"`) || !strings.Contains(err.Error(), `"http://[fe80::1]:0x10"`) ||
		strings.Contains(err.Error(), `"http://127.0.0.1:2379"`) {
		t.Errorf("New = %v; want both bad endpoints named, and only them", err)
	}
	for _, good := range []string{"http://127.0.0.1:2379", "https://127.0.0.1:2379", "http://[::1]:2379", "http://localhost:2379", "unix:///run/etcd.sock"} {
		r, err := etcd.New(etcd.Config{Endpoints: []string{good}})
		if err != nil {
			t.Errorf("New(%q): %v", good, err)
			continue
		}
		r.Close()
	}
}

// TestUnreachableNamesTheEndpoint: with no etcd there, an error names the
// endpoint and the time waited, not only "context deadline exceeded".
func TestUnreachableNamesTheEndpoint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port that answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	url := "http://" + ln.Addr().String()
	r, err := etcd.New(etcd.Config{Endpoints: []string{url}, DialTimeout: 200 * time.Millisecond, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.NetworkConfig(context.Background())
	if err == nil || !strings.Contains(err.Error(), "etcd at "+url+" did not answer within 300ms") {
		t.Errorf("NetworkConfig = %v; want it to name %s", err, url)
	}
}

func BenchmarkAllocate1000(b *testing.B) {
	benchAllocate(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
}

// BenchmarkAllocate1000DualStack: a dual-stack lease reads the keys' names
// before its transaction, so it costs more than an IPv4 one.
func BenchmarkAllocate1000DualStack(b *testing.B) {
	benchAllocate(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"alloc"}}`)
}

func benchAllocate(b *testing.B, config string) {
	cfg := leasetest.MustConfig(b, config)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		reg := newRegistry(b)
		b.StartTimer()
		for i := range 1000 {
			ip := netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})
			attrs := leasetest.Attrs(ip.String())
			if cfg.EnableIPv6 {
				attrs.PublicIPv6 = netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(i >> 8), 15: byte(i)})
			}
			if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs, TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/lease")
}

func BenchmarkWatch1000Events(b *testing.B) {
	cfg := leasetest.MustConfig(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
	ctx := context.Background()
	for b.Loop() { // b.Loop, not b.N: the function runs once, whatever -benchtime says
		b.StopTimer()
		writer := newRegistry(b)
		// The watcher has its own connection, so it learns each lease's
		// expiry from etcd as a real peer does.
		reader, err := etcd.New(etcd.Config{Endpoints: []string{etcdURL}, Prefix: writer.Prefix()})
		if err != nil {
			b.Fatal(err)
		}
		var c leasetest.Collector
		w := &lease.Watcher{Registry: reader}
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { w.Run(wctx, c.Handle); close(done) }()
		time.Sleep(50 * time.Millisecond)
		stop()
		<-done
		// 1000 nodes join while the watcher is away.
		for i := range 1000 {
			if _, err := writer.Create(ctx, lease.Subnets{V4: cfg.Subnet(i)}, leasetest.Attrs("127.0.0.1"), time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		wctx, stop = context.WithCancel(ctx)
		b.StartTimer()
		go w.Run(wctx, c.Handle)
		c.Wait(b, 1000, time.Minute)
		b.StopTimer()
		stop()
		reader.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/event")
}

// TestFlannelLeaseBytesOfEveryBackend reads the values flannel v0.28 writes
// for its udp, vxlan and host-gw backends, byte for byte: udp writes no
// BackendType at all, and such a lease is a udp lease.
func TestFlannelLeaseBytesOfEveryBackend(t *testing.T) {
	reg := newRegistry(t)
	ctx := leasetest.Context(t)
	cli := reg.Client()
	values := map[string]struct{ value, backend string }{
		"10.244.1.0-24": {`{"PublicIP":"192.168.77.10","PublicIPv6":null}`, "udp"},
		"10.244.2.0-24": {`{"PublicIP":"192.168.77.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:2b:0c:8d:1a:01"}}`, "vxlan"},
		"10.244.3.0-24": {`{"PublicIP":"192.168.77.12","PublicIPv6":null,"BackendType":"host-gw"}`, "host-gw"},
	}
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"} {
		if _, err := cli.Put(ctx, reg.Prefix()+"/subnets/"+key, values[key].value, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	// One more change to the udp lease: its create revision stays.
	if _, err := cli.Put(ctx, reg.Prefix()+"/subnets/10.244.1.0-24", values["10.244.1.0-24"].value, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	leases, _, err := reg.List(ctx)
	if err != nil || len(leases) != 3 {
		t.Fatalf("list: %v %v", leases, err)
	}
	var created []int64
	for _, l := range leases {
		want := values[lease.SubnetKey(l.Subnet)]
		if got := l.Attrs.Backend(); got != want.backend {
			t.Errorf("%s %s: backend %q, want %q", l.Subnet, want.value, got, want.backend)
		}
		if l.Created == 0 || l.Created > l.Revision {
			t.Errorf("%s: create revision %d, revision %d", l.Subnet, l.Created, l.Revision)
		}
		created = append(created, l.Created)
	}
	if !(created[0] < created[1] && created[1] < created[2]) || leases[0].Created == leases[0].Revision {
		t.Errorf("create revisions %v (udp lease rewritten at %d): want them in the order written, the rewrite keeping the first", created, leases[0].Revision)
	}
}

// countingHandler counts log records whose message contains a word.
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
func (h *countingHandler) count(word string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, word) {
			n++
		}
	}
	return n
}

// TestProbeNoticesAStoppedEtcd: with a 24 h lease nothing else talks to
// etcd, yet a stopped etcd is noticed within 15 s and logged once, and so
// is its return; a keeper that failed meanwhile retries as soon as etcd
// answers, not when its backoff runs out.
func TestProbeNoticesAStoppedEtcd(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	srv, err := embedded.Start(embedded.Config{DataDir: dir, ClientURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close() }()
	reg, err := etcd.New(etcd.Config{Endpoints: []string{url}, RequestTimeout: time.Second, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx := leasetest.Context(t)
	logs := &countingHandler{}
	log := slog.New(logs)
	reach := lease.NewReachability(log, "etcd")
	cfg := leasetest.MustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: cfg, Attrs: leasetest.Attrs("127.0.0.61"), TTL: 24 * time.Hour},
		RenewMargin: time.Hour, Log: log, Reach: reach}
	if _, err := k.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	go lease.Probe(pctx, reg, reach, 2*time.Second)
	go k.Run(pctx)

	srv.Close()
	stopped := time.Now()
	for reach.Reachable() {
		if time.Since(stopped) > 15*time.Second {
			t.Fatal("etcd stopped 15 s ago and the probe has not noticed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	noticed := time.Since(stopped)
	// The keeper renews now and fails: it backs off.
	k.Check()
	time.Sleep(6 * time.Second)
	if n := logs.count("unreachable"); n != 1 {
		t.Errorf("%d 'unreachable' log lines during the outage, want 1: %q", n, logs.msgs)
	}
	srv, err = embedded.Start(embedded.Config{DataDir: dir, ClientURL: url})
	if err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	before := k.Current().Revision
	for k.Current().Revision == before {
		if time.Since(back) > 20*time.Second {
			t.Fatal("the keeper has not renewed 20 s after etcd came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("stop noticed after %v; renewed %v after etcd came back (%v after it answered again)", noticed.Round(time.Millisecond),
		time.Since(back).Round(time.Millisecond), time.Since(reach.Since()).Round(time.Millisecond))
	if n := logs.count("reachable again"); n != 1 {
		t.Errorf("%d 'reachable again' log lines, want 1: %q", n, logs.msgs)
	}
	if !reach.Reachable() {
		t.Error("etcd is back, the tracker says unreachable")
	}
}
