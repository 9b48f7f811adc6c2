package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Probes the scenarios run on a node, in a pod or on a lab's outside host,
// where there is no nc, curl or python (the qemu initramfs ships twillctl).

func init() {
	register("vm send-udp", "(test harness) send raw UDP datagrams: --to ADDR:PORT --hex BYTES [--count N]", runSendUDP)
	register("vm http-get", "(test harness) GET a URL and print \"HTTP <code>\" and the body, whatever the code", runHTTPGet)
	register("vm recv-udp", "(test harness) count UDP datagrams: --listen ADDR:PORT --hex BYTES [--count N] [--timeout D]", runRecvUDP)
}

// runRecvUDP listens until count datagrams with the payload arrived or
// the timeout passed, and prints how many did ("received N of M").
func runRecvUDP(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("vm recv-udp")
	listen := fs.String("listen", "", "address ADDR:PORT to listen on")
	payload := fs.String("hex", "", "the payload to count, in hex")
	count := fs.Int("count", 1, "how many datagrams to wait for")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: want ADDR:PORT", *listen))
	}
	want, err := hex.DecodeString(strings.TrimSpace(*payload))
	if err != nil || len(want) == 0 {
		errs = append(errs, fmt.Errorf("--hex %q: want the payload as hex digits", *payload))
	}
	if *count < 1 {
		errs = append(errs, fmt.Errorf("--count %d: want 1 or more", *count))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	defer c.Close()
	fmt.Fprintf(out, "listening %s\n", c.LocalAddr())
	deadline := time.Now().Add(*timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetReadDeadline(deadline)
	got := 0
	buf := make([]byte, 65536)
	for got < *count {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if string(buf[:n]) == string(want) {
			got++
		}
	}
	fmt.Fprintf(out, "received %d of %d\n", got, *count)
	return nil
}

func runSendUDP(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("vm send-udp")
	to := fs.String("to", "", "destination ADDR:PORT")
	from := fs.String("from", "", "source address (default: chosen by the routing table)")
	payload := fs.String("hex", "", "the datagram's payload, in hex")
	count := fs.Int("count", 1, "how many datagrams to send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		errs = append(errs, fmt.Errorf("--to %q: want ADDR:PORT", *to))
	}
	var src netip.AddrPort
	if *from != "" {
		a, err := netip.ParseAddr(*from)
		if err != nil {
			errs = append(errs, fmt.Errorf("--from %q: not an address", *from))
		}
		src = netip.AddrPortFrom(a, 0)
	}
	msg, err := hex.DecodeString(strings.TrimSpace(*payload))
	if err != nil || len(msg) == 0 {
		errs = append(errs, fmt.Errorf("--hex %q: want the payload as hex digits", *payload))
	}
	if *count < 1 {
		errs = append(errs, fmt.Errorf("--count %d: want 1 or more", *count))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var laddr *net.UDPAddr
	if src.IsValid() {
		laddr = net.UDPAddrFromAddrPort(src)
	}
	// Unconnected, so that an ICMP error for one datagram does not fail
	// the next write; of the destination's family (an unbound "udp"
	// socket may be IPv4 only).
	network := "udp4"
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	defer c.Close()
	for i := range *count {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
			return fmt.Errorf("send datagram %d to %s: %w", i+1, dst, err)
		}
	}
	fmt.Fprintf(out, "sent %d datagrams of %d bytes from %s to %s\n", *count, len(msg), c.LocalAddr(), dst)
	return nil
}

func runHTTPGet(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("vm http-get")
	url := fs.String("url", "", "the URL")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		return errors.New("--url: missing")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", *url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", *url, err)
	}
	fmt.Fprintf(out, "HTTP %d\n", resp.StatusCode)
	_, err = out.Write(body)
	return err
}
