package scenarios

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A ping watch pings from one pod to another every 10 ms in the background,
// across the faults played meanwhile, and says at its end how many echo
// requests went unanswered and how long the longest gap between replies
// was. ping runs in the pod with its PID in a file; the end sends it
// SIGINT, so that it prints its statistics, on every driver.

// watchInterval is the ping interval of a watch.
const watchInterval = 10 * time.Millisecond

// watchLimit ends a watch's ping if no ping-watch-end does.
const watchLimit = 10 * time.Minute

type pingWatch struct {
	from, to string
	netns    string
	pidFile  string
	cancel   context.CancelFunc
	done     chan struct{}
	out      []byte
	err      error
}

func watchKey(from, to string) string { return from + "->" + to }

// startPingWatch starts a watch from one pod to another.
func (p *play) startPingWatch(ctx context.Context, from, to string) (string, map[string]any, error) {
	key := watchKey(from, to)
	if _, ok := p.watches[key]; ok {
		return "", nil, fmt.Errorf("a ping watch from %s to %s runs already", from, to)
	}
	src, dst, err := p.podPair(from, to)
	if err != nil {
		return "", nil, err
	}
	w := &pingWatch{from: from, to: to, netns: src.NetNS, done: make(chan struct{}),
		pidFile: fmt.Sprintf("/tmp/twill-ping-watch-%s-%s-%s.pid", p.c.Name(), from, to)}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.cancel = cancel
	// /bin/ping by path: busybox's sh (in the VMs) would run its own ping
	// applet, which has no -D.
	script := fmt.Sprintf("echo $$ > %s; exec /bin/ping -n -D -i %g -w %d %s",
		w.pidFile, watchInterval.Seconds(), int(watchLimit.Seconds()), dst.Addr)
	go func() {
		defer close(w.done)
		w.out, w.err = p.c.Exec(wctx, src.NetNS, "sh", "-c", script)
	}()
	// The watch counts from its first echo request: wait until ping runs.
	if _, err := retry(ctx, 10*time.Second, func() (string, error) {
		_, err := w.pid(ctx, p)
		return "", err
	}); err != nil {
		p.stopWatch(w)
		return "", nil, fmt.Errorf("start ping in %s: %w: %s", from, err, lastLine(string(w.out)))
	}
	p.watches[key] = w
	return fmt.Sprintf("pinging %s (%s) from %s every %v", to, dst.Addr, from, watchInterval), nil, nil
}

