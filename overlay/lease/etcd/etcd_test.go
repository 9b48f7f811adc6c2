package etcd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
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

func BenchmarkAllocate1000(b *testing.B) {
	cfg := leasetest.MustConfig(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		reg := newRegistry(b)
		b.StartTimer()
		for i := range 1000 {
			ip := netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})
			if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: leasetest.Attrs(ip.String()), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/lease")
}

func BenchmarkWatch1000Events(b *testing.B) {
	cfg := leasetest.MustConfig(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
	ctx := context.Background()
	b.StopTimer()
	for range b.N {
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
			if _, err := writer.Create(ctx, cfg.Subnet(i), leasetest.Attrs("127.0.0.1"), time.Hour); err != nil {
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
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/event")
}
