// Command image writes twill's container image, without a container
// daemon: the static twilld, twillctl and twill-cni of a directory (bin/ of
// `make build`) in one layer under /usr/local/bin, twilld the entrypoint,
// as an OCI image layout (OUT/oci) and a tarball that docker load, podman
// load and ctr images import read (OUT/twill.tar). The image is
// reproducible: the same binaries give the same digest.
//
// `make image` runs it. It reads the binaries and writes under OUT only;
// it pushes nowhere.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "`DIR` holding twilld, twillctl and twill-cni (static, linux)")
	out := fs.String("out", "build/image", "`DIR` to write the OCI layout (oci/) and the tarball (twill.tar) into")
	tag := fs.String("tag", "twill:latest", "the image's `NAME:TAG` in the tarball and the layout's index")
	version := fs.String("version", "", "the image's version label (default: the tag's tag)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	img, err := Build(Spec{BinDir: *bin, Tag: *tag, Version: *version})
	if err != nil {
		return err
	}
	w, err := Write(img, *tag, *out)
	if err != nil {
		return err
	}
	fmt.Printf("image %s %s\n  OCI layout %s\n  tarball    %s\n", *tag, w.Digest, w.Layout, w.Tarball)
	return nil
}