// pid reads the PID of the watch's ping.
func (w *pingWatch) pid(ctx context.Context, p *play) (int, error) {
	select {
	case <-w.done:
		return 0, fmt.Errorf("ping ended: %v", w.err)
	default:
	}
	out, err := p.c.Exec(ctx, w.netns, "cat", w.pidFile)
	if err != nil {
		return 0, fmt.Errorf("no PID in %s yet", w.pidFile)
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

// stopWatch interrupts the watch's ping and waits for it to print its
// statistics (killing it after 10 s).
func (p *play) stopWatch(w *pingWatch) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if pid, err := w.pid(ctx, p); err == nil {
		_, _ = p.c.Exec(ctx, w.netns, "kill", "-INT", strconv.Itoa(pid))
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		w.cancel()
		<-w.done
	}
	w.cancel()
	_, _ = p.c.Exec(context.Background(), w.netns, "rm", "-f", w.pidFile)
}

// endPingWatches ends the watch from one pod to another, or every watch,
// and fails if more than maxLost echo requests went unanswered (maxLost
// -1: any number), or with maxGap set if the longest gap between replies
// was longer or the loss went on to the end.
func (p *play) endPingWatches(from, to string, maxLost int, maxGap time.Duration) (string, map[string]any, error) {
	var keys []string
	if from != "" {
		key := watchKey(from, to)
		if _, ok := p.watches[key]; !ok {
			return "", nil, fmt.Errorf("no ping watch from %s to %s runs (start one with ping-watch)", from, to)
		}
		keys = []string{key}
	} else {
		for k := range p.watches {
			keys = append(keys, k)
		}
		slices.Sort(keys)
	}
	if len(keys) == 0 {
		return "", nil, errors.New("no ping watch runs (start one with ping-watch)")
	}
	var b strings.Builder
	var errs []error
	data := map[string]any{}
	time.Sleep(watchDrain) // see watchDrain
	for _, k := range keys {
		w := p.watches[k]
		delete(p.watches, k)
		p.stopWatch(w)
		r, err := parsePingWatch(string(w.out))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", k, r)
		data[k] = map[string]any{"sent": r.Sent, "received": r.Received, "lost": r.Lost, "longest_gap_ms": r.LongestGap.Milliseconds()}
		if maxLost >= 0 && r.Lost > maxLost {
			errs = append(errs, fmt.Errorf("%s lost %d echo requests (at most %d allowed); the longest gap between replies was %v",
				k, r.Lost, maxLost, r.LongestGap.Round(time.Millisecond)))
		}
		if maxGap > 0 && (r.LongestGap > maxGap || r.Unanswered > 0) {
			errs = append(errs, fmt.Errorf("%s: the longest gap between replies was %v (at most %v allowed), and %d requests before the end got no reply",
				k, r.LongestGap.Round(time.Millisecond), maxGap, r.Unanswered))
		}
	}
	return b.String(), data, errors.Join(errs...)
}

// endAllWatches stops the watches a scenario left running.
func (p *play) endAllWatches() {
	for k, w := range p.watches {
		p.stopWatch(w)
		delete(p.watches, k)
	}
}

// watchDrain is how long a watch goes on pinging after its end step before
// ping is interrupted (which prints its statistics at once, without waiting
// for replies): the replies to the last requests of the watched time may
// take a round trip longer than the interval (a VM under load: 80 ms seen).
// Requests sent in the drain that got no reply before the end are in flight,
// not lost; those of the watched time are lost.
const watchDrain = 500 * time.Millisecond

type pingWatchResult struct {
	Sent, Received int
	// Lost counts the echo requests without a reply, but for those in
	// flight when ping was interrupted.
	Lost int
	// InFlight counts the requests after the last reply, sent in the
	// drain (at most watchDrain's worth), that had no reply yet.
	InFlight   int
	LongestGap time.Duration
	// Unanswered counts the requests after the last reply that got none
	// (a loss still going on when the watch ended): LongestGap cannot show
	// it, having no reply to end it.
	Unanswered int
}

func (r pingWatchResult) String() string {
	s := fmt.Sprintf("%d sent, %d received, %d lost", r.Sent, r.Received, r.Lost)
	if r.InFlight > 0 {
		s += fmt.Sprintf(" (and %d in flight when the watch ended)", r.InFlight)
	}
	s += fmt.Sprintf("; longest gap between replies %v", r.LongestGap.Round(time.Millisecond))
	if r.Unanswered > 0 {
		s += fmt.Sprintf("; the last %d requests before the end got no reply", r.Unanswered)
	}
	return s
}

var (
	pingReplyRE = regexp.MustCompile(`^\[(\d+)\.(\d+)\] \d+ bytes from .*icmp_seq=(\d+) `)
	pingStatsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
)

// parsePingWatch reads the output of ping -D: one line per reply with its
// time stamp, then the statistics.
func parsePingWatch(out string) (pingWatchResult, error) {
	var r pingWatchResult
	m := pingStatsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("ping printed no statistics: %s", lastLine(out))
	}
	r.Sent, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	seen := map[int]bool{}
	var last time.Time
	for _, line := range strings.Split(out, "\n") {
		m := pingReplyRE.FindStringSubmatch(line)
		if m == nil || strings.Contains(line, "(DUP!)") {
			continue
		}
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		frac := (m[2] + "000000")[:6]
		usec, _ := strconv.ParseInt(frac, 10, 64)
		t := time.Unix(sec, usec*1000)
		if !last.IsZero() && t.Sub(last) > r.LongestGap {
			r.LongestGap = t.Sub(last)
		}
		last = t
		seq, _ := strconv.Atoi(m[3])
		seen[seq] = true
	}
	for seq := 1; seq <= r.Sent; seq++ {
		if seen[seq] {
			r.Unanswered = 0
			continue
		}
		r.Lost++
		r.Unanswered++
	}
	// The trailing unanswered requests sent in the drain are in flight.
	r.InFlight = min(r.Unanswered, int(watchDrain/watchInterval))
	r.Lost -= r.InFlight
	r.Unanswered -= r.InFlight
	return r, nil
}
