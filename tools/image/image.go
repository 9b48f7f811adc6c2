package main

import (
	"archive/tar"
	"bytes"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries are the commands the image holds, in BinPath.
var Binaries = []string{"twilld", "twillctl", "twill-cni"}

// BinPath is where they are in the image; Entrypoint runs twilld.
const BinPath = "/usr/local/bin"

// Entrypoint is the image's entrypoint.
var Entrypoint = []string{BinPath + "/twilld"}

// epoch is every timestamp in the image, so that it is reproducible.
var epoch = time.Unix(0, 0).UTC()

// Spec says what goes into the image.
type Spec struct {
	// BinDir holds the binaries.
	BinDir string
	// Tag is NAME:TAG; its tag is the version label unless Version is set.
	Tag     string
	Version string
}

// Build makes the image from the binaries in spec.BinDir, which must be
// static Linux executables of one architecture.
func Build(spec Spec) (v1.Image, error) {
	ref, err := name.NewTag(spec.Tag)
	if err != nil {
		return nil, fmt.Errorf("--tag %q: %w", spec.Tag, err)
	}
	version := spec.Version
	if version == "" {
		version = ref.TagStr()
	}
	arch := ""
	files := map[string][]byte{}
	for _, n := range Binaries {
		p := filepath.Join(spec.BinDir, n)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s (make build makes it): %w", p, err)
		}
		a, err := staticLinux(p)
		if err != nil {
			return nil, err
		}
		if arch != "" && a != arch {
			return nil, fmt.Errorf("%s is for %s, the others for %s", p, a, arch)
		}
		arch, files[n] = a, b
	}
	layerTar, err := binariesTar(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("make the layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "make image: " + strings.Join(Binaries, ", ") + " in " + BinPath, Comment: "twill " + version},
	})
	if err != nil {
		return nil, fmt.Errorf("add the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = Entrypoint
	cf.Config.Env = []string{"PATH=" + BinPath + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "twill",
		"org.opencontainers.image.version": version,
		"org.opencontainers.image.description": "twill, an overlay network for container hosts: twilld (entrypoint), twillctl, " +
			"twill-cni (`twill-cni install` puts the CNI plugin onto a host)",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set the image config: %w", err)
	}
	return img, nil
}

// staticLinux is the architecture of a static Linux Go binary at path, or
// an error saying why it is not one.
func staticLinux(path string) (string, error) {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: not a Go binary: %w", path, err)
	}
	set := map[string]string{}
	for _, s := range info.Settings {
		set[s.Key] = s.Value
	}
	if set["GOOS"] != "linux" || set["CGO_ENABLED"] != "0" {
		return "", fmt.Errorf("%s: built for GOOS=%s with CGO_ENABLED=%s; the image needs linux and static (CGO_ENABLED=0, as make build builds)",
			path, set["GOOS"], set["CGO_ENABLED"])
	}
	return set["GOARCH"], nil
}

// binariesTar is the layer: the directories down to BinPath, the binaries
// (root, 0755) and /tmp (1777), every time the epoch.
func binariesTar(files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	var errs []error
	parts := strings.Split(strings.TrimPrefix(BinPath, "/"), "/")
	for i := range parts {
		errs = append(errs, dir(strings.Join(parts[:i+1], "/"), 0o755))
	}
	for _, n := range Binaries {
		b := files[n]
		errs = append(errs, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(BinPath, "/") + "/" + n,
			Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}))
		_, err := tw.Write(b)
		errs = append(errs, err)
	}
	errs = append(errs, dir("tmp", 0o1777), tw.Close())
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("make the layer's tar: %w", err)
	}
	return buf.Bytes(), nil
}

// Written says where Write put the image.
type Written struct {
	Digest  v1.Hash
	Layout  string
	Tarball string
}

// Write writes img as tag into out: an OCI image layout in out/oci (made
// anew) and a tarball out/twill.tar, each written beside and renamed into
// place.
func Write(img v1.Image, tag, out string) (Written, error) {
	ref, err := name.NewTag(tag)
	if err != nil {
		return Written{}, fmt.Errorf("--tag %q: %w", tag, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return Written{}, err
	}
	w := Written{Digest: digest, Layout: filepath.Join(out, "oci"), Tarball: filepath.Join(out, "twill.tar")}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return Written{}, err
	}
	tmpLayout, err := os.MkdirTemp(out, ".oci-")
	if err != nil {
		return Written{}, err
	}
	defer os.RemoveAll(tmpLayout)
	p, err := layout.Write(tmpLayout, empty.Index)
	if err != nil {
		return Written{}, fmt.Errorf("write the OCI layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
	})); err != nil {
		return Written{}, fmt.Errorf("write the OCI layout: %w", err)
	}
	if err := os.Chmod(tmpLayout, 0o755); err != nil {
		return Written{}, err
	}
	if err := os.RemoveAll(w.Layout); err != nil {
		return Written{}, err
	}
	if err := os.Rename(tmpLayout, w.Layout); err != nil {
		return Written{}, err
	}
	tmpTar := w.Tarball + ".tmp"
	if err := tarball.WriteToFile(tmpTar, ref, img); err != nil {
		os.Remove(tmpTar)
		return Written{}, fmt.Errorf("write the tarball: %w", err)
	}
	if err := os.Rename(tmpTar, w.Tarball); err != nil {
		return Written{}, err
	}
	return w, nil
}
