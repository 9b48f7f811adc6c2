package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc identifies a process the lab started: its PID and its start time
// (field 22 of /proc/PID/stat), so that a reused PID is never mistaken for
// it.
type proc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	// Exe is the path of the binary it runs.
	Exe string `json:"exe"`
}

// procStat returns a process's start time and state letter.
func procStat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return start, f[0][0], nil
}

// alive reports whether p still runs (a zombie whose threads have all
// exited does not).
func (p proc) alive() bool {
	if p.PID <= 0 {
		return false
	}
	start, state, err := procStat(p.PID)
	if err != nil || start != p.Start || state == 'X' {
		return false
	}
	if state == 'Z' {
		// The leader of a killed multi-threaded process turns zombie while
		// its other threads still exit; their shared files (a listening
		// socket, a TUN) are closed only when the last one is gone.
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.PID))
		return err == nil && len(tasks) > 1
	}
	// Before exec the process is "nsenter ..."; after, the binary.
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		return false
	}
	if len(cmd) == 0 {
		return true // in the middle of exec: the start time matched
	}
	argv0, _, _ := bytes.Cut(cmd, []byte{0})
	return string(argv0) == p.Exe || filepath.Base(string(argv0)) == "nsenter"
}

// signal sends sig to p if it is still the process the lab started.
func (p proc) signal(sig syscall.Signal) error {
	if !p.alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.PID, err)
	}
	return nil
}

// waitExit waits until p has gone.
func (p proc) waitExit(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for p.alive() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pid %d (%s) still runs: %w", p.PID, filepath.Base(p.Exe), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// stop sends sig, waits, and kills p if it has not gone within grace.
func (p proc) stop(ctx context.Context, sig syscall.Signal, grace time.Duration) error {
	if err := p.signal(sig); err != nil {
		return err
	}
	if err := p.waitExit(ctx, grace); err == nil || sig == syscall.SIGKILL {
		return err
	}
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	return p.waitExit(ctx, 5*time.Second)
}

// startIn starts exe with args in the network namespace netns, in a session
// of its own (so it outlives the caller), appending its output to logPath.
// It returns the log's size before the start, to look for a ready line in
// what follows. The process stays in this machine's mount namespace
// (nsenter --net, not ip netns exec, whose fresh /sys hides the host's
// bpffs): a udp twilld pins its kernel path there, so that the next one
// takes it over, as on a host.
func startIn(netns, exe string, args []string, logPath string) (proc, int64, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return proc{}, 0, err
	}
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return proc{}, 0, fmt.Errorf("open log: %w", err)
	}
	defer log.Close()
	fi, err := log.Stat()
	if err != nil {
		return proc{}, 0, err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", netns), "--", exe}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return proc{}, 0, fmt.Errorf("start %s in %s: %w", filepath.Base(exe), netns, err)
	}
	// Reap it whenever it ends, so that a stopped process leaves no zombie
	// behind in a long-lived caller.
	go func() { _ = cmd.Wait() }()
	start, _, err := procStat(cmd.Process.Pid)
	if err != nil {
		return proc{}, 0, fmt.Errorf("start %s in %s: %w", filepath.Base(exe), netns, err)
	}
	return proc{PID: cmd.Process.Pid, Start: start, Exe: exe}, fi.Size(), nil
}

// waitLog waits until the log, from offset on, has a line containing
// marker. It fails at once if p ends, with the log's tail.
func waitLog(ctx context.Context, p proc, logPath string, offset int64, marker string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) >= offset && bytes.Contains(b[offset:], []byte(marker)) {
			return nil
		}
		if !p.alive() {
			// One more look: it may have written the line and then ended.
			b, _ = os.ReadFile(logPath)
			return fmt.Errorf("%s (pid %d) ended before it was ready; its log %s ends:\n%s",
				filepath.Base(p.Exe), p.PID, logPath, tail(b[min(int64(len(b)), offset):], 15))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) not ready: %w; its log %s ends:\n%s",
				filepath.Base(p.Exe), p.PID, ctx.Err(), logPath, tail(b[min(int64(len(b)), offset):], 15))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// netnsInode is the inode of a named network namespace.
func netnsInode(name string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", name), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// procsIn lists the processes running twill binaries (by base name) in
// any of the network namespaces with the given inodes. Others (a shell
// someone opened in a node) are returned apart, to be reported.
func procsIn(inodes map[uint64]bool, binaries map[string]bool) (ours []proc, others []string) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue
		}
		// net:[4026532001]
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil || !inodes[ino] {
			continue
		}
		start, state, err := procStat(pid)
		if err != nil || state == 'Z' {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := bytes.Cut(cmd, []byte{0})
		if binaries[filepath.Base(string(argv0))] {
			ours = append(ours, proc{PID: pid, Start: start, Exe: string(argv0)})
		} else {
			others = append(others, fmt.Sprintf("%d (%s)", pid, strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")))
		}
	}
	return ours, others
}
