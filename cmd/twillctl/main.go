// Command twillctl is twill's operator tool: it runs a one-machine etcd,
// puts the network config into etcd, lists and reserves leases, and brings
// up labs (lab up/down/status) and their pods (pod add/del/list).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

var version = "dev"

// command is one twillctl subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, out io.Writer) error) {
	commands[name] = command{summary: summary, run: run}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: twillctl COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-18s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'twillctl COMMAND -h' for a command's flags.")
}

func main() {
	register("version", "print the version", func(_ context.Context, _ []string, out io.Writer) error {
		fmt.Fprintln(out, "twillctl", version)
		return nil
	})
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stderr)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name := os.Args[1]
	// "config put" and "lab up" are two words; the map key joins them.
	if len(os.Args) > 2 {
		if _, ok := commands[name+" "+os.Args[2]]; ok {
			name = name + " " + os.Args[2]
		}
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "twillctl: unknown command %q\n\n", strings.Join(os.Args[1:min(3, len(os.Args))], " "))
		usage(os.Stderr)
		os.Exit(2)
	}
	rest := os.Args[1+len(strings.Fields(name)):]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := cmd.run(ctx, rest, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "twillctl %s: %v\n", name, err)
		os.Exit(1)
	}
}

// newFlags returns a flag set for a subcommand that reports errors instead
// of exiting.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("twillctl "+name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}
