package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/scenarios"
	"github.com/twillnet/twill/vmtest"
)

func init() {
	register("scenario run", "bring up the cluster each scenario file asks for, play it, tear it down", runScenario)
}

func runScenario(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("scenario run")
	driver := fs.String("driver", "netns", "cluster driver: netns (network namespaces on this machine), qemu (VMs with their own kernel) or vagrant (the running Vagrant cluster of --vagrant-dir)")
	vagrantDir := fs.String("vagrant-dir", ".", "with --driver vagrant: the directory of the project's Vagrantfile")
	bin := fs.String("bin", binDir(), "directory with twilld, twillctl and twill-cni")
	reports := fs.String("report-dir", "", "where to write a JSON report per scenario (default: with --attach the lab's directory, "+vmtest.StateDir+"/LAB/reports; else build/scenario-reports in a twill checkout, else "+filepath.Join(os.TempDir(), "twill-scenario-reports")+")")
	lab := fs.String("lab", "", "lab name (default: a random one)")
	keep := fs.Bool("keep", false, "leave the cluster running after the scenario")
	attach := fs.Bool("attach", false, "play on the running lab --lab instead of bringing up a cluster (it stays up)")
	verbose := fs.Bool("v", false, "log the lab's own progress")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("want one or more scenario files, e.g. scenarios/basic-vxlan.yaml")
	}
	if *attach && *lab == "" {
		return errors.New("--attach needs --lab NAME")
	}
	if *driver == "vagrant" && (*attach || *keep || *lab != "") {
		return errors.New("--driver vagrant plays on the running Vagrant cluster: --attach, --keep and --lab do not apply")
	}
	if !slices.Contains(scenarioDrivers, *driver) {
		return fmt.Errorf("--driver %s: want one of %s", *driver, strings.Join(scenarioDrivers, ", "))
	}
	if *reports == "" {
		*reports = defaultReportDir(".", *attach, *lab)
	}
	var list []*scenarios.Scenario
	for _, f := range fs.Args() {
		s, err := scenarios.Load(f)
		if err != nil {
			return err
		}
		list = append(list, s.Plays()...)
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	r := &scenarios.Runner{Driver: *driver, Bin: *bin, Out: out, ReportDir: *reports, LabName: *lab, Keep: *keep, Attach: *attach, Log: log}
	if *driver == "vagrant" {
		c, err := vmtest.OpenVagrant(ctx, vmtest.VagrantOptions{Dir: *vagrantDir}, log)
		if err != nil {
			return err
		}
		defer c.Close()
		r.Cluster = c
	}
	failed := 0
	for _, s := range list {
		if _, err := r.Run(ctx, s); err != nil {
			failed++
		}
	}
	fmt.Fprintf(out, "%d passed, %d failed; reports in %s\n", len(list)-failed, failed, *reports)
	if failed > 0 {
		return fmt.Errorf("%d of %s failed (reports in %s)", failed, plural.Count(len(list), "scenario"), *reports)
	}
	return nil
}

// defaultReportDir is where scenario run writes its reports without
// --report-dir, never into a checkout's tracked files: the attached lab's
// directory, build/scenario-reports (ignored by git) when dir is a twill
// checkout, else a directory under the temp dir.
func defaultReportDir(dir string, attach bool, lab string) string {
	if attach && lab != "" {
		return filepath.Join(vmtest.StateDir, lab, "reports")
	}
	if mod, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(mod), "module github.com/twillnet/twill\n") {
		return filepath.Join(dir, "build", "scenario-reports")
	}
	return filepath.Join(os.TempDir(), "twill-scenario-reports")
}

// scenarioDrivers are the drivers scenario run knows.
var scenarioDrivers = append(slices.Clone(vmtest.Drivers), "vagrant")

// binDir is the directory this twillctl runs from, where make puts twilld
// and twill-cni beside it.
func binDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}
