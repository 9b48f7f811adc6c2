// Package agent is the control channel between a vmtest host and the VMs
// it boots. The guest runs the agent (twillctl vm agent) on a virtio-serial
// port; the host reaches it through QEMU's socket for that port, so the
// channel works whatever happens to the VM's network (a cut underlay, a
// broken overlay, a reboot).
//
// The protocol is one JSON object a line each way. The host sends requests
// with an ID; the agent runs them concurrently and answers each with the
// same ID. A request is "hello" (answered with the VM's boot ID), "exec" (a
// command with its environment and stdin; the answer has its combined
// output and exit status) or "cancel" (kill a running exec). The agent
// trusts its host completely: it must only ever be reachable from the host
// that started the VM, never over a network.
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// PortName is the name of the virtio-serial port the agent serves.
const PortName = "twill.agent"

// MaxOutput is the most output an exec returns; the rest is cut.
const MaxOutput = 8 << 20

// Request is one request to the agent.
type Request struct {
	ID    uint64   `json:"id"`
	Op    string   `json:"op"` // hello, exec, cancel
	Argv  []string `json:"argv,omitempty"`
	Env   []string `json:"env,omitempty"`
	Stdin []byte   `json:"stdin,omitempty"`
}

// Response answers one request.
type Response struct {
	ID     uint64 `json:"id"`
	BootID string `json:"boot_id,omitempty"`
	Output []byte `json:"output,omitempty"`
	Exit   int    `json:"exit"`
	// Error says why the command could not run, or was cancelled.
	Error string `json:"error,omitempty"`
}

// ExitError is a command that ran and exited with a non-zero status.
type ExitError struct {
	Argv []string
	Code int
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: exit status %d", strings.Join(e.Argv, " "), e.Code)
}

// ErrRebooted fails the requests that were running when the VM rebooted.
var ErrRebooted = errors.New("the VM rebooted")

// Client talks to one VM's agent.
type Client struct {
	conn net.Conn
	wmu  sync.Mutex
	enc  *json.Encoder

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan Response
	bootID  string
	err     error // the connection's end
	done    chan struct{}
}

// Dial connects to the agent through QEMU's socket at path. It does not
// wait for the agent; Hello does.
func Dial(ctx context.Context, path string) (*Client, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to the VM's agent socket: %w", err)
	}
	c := &Client{conn: conn, enc: json.NewEncoder(conn), pending: map[uint64]chan Response{}, done: make(chan struct{})}
	go c.read()
	return c, nil
}

// Alive reports whether the connection is still open.
func (c *Client) Alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// Close closes the connection; requests in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) read() {
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 64<<10), 4*MaxOutput)
	for sc.Scan() {
		var r Response
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			continue // noise from a half-written line before a reboot
		}
		c.mu.Lock()
		if r.BootID != "" && c.bootID != "" && r.BootID != c.bootID {
			// The VM came back from a reboot: whatever ran before is gone.
			for id, ch := range c.pending {
				if id != r.ID {
					ch <- Response{ID: id, Error: ErrRebooted.Error()}
					delete(c.pending, id)
				}
			}
		}
		if r.BootID != "" {
			c.bootID = r.BootID
		}
		if ch, ok := c.pending[r.ID]; ok {
			ch <- r
			delete(c.pending, r.ID)
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.err = cmpErr(sc.Err(), io.EOF)
	for id, ch := range c.pending {
		ch <- Response{ID: id, Error: "the agent's connection closed: " + c.err.Error()}
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
}

func cmpErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// call sends a request and waits for its answer; when ctx ends first, the
// agent is asked to cancel it.
func (c *Client) call(ctx context.Context, req Request) (Response, error) {
	ch := make(chan Response, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return Response{}, fmt.Errorf("the agent's connection closed: %w", c.err)
	}
	c.next++
	req.ID = c.next
	c.pending[req.ID] = ch
	c.mu.Unlock()
	c.wmu.Lock()
	err := c.enc.Encode(req)
	c.wmu.Unlock()
	if err != nil {
		c.forget(req.ID)
		return Response{}, fmt.Errorf("send to the agent: %w", err)
	}
	select {
	case r := <-ch:
		if r.Error == ErrRebooted.Error() {
			return r, ErrRebooted
		}
		return r, nil
	case <-ctx.Done():
		c.forget(req.ID)
		if req.Op == "exec" {
			c.wmu.Lock()
			_ = c.enc.Encode(Request{ID: req.ID, Op: "cancel"})
			c.wmu.Unlock()
		}
		return Response{}, ctx.Err()
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Hello waits until the agent answers and returns the VM's boot ID. It
// asks again every half second: an agent that is still booting does not
// see what was sent before it opened its port.
func (c *Client) Hello(ctx context.Context) (string, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		r, err := c.call(actx, Request{Op: "hello"})
		cancel()
		if err == nil && r.BootID != "" {
			return r.BootID, nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("the VM's agent did not answer: %w", ctx.Err())
		}
		select {
		case <-c.done:
			return "", fmt.Errorf("the agent's connection closed: %w", c.err)
		default:
		}
	}
}

// BootID is the boot ID of the last answer seen.
func (c *Client) BootID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bootID
}

// Exec runs argv in the VM and returns its combined output. A non-zero
// exit is an *ExitError, returned with the output.
func (c *Client) Exec(ctx context.Context, argv []string, env []string, stdin []byte) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	r, err := c.call(ctx, Request{Op: "exec", Argv: argv, Env: env, Stdin: stdin})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	if r.Error != "" {
		return r.Output, fmt.Errorf("%s: %s", strings.Join(argv, " "), r.Error)
	}
	if r.Exit != 0 {
		return r.Output, &ExitError{Argv: argv, Code: r.Exit}
	}
	return r.Output, nil
}
