package kernelpath

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// TestProgramsLoad runs both programs through the kernel's verifier.
func TestProgramsLoad(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs")
	}
	if err := Supported(); err != nil {
		t.Skip(err)
	}
	var opts ebpf.CollectionOptions
	opts.Programs.LogLevel = ebpf.LogLevelInstruction
	coll, err := ebpf.NewCollectionWithOptions(spec(), opts)
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	coll.Close()
}
