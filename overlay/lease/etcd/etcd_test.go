package etcd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twillnet/twill/overlay/lease"
	"github.com/twillnet/twill/overlay/lease/etcd"
	"github.com/twillnet/twill/overlay/lease/etcd/embedded"
	"github.com/twillnet/twill/overlay/netconf"
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

func mustConfig(tb testing.TB, s string) *netconf.Config {
	tb.Helper()
	c, err := netconf.Parse([]byte(s))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func attrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "alloc"}
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func TestRaceForSixteenSubnets(t *testing.T) {
	reg := newRegistry(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0","Backend":{"Type":"alloc"}}`)
	ctx := ctxT(t)

	const racers = 50
	var wg sync.WaitGroup
	won := make([]lease.Lease, racers)
	errs := make([]error, racers)
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			won[i], errs[i] = lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs(fmt.Sprintf("127.0.1.%d", i+1)), TTL: time.Minute})
		})
	}
	close(start)
	wg.Wait()

	subnets := map[netip.Prefix]int{}
	exhausted := 0
	for i := range racers {
		var full *lease.ExhaustedError
		switch {
		case errs[i] == nil:
			if prev, dup := subnets[won[i].Subnet]; dup {
				t.Errorf("racers %d and %d both hold %s", prev, i, won[i].Subnet)
			}
			subnets[won[i].Subnet] = i
			if !cfg.Leasable(won[i].Subnet) {
				t.Errorf("racer %d got %s, outside the range", i, won[i].Subnet)
			}
		case errors.As(errs[i], &full):
			exhausted++
			if full.Network.String() != "10.244.0.0/16" || full.Subnets != 16 || full.Leased != 16 {
				t.Errorf("exhaustion error %+v, want network 10.244.0.0/16, 16 subnets, 16 leased", full)
			}
			if msg := errs[i].Error(); !strings.Contains(msg, "10.244.0.0/16") || !strings.Contains(msg, "16 leasable subnets, 16 leased") {
				t.Errorf("exhaustion message %q does not say which network and how many", msg)
			}
		default:
			t.Errorf("racer %d: %v", i, errs[i])
		}
	}
	if len(subnets) != 16 || exhausted != racers-16 {
		t.Fatalf("%d won, %d exhausted; want 16 and %d", len(subnets), exhausted, racers-16)
	}
	// The store agrees: 16 leases, each with the winner's public IP.
	leases, _, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 16 {
		t.Fatalf("store holds %d leases, want 16", len(leases))
	}
	for _, l := range leases {
		i, ok := subnets[l.Subnet]
		if !ok || l.Attrs.PublicIP != won[i].Attrs.PublicIP {
			t.Errorf("store lease %s %s does not match a winner", l.Subnet, l.Attrs.PublicIP)
		}
	}
}

func TestRestartGetsSameSubnet(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	first, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.11"), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs(fmt.Sprintf("127.0.2.%d", time.Now().UnixNano()%250+1)), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// A restart: same public IP, new backend data.
	a := attrs("127.0.0.11")
	a.BackendData = json.RawMessage(`{"VtepMAC":"02:00:00:00:00:01"}`)
	again, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: a, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet {
		t.Fatalf("restart got %s, want %s", again.Subnet, first.Subnet)
	}
	if !again.Attrs.Equal(a) || again.Revision <= first.Revision {
		t.Errorf("restart did not publish the new attributes: %+v", again)
	}
	// The previous subnet from a subnet file wins when the public IP changed
	// and the subnet is still free.
	if err := reg.Delete(ctx, again); err != nil {
		t.Fatal(err)
	}
	moved, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.99"), TTL: time.Minute, Previous: first.Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Subnet != first.Subnet {
		t.Errorf("with Previous %s free, got %s", first.Subnet, moved.Subnet)
	}
	// A Previous that is taken is not stolen.
	other, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.98"), TTL: time.Minute, Previous: first.Subnet})
	if err != nil {
		t.Fatal(err)
	}
	if other.Subnet == first.Subnet {
		t.Errorf("Previous %s was taken but handed out again", first.Subnet)
	}
}

func TestReservationNeverAllocated(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","Backend":{"Type":"alloc"}}`)
	reserved := netip.MustParsePrefix("10.244.2.0/24")
	if _, err := reg.Create(ctx, reserved, attrs("127.0.0.50"), 0); err != nil {
		t.Fatal(err)
	}
	// Three others fill the rest; the fourth finds the network full.
	for i := range 3 {
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs(fmt.Sprintf("127.0.0.%d", 60+i)), TTL: time.Minute, Previous: reserved})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet == reserved {
			t.Fatalf("reserved subnet %s handed to %s", reserved, l.Attrs.PublicIP)
		}
	}
	_, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.70"), TTL: time.Minute})
	var full *lease.ExhaustedError
	if !errors.As(err, &full) || full.Leased != 3 || full.Reserved != 1 {
		t.Fatalf("want exhaustion with 3 leased, 1 reserved; got %v", err)
	}
	// The node the reservation names gets it, and it stays a reservation.
	a := attrs("127.0.0.50")
	a.BackendType = "vxlan"
	l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: a, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != reserved || !l.Reservation {
		t.Fatalf("owner got %+v, want reservation %s", l, reserved)
	}
	leases, _, _ := reg.List(ctx)
	for _, x := range leases {
		if x.Subnet == reserved && (!x.Reservation || x.ID != 0 || x.Attrs.BackendType != "vxlan") {
			t.Errorf("reservation after owner took it: %+v", x)
		}
	}
}

