package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/twillnet/twill/overlay/cni"
)

// Names the plugin and its network configuration are installed under.
const (
	pluginName   = cni.PluginType
	conflistName = "10-twill.conflist"
)

// install is `twill-cni install`: what a Kubernetes DaemonSet's init
// containers run to put the plugin (this very binary) and its network
// configuration onto the host, as the mounted host directories
// --plugin-dir (/opt/cni/bin) and --conf-dir (/etc/cni/net.d). Each file
// is written beside its target and renamed over it, so that a runtime
// never runs a half-written plugin nor reads half a conflist; a conflist
// that does not parse, or has no twill plugin, is refused and nothing is
// written.
func install(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("twill-cni install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pluginDir := fs.String("plugin-dir", "", "copy the plugin into `DIR` as "+pluginName)
	conflist := fs.String("conflist", "", "network configuration list `FILE` to install (validated first)")
	confDir := fs.String("conf-dir", "", "install --conflist into `DIR` as "+conflistName)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("install: unexpected argument %q", fs.Arg(0))
	}
	if (*conflist == "") != (*confDir == "") {
		return errors.New("install: --conflist and --conf-dir go together")
	}
	if *pluginDir == "" && *conflist == "" {
		return errors.New("install: nothing to do: give --plugin-dir, or --conflist and --conf-dir")
	}
	var conf []byte
	if *conflist != "" {
		b, err := os.ReadFile(*conflist)
		if err != nil {
			return fmt.Errorf("install: read --conflist: %w", err)
		}
		if err := cni.CheckConflist(b); err != nil {
			return fmt.Errorf("install: --conflist %s: %w", *conflist, err)
		}
		conf = b
	}
	if *pluginDir != "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("install: find the plugin's own binary: %w", err)
		}
		b, err := os.ReadFile(self)
		if err != nil {
			return fmt.Errorf("install: read the plugin's own binary: %w", err)
		}
		if err := replaceFile(filepath.Join(*pluginDir, pluginName), b, 0o755); err != nil {
			return fmt.Errorf("install: --plugin-dir: %w", err)
		}
		fmt.Fprintf(stderr, "installed %s\n", filepath.Join(*pluginDir, pluginName))
	}
	if conf != nil {
		if err := replaceFile(filepath.Join(*confDir, conflistName), conf, 0o644); err != nil {
			return fmt.Errorf("install: --conf-dir: %w", err)
		}
		fmt.Fprintf(stderr, "installed %s\n", filepath.Join(*confDir, conflistName))
	}
	return nil
}

// replaceFile writes b to a temporary file in path's directory and renames
// it over path.
func replaceFile(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(b)
	if err := errors.Join(werr, tmp.Chmod(mode), tmp.Sync(), tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
