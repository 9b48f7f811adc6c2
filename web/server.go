package web

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twillnet/twill/overlay/status"
)

// Source gives the daemon's state (*daemon.Daemon is one; the web
// package does not import it).
type Source interface {
	Snapshot() status.Snapshot
}

// Options configure a Server; zero values take the defaults.
type Options struct {
	// Source is where the snapshots come from (required).
	Source Source
	// Log receives request errors and peer probes; nil discards.
	Log *slog.Logger
	// Version is twilld's version, shown on the pages and in
	// twill_build_info.
	Version string
	// APIToken, if set, enables the endpoints that change state; a request
	// to one must carry "Authorization: Bearer TOKEN".
	APIToken string
	// Resync, if set, is what POST /api/v1/resync calls (with APIToken).
	Resync func()
	// SampleInterval is how often counters are sampled for rates (2 s);
	// HistoryLen how many samples are kept (150: 5 minutes).
	SampleInterval time.Duration
	HistoryLen     int
	// PeerInterval is how often peers' dashboards are asked for their
	// state (5 s), PeerTimeout how long one answer may take (2 s).
	PeerInterval time.Duration
	PeerTimeout  time.Duration
	// Client fetches peers' APIs (default: a client without proxy).
	Client *http.Client
}

// Server serves the dashboard, the API, the metrics and the health checks
// of one node.
type Server struct {
	opts    Options
	log     *slog.Logger
	hist    *history
	peers   *prober
	pages   *pages
	metrics *prometheus.Registry
	handler http.Handler

	mu     sync.Mutex
	latest *status.Snapshot // the last sampled snapshot
	tick   chan struct{}    // closed and replaced after each sample
}

// New returns a Server. It serves at once; Run samples and probes.
func New(opts Options) (*Server, error) {
	if opts.Source == nil {
		return nil, fmt.Errorf("web: no Source")
	}
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = 2 * time.Second
	}
	if opts.HistoryLen <= 0 {
		opts.HistoryLen = 150
	}
	if opts.PeerInterval <= 0 {
		opts.PeerInterval = 5 * time.Second
	}
	if opts.PeerTimeout <= 0 {
		opts.PeerTimeout = 2 * time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}}
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: log, hist: newHistory(opts.HistoryLen), tick: make(chan struct{})}
	s.peers = newProber(opts.Client, opts.PeerTimeout, log)
	var err error
	if s.pages, err = loadPages(); err != nil {
		return nil, err
	}
	s.metrics = prometheus.NewRegistry()
	if err := s.metrics.Register(newBGPCollector(opts.Source)); err != nil {
		return nil, fmt.Errorf("register bgp metrics: %w", err)
	}
	if err := s.metrics.Register(newWireGuardCollector(opts.Source)); err != nil {
		return nil, fmt.Errorf("register wireguard metrics: %w", err)
	}
	if err := s.metrics.Register(newCollector(opts.Source, opts.Version)); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the HTTP handler of everything the Server serves.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(securityHeaders)
	r.Get("/", s.page("overview"))
	r.Get("/leases", s.page("leases"))
	r.Get("/routes", s.page("routes"))
	r.Get("/tunnels", s.page("tunnels"))
	r.Get("/events", s.events)
	r.Get("/static/*", http.StripPrefix("/static/", staticFiles()).ServeHTTP)

	r.Route("/api/v1", func(r chi.Router) {
		r.Get("/node", s.apiJSON(func(req *http.Request) any { return s.nodeInfo(s.snapshot()) }))
		r.Get("/leases", s.apiJSON(func(req *http.Request) any { return leaseList(s.snapshot(), time.Now()) }))
		r.Get("/routes", s.apiJSON(func(req *http.Request) any { return routeTable(s.snapshot()) }))
		r.Get("/tunnels", s.apiJSON(func(req *http.Request) any {
			return s.tunnelList(s.snapshot(), req.URL.Query().Has("history"))
		}))
		r.Get("/bgp", s.apiJSON(func(req *http.Request) any { return bgpSessions(s.snapshot()) }))
		r.Get("/cluster", s.apiJSON(func(req *http.Request) any { return s.cluster(s.snapshot()) }))
		r.Get("/health", s.apiHealth)
		r.Post("/resync", s.requireToken(s.resync))
	})
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{ErrorLog: slogPrinter{s.log}}))
	r.Get("/livez", func(w http.ResponseWriter, _ *http.Request) { writeText(w, http.StatusOK, "ok\n") })
	r.Get("/readyz", s.readyz)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) { writeText(w, http.StatusNotFound, "not found\n") })
	r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusMethodNotAllowed, "method not allowed: this server is read-only\n")
	})
	return r
}

