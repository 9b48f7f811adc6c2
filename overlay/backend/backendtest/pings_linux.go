package backendtest

import (
	"bytes"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Pings is a ping run in the background from a node's pod, one echo every
// 10 ms (a restart under traffic is measured so).
type Pings struct {
	cmd   *exec.Cmd
	out   bytes.Buffer
	count int
}

// PingResult is what a ping run saw: echoes sent and answered, the longest
// run of unanswered ones, and the longest time between two replies (the
// gap in the traffic).
type PingResult struct {
	Sent, Received, LongestLoss int
	Gap                         time.Duration
}

// Lost is how many echoes got no reply.
func (r PingResult) Lost() int { return r.Sent - r.Received }

// StartPings starts count echoes from n's pod to dst, one every 10 ms
// (each waiting at most 1 s for its reply). It is stopped when the test
// ends, if Wait was not called.
func StartPings(tb testing.TB, n *Node, dst netip.Addr, count int) *Pings {
	tb.Helper()
	p := &Pings{count: count}
	p.cmd = exec.Command("ip", "netns", "exec", n.Pod, "ping", "-n", "-D", "-i", "0.01", "-c", strconv.Itoa(count),
		"-W", "1", dst.String())
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start ping from %s: %v", n.Pod, err)
	}
	tb.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

var replyLine = regexp.MustCompile(`\[(\d+\.\d+)\] .*icmp_seq=(\d+) `)

// Wait waits for the run to end and reads its replies.
func (p *Pings) Wait() PingResult {
	_ = p.cmd.Wait()
	got := map[int]bool{}
	r := PingResult{Sent: p.count}
	var last float64
	for _, m := range replyLine.FindAllSubmatch(p.out.Bytes(), -1) {
		ts, _ := strconv.ParseFloat(string(m[1]), 64)
		seq, _ := strconv.Atoi(string(m[2]))
		got[seq] = true
		if last != 0 {
			r.Gap = max(r.Gap, time.Duration((ts-last)*float64(time.Second)))
		}
		last = ts
	}
	r.Received = len(got)
	run := 0
	for seq := 1; seq <= p.count; seq++ {
		if got[seq] {
			run = 0
			continue
		}
		run++
		r.LongestLoss = max(r.LongestLoss, run)
	}
	return r
}
