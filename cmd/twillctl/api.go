package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twillnet/twill/web/api"
)

// The commands that read a node's dashboard API (docs/api.md).

func init() {
	register("status", "show a node's state and readiness (from its API, --node)", runStatus)
	register("routes", "show the routes, neighbours and FDB entries a node wants and has (from its API, --node)", runRoutes)
	register("tunnels", "show a node's tunnels: state, counters, rates, drops (from its API, --node)", runTunnels)
}

// defaultNode is the node API when neither --node nor TWILL_NODE says.
const defaultNode = "http://127.0.0.1:9180"

func apiFlags(name string) (*flag.FlagSet, *string, *string) {
	fs := newFlags(name)
	node := fs.String("node", envOr("TWILL_NODE", defaultNode), "URL of the node's dashboard API (env TWILL_NODE)")
	format := fs.String("o", "table", "output: table or json")
	return fs, node, format
}

// fetch GETs /api/v1/PATH from a node and decodes it into v; raw gets the
// body as it came.
func fetch(ctx context.Context, node, path string, v any) (raw []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := strings.TrimRight(node, "/") + "/api/v1/" + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", node, err)
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	// /health answers 503 with a body when not ready.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return nil, fmt.Errorf("%s: %s", u, resp.Status)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("%s: %w", u, err)
	}
	return raw, nil
}

func checkFormat(f string) error {
	if f != "table" && f != "json" {
		return fmt.Errorf("-o %q: want table or json", f)
	}
	return nil
}

func runStatus(ctx context.Context, args []string, out io.Writer) error {
	fs, node, format := apiFlags("status")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkFormat(*format); err != nil {
		return err
	}
	var n api.NodeInfo
	raw, err := fetch(ctx, *node, "node", &n)
	if err != nil {
		return err
	}
	if *format == "json" {
		_, err := out.Write(raw)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "ready"
	if !n.Ready {
		ready = "NOT READY"
	}
	lease := "reserved"
	if !n.Reservation {
		lease = "expires " + n.LeaseExpiresAt
	}
	for _, kv := range [][2]string{
		{"Node", n.Name}, {"Status", ready}, {"Public IP", n.PublicIP + " on " + n.Iface},
		{"Subnet", n.Subnet + " of " + n.Network}, {"Backend", n.Backend}, {"MTU", fmt.Sprint(n.MTU)},
		{"Lease", lease}, {"Peers", fmt.Sprint(n.Peers)},
		{"Uptime", (time.Duration(n.UptimeSeconds) * time.Second).String()}, {"Version", n.Version},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	fmt.Fprintln(tw, "\nCHECK\tOK\tDETAIL")
	for _, c := range n.Checks {
		ok := "yes"
		if !c.OK {
			ok = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, ok, c.Detail)
	}
	for _, p := range n.Problems {
		fmt.Fprintf(tw, "problem:\t%s\n", p)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !n.Ready {
		return errors.New("the node is not ready")
	}
	return nil
}

func apiLeases(ctx context.Context, node, format string, out io.Writer) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	var ll api.LeaseList
	raw, err := fetch(ctx, node, "leases", &ll)
	if err != nil {
		return err
	}
	if format == "json" {
		_, err := out.Write(raw)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tNODE\tBACKEND\tEXPIRES")
	for _, l := range ll.Leases {
		exp := "reserved"
		if !l.Reservation {
			exp = (time.Duration(l.ExpiresInSeconds) * time.Second).String()
		}
		name := l.Node
		if l.Own {
			name += " (this node)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Subnet, l.PublicIP, name, l.Backend, exp)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range ll.Leases {
		if l.NotRouted != "" {
			fmt.Fprintf(out, "not routed by this node: %s (%s): %s\n", l.Subnet, l.PublicIP, l.NotRouted)
		}
	}
	return nil
}

func runRoutes(ctx context.Context, args []string, out io.Writer) error {
	fs, node, format := apiFlags("routes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkFormat(*format); err != nil {
		return err
	}
	var r api.Routes
	raw, err := fetch(ctx, *node, "routes", &r)
	if err != nil {
		return err
	}
	if *format == "json" {
		_, err := out.Write(raw)
		return err
	}
	sync := "in sync"
	if !r.InSync {
		sync = "OUT OF SYNC"
	}
	fmt.Fprintf(out, "kernel state: %s", sync)
	if r.LastError != "" {
		fmt.Fprintf(out, " (%s)", r.LastError)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, sec := range []struct {
		name string
		rows []api.RouteRow
	}{{"ROUTE", r.Routes}, {"NEIGHBOUR", r.Neighbors}, {"FDB", r.FDB}} {
		fmt.Fprintf(tw, "\n%s\tSTATUS\tWANTED\tIN THE KERNEL\n", sec.name)
		for _, row := range sec.rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.Key, row.Status, dash(row.Desired), dash(row.Actual))
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runTunnels(ctx context.Context, args []string, out io.Writer) error {
	fs, node, format := apiFlags("tunnels")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkFormat(*format); err != nil {
		return err
	}
	var tl api.TunnelList
	raw, err := fetch(ctx, *node, "tunnels", &tl)
	if err != nil {
		return err
	}
	if *format == "json" {
		_, err := out.Write(raw)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PEER\tNODE\tENDPOINT\tSTATE\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES\tTX B/S\tRX B/S\tDROPS\t")
	for _, t := range tl.Tunnels {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%.0f\t%.0f\t%s\t\n", t.Peer, t.Node, t.PublicIP, t.State,
			t.TxPackets, t.TxBytes, t.RxPackets, t.RxBytes, t.TxBytesPerSecond, t.RxBytesPerSecond, drops(t.Drops))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(tl.Drops) > 0 {
		fmt.Fprintf(out, "drops of no peer: %s\n", drops(tl.Drops))
	}
	return nil
}

func drops(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, ",")
}
