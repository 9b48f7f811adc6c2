package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// OpenPort opens the guest's end of the virtio-serial port called name.
func OpenPort(name string) (*os.File, error) {
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		f, err := os.OpenFile(filepath.Join("/dev", filepath.Base(d)), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open virtio-serial port %s: %w", name, err)
		}
		return f, nil
	}
	return nil, fmt.Errorf("no virtio-serial port named %s", name)
}

// Serve answers requests on port until ctx ends. A read of nothing means
// the host has no connection open; Serve waits for the next one.
func Serve(ctx context.Context, port io.ReadWriter, log *slog.Logger) error {
	bootID := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		bootID = strings.TrimSpace(string(b))
	}
	s := &server{enc: json.NewEncoder(port), running: map[uint64]context.CancelFunc{}, bootID: bootID, log: log}
	rd := bufio.NewReaderSize(port, 1<<20)
	var line []byte
	for ctx.Err() == nil {
		chunk, err := rd.ReadSlice('\n')
		line = append(line, chunk...)
		switch {
		case err == nil:
			s.handle(ctx, bytes.TrimSpace(line))
			line = line[:0]
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			// No host connected: a partial line is lost with it.
			line = line[:0]
			time.Sleep(100 * time.Millisecond)
		default:
			return fmt.Errorf("read the agent port: %w", err)
		}
	}
	return ctx.Err()
}

type server struct {
	wmu     sync.Mutex
	enc     *json.Encoder
	mu      sync.Mutex
	running map[uint64]context.CancelFunc
	bootID  string
	log     *slog.Logger
}

func (s *server) reply(r Response) {
	r.BootID = s.bootID
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.enc.Encode(r); err != nil {
		s.log.Warn("answer the host", "id", r.ID, "err", err)
	}
}

func (s *server) handle(ctx context.Context, line []byte) {
	if len(line) == 0 {
		return
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		s.log.Warn("a request that is not JSON", "err", err)
		return
	}
	switch req.Op {
	case "hello":
		s.reply(Response{ID: req.ID})
	case "cancel":
		s.mu.Lock()
		if cancel, ok := s.running[req.ID]; ok {
			cancel()
		}
		s.mu.Unlock()
	case "exec":
		ectx, cancel := context.WithCancel(ctx)
		s.mu.Lock()
		s.running[req.ID] = cancel
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.running, req.ID)
				s.mu.Unlock()
				cancel()
			}()
			s.reply(execute(ectx, req))
		}()
	default:
		s.reply(Response{ID: req.ID, Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

// capped keeps the first MaxOutput bytes written to it.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := MaxOutput - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func execute(ctx context.Context, req Request) Response {
	if len(req.Argv) == 0 {
		return Response{ID: req.ID, Error: "exec: no command"}
	}
	cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(os.Environ(), req.Env...)
	cmd.Stdin = bytes.NewReader(req.Stdin)
	var out capped
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so a cancel ends what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A daemon started in the background may hold the output pipe for a
	// moment (until its redirections are done); do not wait long for it.
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) {
		// The command itself exited 0; only the pipe stayed open.
		err = nil
	}
	r := Response{ID: req.ID, Output: out.buf.Bytes()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		r.Error = "cancelled"
	case errors.As(err, &ee) && ee.Exited():
		r.Exit = ee.ExitCode()
	default:
		r.Error = err.Error()
	}
	return r
}
