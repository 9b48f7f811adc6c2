package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// With several labs running, a lab or pod command without --lab says
// which run and how to choose; with one it takes that one.
func TestPickLab(t *testing.T) {
	if got, err := pickLab([]string{"w1"}, ""); err != nil || got != "w1" {
		t.Errorf("one lab: %q, %v", got, err)
	}
	_, err := pickLab([]string{"twill", "w1"}, "twill")
	if err == nil || !strings.Contains(err.Error(), "2 labs run (twill, w1): say which with --lab NAME") {
		t.Errorf("two labs: %v", err)
	}
	if got, err := pickLab(nil, "twill"); err != nil || got != "twill" {
		t.Errorf("none, with a default: %q, %v", got, err)
	}
	if _, err := pickLab(nil, ""); err == nil || !strings.Contains(err.Error(), "no lab runs") {
		t.Errorf("none: %v", err)
	}
}

// --lab is the flag of every lab and pod command; --name still works and
// is not shown.
func TestLabFlag(t *testing.T) {
	for _, args := range [][]string{{"--lab", "x"}, {"--name", "x"}, {"-name=x"}} {
		fs := newFlags("lab status")
		name := labFlag(fs, "twill", "lab name")
		if err := fs.Parse(args); err != nil || *name != "x" {
			t.Errorf("%q: %q, %v", args, *name, err)
		}
	}
	fs := newFlags("lab up")
	labFlag(fs, "twill", "lab name")
	fs.Int("nodes", 3, "number of nodes")
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	fs.Usage()
	if u := usage.String(); !strings.Contains(u, "-lab string") || !strings.Contains(u, `(default "twill")`) || !strings.Contains(u, "-nodes int") || strings.Contains(u, "-name") {
		t.Errorf("usage:\n%s", u)
	}
	// Every lab and pod command takes --lab (too many arguments stop each
	// before it does anything).
	for _, cmd := range []string{"lab up", "lab down", "lab status", "pod add", "pod del", "pod list"} {
		for _, flag := range []string{"--lab", "--name"} {
			err := commands[cmd].run(t.Context(), []string{flag, "twt-no-such-lab", "a", "b", "c"}, io.Discard)
			if err == nil || strings.Contains(err.Error(), "flag provided but not defined") {
				t.Errorf("%s %s: %v", cmd, flag, err)
			}
		}
	}
}
