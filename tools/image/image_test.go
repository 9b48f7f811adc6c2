package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/twillnet/twill/internal/binaries"
)

// The image written from twill's binaries reads back, from the OCI layout
// (OCI media types) and from the tarball (docker's save format, which
// carries the same config and layer), as one image: twilld the entrypoint,
// one layer holding the three binaries byte for byte, root's, mode 0755;
// twilld taken out of the image runs. A second build gives the same
// digest.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds twill's binaries; skipped with -short")
	}
	bin := binaries.ForTest(t)
	out := t.TempDir()
	if err := run([]string{"--bin", bin, "--out", out, "--tag", "twill:test"}); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "test" {
		t.Fatalf("layout index: %+v; want one image, ref.name test", im.Manifests)
	}
	fromLayout, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	fromTar, err := tarball.ImageFromPath(filepath.Join(out, "twill.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for src, img := range map[string]v1.Image{"layout": fromLayout, "tarball": fromTar} {
		t.Run(src, func(t *testing.T) { checkImage(t, img, bin) })
	}
	if mt, _ := fromLayout.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("layout: manifest media type %s, want %s", mt, types.OCIManifestSchema1)
	}
	if ls, _ := fromLayout.Layers(); len(ls) == 1 {
		if mt, _ := ls[0].MediaType(); mt != types.OCILayer {
			t.Errorf("layout: layer media type %s, want %s", mt, types.OCILayer)
		}
	}
	c1, _ := fromLayout.ConfigName()
	c2, _ := fromTar.ConfigName()
	if c1 != c2 {
		t.Errorf("layout's config %s, tarball's %s: want one image", c1, c2)
	}
	d1, _ := fromLayout.Digest()

	// Reproducible: the same binaries, the same digest.
	again, err := Build(Spec{BinDir: bin, Tag: "twill:test"})
	if err != nil {
		t.Fatal(err)
	}
	if d3, _ := again.Digest(); d3 != d1 {
		t.Errorf("second build: digest %s, first %s", d3, d1)
	}

	// What cannot make an image is refused, nothing written.
	empty := t.TempDir()
	if err := run([]string{"--bin", empty, "--out", filepath.Join(empty, "out")}); err == nil || !strings.Contains(err.Error(), "twilld") {
		t.Errorf("no binaries: error %v, want one naming twilld", err)
	}
	if err := run([]string{"--bin", bin, "--out", t.TempDir(), "--tag", "Not A Tag"}); err == nil || !strings.Contains(err.Error(), "--tag") {
		t.Errorf("bad tag: error %v, want one naming --tag", err)
	}
	if _, err := os.Stat(filepath.Join(empty, "out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused build wrote %s", filepath.Join(empty, "out"))
	}
}

func checkImage(t *testing.T, img v1.Image, bin string) {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/twilld"}) || cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("config: entrypoint %q, os %q, arch %q; want [/usr/local/bin/twilld], linux", cf.Config.Entrypoint, cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "test" {
		t.Errorf("labels %v: want version test", cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	found := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n, ok := strings.CutPrefix(h.Name, "usr/local/bin/")
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		b, _ := io.ReadAll(tr)
		want, err := os.ReadFile(filepath.Join(bin, n))
		if err != nil {
			t.Errorf("layer holds %s, not one of the binaries", h.Name)
			continue
		}
		found[n] = true
		if sha256.Sum256(b) != sha256.Sum256(want) || h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: %d bytes, mode %o, owner %d:%d; want the %d bytes of %s, 0755, root", h.Name, len(b), h.Mode, h.Uid, h.Gid, len(want), n)
		}
		if n == "twilld" {
			p := filepath.Join(t.TempDir(), n)
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(p, "--version").CombinedOutput()
			if err != nil || !bytes.HasPrefix(out, []byte("twilld ")) {
				t.Errorf("twilld from the image --version: %q, %v", out, err)
			}
		}
	}
	for _, n := range Binaries {
		if !found[n] {
			t.Errorf("layer lacks usr/local/bin/%s", n)
		}
	}
}
