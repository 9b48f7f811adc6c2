//go:build linux

// Command twill-cni is twill's CNI plugin, installed as /opt/cni/bin/twill.
// Runtimes run it with CNI_COMMAND and friends in the environment and the
// network configuration on stdin; the work is done by overlay/cni.
// `twill-cni install` puts the plugin and its conflist onto a host (a
// Kubernetes DaemonSet's init containers run it).
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/twillnet/twill/overlay/cni"
)

func main() {
	// Runtimes run the plugin without arguments.
	if len(os.Args) > 1 && os.Args[1] == "install" {
		if err := install(os.Args[2:], os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "twill-cni:", err)
			os.Exit(1)
		}
		return
	}
	// stdout carries the CNI result; logs go to stderr, which runtimes
	// keep when a command fails.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := &cni.Plugin{Log: log}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, cni.About)
}
