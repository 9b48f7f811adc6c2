package scenarios

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQEMUTierDocumented holds the README and the Makefile to the list of
// scenarios the qemu tier plays: they say how many and name each, in order.
func TestQEMUTierDocumented(t *testing.T) {
	if os.Getenv("TWILL_QEMU_SCENARIOS") != "" {
		t.Skip("TWILL_QEMU_SCENARIOS replaces the list this test checks the docs against")
	}
	quoted := make([]string, len(qemuScenarios))
	for i, s := range qemuScenarios {
		quoted[i] = "`" + s + "`"
	}
	for file, want := range map[string]string{
		"README.md": fmt.Sprintf("plays %d scenarios on 2- and 3-VM clusters and prints each one's\ntime: %s\n", len(qemuScenarios), strings.Join(quoted, ", ")),
		"Makefile":  fmt.Sprintf("playing %d scenarios: %s, each timed.", len(qemuScenarios), strings.Join(qemuScenarios, ", ")),
	} {
		b, err := os.ReadFile(filepath.Join("..", file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s does not say what the qemu tier plays; want:\n%s", file, want)
		}
	}
}
