package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/twillnet/twill/bench"
)

func init() {
	register("bench", "measure pod-to-pod paths (underlay, host-gw, kernel vxlan, twill vxlan/udp, one packet per syscall) with iperf3 and ping; print a table, write JSON", runBench)
}

func runBench(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("bench")
	var o bench.Options
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of every measurement, interleaved across paths")
	fs.DurationVar(&o.Duration, "duration", 0, "length of each iperf3 run (default 5s)")
	paths := fs.String("paths", "", "comma-separated paths to measure (default all: "+strings.Join(bench.PathNames, ",")+")")
	fs.StringVar(&o.Bin, "bin", "", "directory with twilld, twillctl and twill-cni (default: beside this twillctl, else ./bin, else built)")
	fs.StringVar(&o.Prefix, "prefix", "bn", "prefix of the labs' names")
	jsonPath := fs.String("json", "bench.json", "write the report as JSON to this file (\"\" for none)")
	verbose := fs.Bool("v", false, "log progress")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *paths != "" {
		o.Paths = strings.Split(*paths, ",")
	}
	if *verbose {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	r, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if err := r.WriteTable(out); err != nil {
		return err
	}
	if *jsonPath != "" {
		f, err := os.Create(*jsonPath)
		if err != nil {
			return err
		}
		if err := r.WriteJSON(f); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", *jsonPath, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(out, "report written to %s\n", *jsonPath)
	}
	return nil
}
