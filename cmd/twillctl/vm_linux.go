package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/twillnet/twill/vmtest"
	"github.com/twillnet/twill/vmtest/agent"
)

func init() {
	register("vm agent", "(inside a qemu lab's VM) serve the host's requests on the virtio-serial port", runVMAgent)
	register("vm image", "fetch the VM kernel and build the initramfs the qemu driver boots; print their paths", runVMImage)
}

func runVMAgent(ctx context.Context, args []string, _ io.Writer) error {
	fs := newFlags("vm agent")
	port := fs.String("port", agent.PortName, "name of the virtio-serial port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The port appears once the module has probed; give it a moment.
	var f *os.File
	var err error
	for range 50 {
		if f, err = agent.OpenPort(*port); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	err = agent.Serve(ctx, f, log)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func runVMImage(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("vm image")
	dir := fs.String("dir", vmtest.ImageDir(), "cache directory for the kernel and initramfs")
	bin := fs.String("bin", binDir(), "directory with twilld, twillctl and twill-cni")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	t0 := time.Now()
	img, err := vmtest.BuildImage(ctx, *dir, *bin, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "kernel %s\ninitrd %s\n(%s)\n", img.Kernel, img.Initrd, time.Since(t0).Round(10*time.Millisecond))
	return nil
}
