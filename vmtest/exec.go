package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// run runs a command and returns an error with its output.
func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runAll runs commands one after the other, up to the first that fails.
func runAll(ctx context.Context, steps [][]string) error {
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// hostExec runs argv in a network namespace of this host.
func hostExec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w", ns, strings.Join(argv, " "), err)
	}
	return out, nil
}

// runToFile runs argv and returns its combined output. The output goes
// through a file, not a pipe: an ssh that starts a shared connection
// leaves it running in the background with the output open, and a pipe
// would not end before it does.
func runToFile(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	f, err := os.CreateTemp("", "twill-ssh-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err = cmd.Run()
	out, rerr := os.ReadFile(f.Name())
	return out, errors.Join(err, rerr)
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// shellQuoteAll quotes each word for sh and joins them.
func shellQuoteAll(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}
