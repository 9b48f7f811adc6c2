package scenarios

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// readyz checks a node's /readyz (or every running node's): 200 for
// expect ok, anything else for expect fail. It is asked from inside the
// node, where the dashboard listens on every driver.
func (p *play) readyz(ctx context.Context, node string, wantOK bool, within time.Duration) (string, map[string]any, error) {
	nodes, err := p.targetNodes(node)
	if err != nil {
		return "", nil, err
	}
	detail, err := retry(ctx, within, func() (string, error) {
		var b strings.Builder
		var bad []string
		for _, n := range nodes {
			out, err := p.c.Exec(ctx, n.NetNS, p.twillctl(), "vm", "http-get", "--url", dashboard(n)+"/readyz?verbose")
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v: %s", n.Name, err, lastLine(string(out))))
				continue
			}
			status, body, _ := strings.Cut(string(out), "\n")
			var failing []string
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "[-]") {
					failing = append(failing, strings.TrimPrefix(l, "[-]"))
				}
			}
			ok := strings.TrimSpace(status) == "HTTP 200"
			fmt.Fprintf(&b, "%s: %s", n.Name, strings.TrimPrefix(status, "HTTP "))
			if len(failing) > 0 {
				fmt.Fprintf(&b, " (%s)", strings.Join(failing, "; "))
			}
			b.WriteString("\n")
			switch {
			case wantOK && !ok:
				bad = append(bad, fmt.Sprintf("%s is not ready: %s %s", n.Name, status, strings.Join(failing, "; ")))
			case !wantOK && ok:
				bad = append(bad, fmt.Sprintf("%s is still ready", n.Name))
			}
		}
		if len(bad) > 0 {
			return b.String(), errors.New(strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}

// logLines checks a node's twilld log (or every running node's) for lines
// that contain text: exactly count of them, or at least one when count is
// nil. Only the netns driver keeps the log where this machine reads it.
func (p *play) logLines(ctx context.Context, node, text string, count *int, within time.Duration) (string, map[string]any, error) {
	if lab, ok := p.c.(interface{ Driver() string }); !ok || lab.Driver() != "netns" {
		return "", nil, fmt.Errorf("log: %w by this cluster (only the netns driver keeps twilld's log on this machine)", errors.ErrUnsupported)
	}
	nodes, err := p.targetNodes(node)
	if err != nil {
		return "", nil, err
	}
	want := "at least 1"
	if count != nil {
		want = fmt.Sprint(*count)
	}
	detail, err := retry(ctx, within, func() (string, error) {
		var b strings.Builder
		var bad []string
		for _, n := range nodes {
			data, err := os.ReadFile(n.LogPath)
			if err != nil {
				return "", fmt.Errorf("read %s's log: %w", n.Name, err)
			}
			var hits []string
			for _, l := range strings.Split(string(data), "\n") {
				if strings.Contains(l, text) {
					hits = append(hits, l)
				}
			}
			fmt.Fprintf(&b, "%s: %d lines with %q\n", n.Name, len(hits), text)
			for _, h := range hits {
				fmt.Fprintf(&b, "  %s\n", h)
			}
			if (count == nil && len(hits) == 0) || (count != nil && len(hits) != *count) {
				bad = append(bad, fmt.Sprintf("%s's log has %d lines with %q, want %s", n.Name, len(hits), text, want))
			}
		}
		if len(bad) > 0 {
			return b.String(), errors.New(strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}
