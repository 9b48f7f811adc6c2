package main

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// The lab's log shows as progress lines: message and the record's
// attributes, no time, no INFO, no attributes of the logger, nothing below
// Info and nothing skipped.
func TestProgressLines(t *testing.T) {
	var out strings.Builder
	log := slog.New(newProgress(&out, "lab up")).With("lab", "twill")
	log.Debug("netlink detail", "x", 1)
	log.Info("twilld started", "node", "n1", "pid", 4242)
	log.Info("lab up", "took", "1s")
	log.Warn("read node state", "node", "n2", "err", errors.New("no such file"))
	want := "  twilld started: node=n1 pid=4242\n  warn: read node state: node=n2 err=no such file\n"
	if out.String() != want {
		t.Errorf("progress:\n%s\nwant:\n%s", out.String(), want)
	}
}
