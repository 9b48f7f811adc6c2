// Package embedded runs a single-member etcd server inside the calling
// process, so that twill can be tried, tested and run as a lab on one machine
// with nothing installed. It is not for production clusters: those run etcd
// as its own service.
package embedded

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Config says where the server keeps its data and where it listens.
type Config struct {
	// DataDir holds the server's data; it survives restarts.
	DataDir string
	// ClientURL is where clients connect, e.g. http://127.0.0.1:2379.
	// Empty: a free port on 127.0.0.1.
	ClientURL string
	// MoreClientURLs are further client listeners, not advertised: for
	// example unix:///run/x/etcd.sock, which a process in any network
	// namespace of the machine can reach.
	MoreClientURLs []string
	// PeerURL is the (unused, single-member) peer listener. Empty: a free
	// port on the client URL's host.
	PeerURL string
	// Name of the member (default "twill").
	Name string
	// LogLevel of etcd's own log to stderr (default "fatal": etcd logs
	// errors on every ordinary shutdown; fatal errors still come through
	// Err).
	LogLevel string
}

// Server is a running etcd.
type Server struct {
	etcd *embed.Etcd
	url  string
}

// Start starts the server and waits until it serves clients.
func Start(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded etcd: DataDir is required")
	}
	if cfg.Name == "" {
		cfg.Name = "twill"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "fatal"
	}
	host := "127.0.0.1"
	if cfg.ClientURL == "" {
		port, err := freePort(host)
		if err != nil {
			return nil, err
		}
		cfg.ClientURL = fmt.Sprintf("http://%s:%d", host, port)
	}
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil || cu.Host == "" {
		return nil, fmt.Errorf("embedded etcd: client URL %q: want http://HOST:PORT", cfg.ClientURL)
	}
	if cfg.PeerURL == "" {
		port, err := freePort(cu.Hostname())
		if err != nil {
			return nil, err
		}
		cfg.PeerURL = fmt.Sprintf("http://%s:%d", cu.Hostname(), port)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil || pu.Host == "" {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: want http://HOST:PORT", cfg.PeerURL)
	}

	listen := []url.URL{*cu}
	for _, m := range cfg.MoreClientURLs {
		mu, err := url.Parse(m)
		if err != nil || (mu.Host == "" && mu.Path == "") {
			return nil, fmt.Errorf("embedded etcd: client URL %q: want http://HOST:PORT or unix:///PATH", m)
		}
		listen = append(listen, *mu)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = listen
	ec.AdvertiseClientUrls = []url.URL{*cu}
	ec.ListenPeerUrls = []url.URL{*pu}
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	ec.LogLevel = cfg.LogLevel
	ec.LogOutputs = []string{"stderr"}
	// Keep every revision until asked to compact; the lab and tests compact
	// on purpose.
	ec.AutoCompactionRetention = "0"

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start at %s (data %s): %w", cfg.ClientURL, cfg.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("embedded etcd: not ready within 60 s")
	}
	return &Server{etcd: e, url: cfg.ClientURL}, nil
}

// ClientURL is where clients connect.
func (s *Server) ClientURL() string { return s.url }

// Err delivers a fatal server error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server.
func (s *Server) Close() { s.etcd.Close() }

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("embedded etcd: find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