// collector gathers delivered events.
type collector struct {
	mu  sync.Mutex
	evs []lease.Event
}

func (c *collector) handle(_ context.Context, evs []lease.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, evs...)
	c.mu.Unlock()
}

func (c *collector) wait(tb testing.TB, n int, timeout time.Duration) []lease.Event {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		got := slices.Clone(c.evs)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("got %d events within %v, want %d: %v", len(got), timeout, n, describe(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(evs []lease.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%s %s %s; ", e.Type, e.Lease.Subnet, e.Lease.Attrs.PublicIP)
	}
	return b.String()
}

func TestShortLeaseExpiresAndWatchersSeeIt(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	short, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.21"), TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(short.Expiration); d <= 0 || d > 3*time.Second {
		t.Errorf("2 s lease expires in %v", d)
	}
	var c collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.handle)
	evs := c.wait(t, 2, 15*time.Second)
	if evs[0].Type != lease.Added || evs[0].Lease.Subnet != short.Subnet {
		t.Fatalf("first event %s %s, want added %s", evs[0].Type, evs[0].Lease.Subnet, short.Subnet)
	}
	if evs[1].Type != lease.Expired || evs[1].Lease.Subnet != short.Subnet || evs[1].Lease.Attrs.PublicIP != short.Attrs.PublicIP {
		t.Fatalf("second event %s %s, want expired %s", evs[1].Type, evs[1].Lease.Subnet, short.Subnet)
	}
	leases, _, _ := reg.List(ctx)
	if len(leases) != 0 {
		t.Errorf("store still holds %d leases", len(leases))
	}
}

func TestWatchEventsInOrder(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	var c collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.handle)
	time.Sleep(200 * time.Millisecond)

	a, _ := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs("127.0.0.31"), TTL: time.Minute})
	a2, err := reg.Update(ctx, a, a.Attrs, time.Minute) // renewed
	if err != nil {
		t.Fatal(err)
	}
	changed := a.Attrs
	changed.BackendData = json.RawMessage(`{"x":1}`)
	a3, err := reg.Update(ctx, a2, changed, time.Minute) // changed
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, a2, changed, time.Minute); !errors.Is(err, lease.ErrLeaseLost) {
		t.Errorf("update at a stale revision: %v, want ErrLeaseLost", err)
	}
	if err := reg.Delete(ctx, a3); err != nil { // expired
		t.Fatal(err)
	}
	evs := c.wait(t, 4, 10*time.Second)
	want := []lease.EventType{lease.Added, lease.Renewed, lease.Changed, lease.Expired}
	for i, e := range evs[:4] {
		if e.Type != want[i] || e.Lease.Subnet != a.Subnet {
			t.Fatalf("events %s, want added, renewed, changed, expired of %s", describe(evs), a.Subnet)
		}
	}
	if string(evs[2].Lease.Attrs.BackendData) != `{"x":1}` {
		t.Errorf("changed event carries %s", evs[2].Lease.Attrs.BackendData)
	}
	if evs[1].Lease.Expiration.IsZero() {
		t.Errorf("renewed event has no expiration")
	}
}

