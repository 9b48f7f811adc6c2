package binaries

import (
	"fmt"
	"os"
	"path/filepath"
)

// FlannelNames are what `make flannel` builds into build/flannel of the
// source tree (tools/flannel): flannel's own flanneld, and the reference
// CNI plugins its CNI plugin hands pods to.
var FlannelNames = []string{"flanneld", "bridge", "host-local"}

// FlannelTarget is the make target that builds them.
const FlannelTarget = "make flannel"

// FlannelDir returns build/flannel of the source tree when it holds
// FlannelNames, else an error naming FlannelTarget. It builds nothing:
// flanneld takes minutes to build.
func FlannelDir() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "build", "flannel")
	for _, n := range FlannelNames {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.IsDir() {
			return "", fmt.Errorf("no %s in %s: `%s` builds flannel v0.28.10 there", n, dir, FlannelTarget)
		}
	}
	return dir, nil
}