// securityHeaders sets the headers every response carries: no inline
// script or style, no framing, no sniffing, no referrer.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

// requireToken lets a request through only if the Server has an API token
// and the request carries it.
func (s *Server) requireToken(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.opts.APIToken == "" {
			writeText(w, http.StatusForbidden, "forbidden: twilld runs without --api-token, so nothing can be changed through its API\n")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.APIToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="twilld"`)
			writeText(w, http.StatusUnauthorized, "unauthorized: want Authorization: Bearer <--api-token>\n")
			return
		}
		next(w, r)
	}
}

func (s *Server) resync(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Resync == nil {
		writeText(w, http.StatusNotImplemented, "resync is not available\n")
		return
	}
	s.opts.Resync()
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "resync requested"})
}

func (s *Server) apiJSON(f func(*http.Request) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, f(r)) }
}

func (s *Server) apiHealth(w http.ResponseWriter, _ *http.Request) {
	h := health(s.snapshot())
	code := http.StatusOK
	if !h.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

// readyz answers 200 "ok" when every check passes and 503 otherwise;
// ?verbose lists the checks.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	h := health(s.snapshot())
	code, word := http.StatusOK, "ok"
	if !h.Ready {
		code, word = http.StatusServiceUnavailable, "not ready"
	}
	if !r.URL.Query().Has("verbose") {
		writeText(w, code, word+"\n")
		return
	}
	var b strings.Builder
	for _, c := range h.Checks {
		mark, res := "+", "ok"
		if !c.OK {
			mark, res = "-", "failed"
		}
		fmt.Fprintf(&b, "[%s]%s %s", mark, c.Name, res)
		if c.Detail != "" {
			fmt.Fprintf(&b, ": %s", c.Detail)
		}
		b.WriteByte('\n')
	}
	b.WriteString("readyz check: " + word + "\n")
	writeText(w, code, b.String())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(s))
}

// snapshot is the daemon's state now.
func (s *Server) snapshot() status.Snapshot { return s.opts.Source.Snapshot() }

// sampled is the last sampled snapshot, or a fresh one before the first
// sample.
func (s *Server) sampled() status.Snapshot {
	s.mu.Lock()
	l := s.latest
	s.mu.Unlock()
	if l == nil {
		return s.snapshot()
	}
	return *l
}

// Sample reads the counters once and wakes the live pages. Run calls it
// every SampleInterval.
func (s *Server) Sample() {
	snap := s.snapshot()
	s.hist.add(time.Now(), snap.Backend.Peers)
	s.mu.Lock()
	s.latest = &snap
	close(s.tick)
	s.tick = make(chan struct{})
	s.mu.Unlock()
}

// ticked returns a channel closed after the next sample.
func (s *Server) ticked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tick
}

// Run samples the counters and probes the peers' dashboards until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { s.peers.run(ctx, s.opts.PeerInterval, s.sampled) })
	s.Sample()
	t := time.NewTicker(s.opts.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
			s.Sample()
		}
	}
}

// slogPrinter adapts a slog.Logger to promhttp's ErrorLog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("metrics", "err", fmt.Sprint(v...)) }
