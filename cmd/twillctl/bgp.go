package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/twillnet/twill/web/api"
)

func init() {
	register("bgp", "show a node's BGP sessions, as calicoctl node status does (from its API, --node)", runBGP)
}

func runBGP(ctx context.Context, args []string, out io.Writer) error {
	fs, node, format := apiFlags("bgp")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkFormat(*format); err != nil {
		return err
	}
	var bs api.BGPSessions
	raw, err := fetch(ctx, *node, "bgp", &bs)
	if err != nil {
		return err
	}
	if *format == "json" {
		_, err := out.Write(raw)
		return err
	}
	if len(bs.Sessions) == 0 {
		fmt.Fprintln(out, "no BGP sessions (the node does not run the bgp backend, or has no peers yet)")
		return nil
	}
	fmt.Fprintln(out, "IPv4 BGP status")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER ADDRESS\tASN\tPEER TYPE\tSTATE\tSINCE\tRECEIVED\tADVERTISED\tINFO")
	for _, s := range bs.Sessions {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%d\t%s\n", s.Peer, s.ASN, s.Type, s.State, since(s.Since),
			s.PrefixesReceived, s.PrefixesAdvertised, dash(s.LastError))
	}
	return tw.Flush()
}

// since renders an RFC 3339 time as the clock time and how long ago.
func since(at string) string {
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return dash(at)
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format("15:04:05"), time.Since(t).Round(time.Second))
}