func TestWatchResumesAcrossCompaction(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	get := func(ip string) lease.Lease {
		l, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs(ip), TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	stay, change, leave := get("127.0.0.41"), get("127.0.0.42"), get("127.0.0.43")

	var c collector
	w := &lease.Watcher{Registry: reg}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(wctx, c.handle); close(done) }()
	c.wait(t, 3, 10*time.Second)
	stop()
	<-done

	// While the watcher is away: one joins, one changes, one leaves, one renews;
	// then the store compacts the history the watcher would need.
	join := get("127.0.0.44")
	ch := change.Attrs
	ch.BackendData = json.RawMessage(`{"VtepMAC":"02:00:00:00:00:42"}`)
	if _, err := reg.Update(ctx, change, ch, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(ctx, leave); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Update(ctx, stay, stay.Attrs, time.Minute); err != nil {
		t.Fatal(err)
	}
	resp, err := reg.Client().Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Client().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	wctx, stop = context.WithCancel(ctx)
	defer stop()
	go w.Run(wctx, c.handle)
	evs := c.wait(t, 7, 10*time.Second)[3:]
	got := describe(evs)
	want := fmt.Sprintf("expired %s 127.0.0.43; ", leave.Subnet)
	if !strings.HasPrefix(got, want) {
		t.Fatalf("after compaction: %s; want first %s", got, want)
	}
	for _, w := range []string{
		fmt.Sprintf("added %s 127.0.0.44", join.Subnet),
		fmt.Sprintf("changed %s 127.0.0.42", change.Subnet),
		fmt.Sprintf("renewed %s 127.0.0.41", stay.Subnet),
	} {
		if !strings.Contains(got, w) {
			t.Errorf("after compaction: %s; missing %q", got, w)
		}
	}
	// And the watch goes on live after the resync.
	late := get("127.0.0.45")
	evs = c.wait(t, 8, 10*time.Second)
	if e := evs[7]; e.Type != lease.Added || e.Lease.Subnet != late.Subnet {
		t.Errorf("after resync: %s, want added %s", describe(evs[7:]), late.Subnet)
	}
	if n := len(w.Leases()); n != 4 {
		t.Errorf("watcher knows %d leases, want 4", n)
	}
}

func TestKeeperRenewsAndRecovers(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	changes := make(chan lease.Lease, 1)
	k := &lease.Keeper{
		Registry:    reg,
		Request:     lease.Request{Config: cfg, Attrs: attrs("127.0.0.51"), TTL: 2 * time.Second},
		RenewMargin: 1 * time.Second,
		OnChange:    func(_, l lease.Lease) { changes <- l },
	}
	first, err := k.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	go k.Run(kctx)

	// Outlive the TTL twice over: the keeper must have renewed it.
	time.Sleep(4500 * time.Millisecond)
	leases, _, _ := reg.List(ctx)
	if len(leases) != 1 || leases[0].Subnet != first.Subnet || leases[0].Revision == first.Revision {
		t.Fatalf("after 4.5 s with a 2 s TTL: %+v, want %s renewed", leases, first.Subnet)
	}
	// Someone deletes the lease: the keeper gets it back, the same subnet.
	if err := reg.Delete(ctx, leases[0]); err != nil {
		t.Fatal(err)
	}
	k.Check()
	select {
	case l := <-changes:
		if l.Subnet != first.Subnet {
			t.Errorf("reacquired %s, want %s", l.Subnet, first.Subnet)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("keeper did not reacquire a deleted lease")
	}
	if err := k.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if leases, _, _ := reg.List(ctx); len(leases) != 0 {
		t.Errorf("after release the store holds %v", leases)
	}
}

func TestFlannelCompatibleKeysAndValues(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
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
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
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

func TestNetworkConfigRoundTrip(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
	if _, err := reg.NetworkConfig(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("empty store: %v, want ErrNoConfig", err)
	}
	in := `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	if err := reg.PutNetworkConfig(ctx, []byte(in)); err != nil {
		t.Fatal(err)
	}
	got, err := reg.NetworkConfig(ctx)
	if err != nil || string(got) != in {
		t.Fatalf("got %q, %v", got, err)
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
	cfg := mustConfig(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		reg := newRegistry(b)
		b.StartTimer()
		for i := range 1000 {
			ip := netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})
			if _, err := lease.Acquire(ctx, reg, lease.Request{Config: cfg, Attrs: attrs(ip.String()), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/lease")
}

func BenchmarkWatch1000Events(b *testing.B) {
	cfg := mustConfig(b, `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"alloc"}}`)
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
		var c collector
		w := &lease.Watcher{Registry: reader}
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { w.Run(wctx, c.handle); close(done) }()
		time.Sleep(50 * time.Millisecond)
		stop()
		<-done
		// 1000 nodes join while the watcher is away.
		for i := range 1000 {
			if _, err := writer.Create(ctx, cfg.Subnet(i), attrs("127.0.0.1"), time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		wctx, stop = context.WithCancel(ctx)
		b.StartTimer()
		go w.Run(wctx, c.handle)
		c.wait(b, 1000, time.Minute)
		b.StopTimer()
		stop()
		reader.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*1000), "µs/event")
}

// TestFlannelLeaseBytesOfEveryBackend reads the values flannel v0.28 writes
// for its udp, vxlan and host-gw backends, byte for byte: udp writes no
// BackendType at all, and such a lease is a udp lease.
func TestFlannelLeaseBytesOfEveryBackend(t *testing.T) {
	reg := newRegistry(t)
	ctx := ctxT(t)
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
	ctx := ctxT(t)
	logs := &countingHandler{}
	log := slog.New(logs)
	reach := lease.NewReachability(log, "etcd")
	cfg := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}`)
	k := &lease.Keeper{Registry: reg, Request: lease.Request{Config: cfg, Attrs: attrs("127.0.0.61"), TTL: 24 * time.Hour},
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
