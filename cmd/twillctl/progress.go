package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
)

// progressHandler shows log records as short progress lines for a person
// watching ("  twilld started: node=n1 pid=4242"): the message and the
// record's own attributes, without time, level (but for warnings and
// errors) or the attributes the logger was made with (the lab's name, on
// every line). Records below Info, and those whose message is in skip (said
// otherwise by the caller), are left out.
type progressHandler struct {
	mu   *sync.Mutex
	out  io.Writer
	skip []string
}

func newProgress(out io.Writer, skip ...string) *progressHandler {
	return &progressHandler{mu: &sync.Mutex{}, out: out, skip: skip}
}

func (h *progressHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *progressHandler) Handle(_ context.Context, r slog.Record) error {
	if slices.Contains(h.skip, r.Message) {
		return nil
	}
	var b strings.Builder
	b.WriteString("  ")
	if r.Level >= slog.LevelWarn {
		b.WriteString(strings.ToLower(r.Level.String()) + ": ")
	}
	b.WriteString(r.Message)
	sep := ": "
	add := func(a slog.Attr) bool {
		if a.Equal(slog.Attr{}) {
			return true
		}
		fmt.Fprintf(&b, "%s%s=%s", sep, a.Key, a.Value.Resolve())
		sep = " "
		return true
	}
	r.Attrs(add)
	b.WriteString("\n")
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.out, b.String())
	return err
}

func (h *progressHandler) WithAttrs([]slog.Attr) slog.Handler { return h }

// WithGroup is not used by the lab code; attributes stay flat.
func (h *progressHandler) WithGroup(string) slog.Handler { return h }
