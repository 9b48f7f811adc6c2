package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// nettest is the traffic tool the scenarios run inside pods: a server that
// accepts one TCP connection, reads everything and reports its SHA-256 and the
// peer address it saw, and a sender that writes a deterministic stream of
// pseudo-random bytes and reports the same.
func init() {
	register("nettest serve", "(scenarios) accept one TCP connection, print bytes, SHA-256 and peer as JSON", runNettestServe)
	register("nettest send", "(scenarios) send SIZE pseudo-random bytes over TCP, print bytes, SHA-256 and rate as JSON", runNettestSend)
}

// NettestResult is what either side prints.
type NettestResult struct {
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256"`
	Peer    string  `json:"peer"`
	Seconds float64 `json:"seconds"`
	Mbps    float64 `json:"mbps"`
}

func runNettestServe(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("nettest serve")
	listen := fs.String("listen", ":5201", "address to listen on")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	go func() { <-ctx.Done(); l.Close() }()
	// Say we are listening, so a driver can start the sender.
	fmt.Fprintf(out, "listening %s\n", l.Addr())
	if f, ok := out.(interface{ Sync() error }); ok {
		f.Sync()
	}
	conn, err := l.Accept()
	if err != nil {
		return fmt.Errorf("accept on %s: %w", *listen, err)
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	start := time.Now()
	h := sha256.New()
	n, err := io.Copy(h, conn)
	if err != nil {
		return fmt.Errorf("receive from %s after %d bytes: %w", conn.RemoteAddr(), n, err)
	}
	return printResult(out, n, h.Sum(nil), conn.RemoteAddr().(*net.TCPAddr).IP.String(), time.Since(start))
}

func runNettestSend(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("nettest send")
	to := fs.String("to", "", "address:port of the server")
	size := fs.Int64("size", 1<<20, "bytes to send")
	seed := fs.Uint64("seed", 1, "seed of the pseudo-random stream")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("--to is required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var conn net.Conn
	var err error
	// The server may still be starting: retry the connection briefly.
	for attempt := 0; ; attempt++ {
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, "tcp", *to)
		if err == nil || attempt >= 20 || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *to, err)
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	start := time.Now()
	h := sha256.New()
	src := rand.NewChaCha8(seedBytes(*seed))
	buf := make([]byte, 64<<10)
	var sent int64
	for sent < *size {
		chunk := buf[:min(int64(len(buf)), *size-sent)]
		src.Read(chunk)
		h.Write(chunk)
		k, err := conn.Write(chunk)
		sent += int64(k)
		if err != nil {
			return fmt.Errorf("send to %s after %d bytes: %w", *to, sent, err)
		}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
		// Wait for the server to close, so the bytes are known to be there.
		io.Copy(io.Discard, conn)
	}
	return printResult(out, sent, h.Sum(nil), conn.RemoteAddr().String(), time.Since(start))
}

func seedBytes(s uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(s >> (8 * i))
	}
	return b
}

func printResult(out io.Writer, n int64, sum []byte, peer string, took time.Duration) error {
	r := NettestResult{Bytes: n, SHA256: hex.EncodeToString(sum), Peer: peer, Seconds: took.Seconds()}
	if took > 0 {
		r.Mbps = float64(n) * 8 / took.Seconds() / 1e6
	}
	return json.NewEncoder(out).Encode(r)
}
