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
// was. ping runs in the pod with its PID in a file. The end marks the end
// of the watched time with SIGQUIT, on which ping prints how many requests
// it has sent so far; after a drain for late replies, SIGINT makes it print
// its statistics. Every unanswered request sent before the mark is lost, on
// every driver: the count is ping's own, no clock of this machine is held
// against a VM's.

// watchInterval is the ping interval of a watch.
const watchInterval = 10 * time.Millisecond

// watchLimit bounds a watch's ping if no ping-watch-end ends it: ping stops
// after watchLimit/watchInterval requests (at the interval asked for).
const watchLimit = 10 * time.Minute

type pingWatch struct {
	from, to string
	netns    string
	pidFile  string
	cancel   context.CancelFunc
	done     chan struct{}
	out      []byte
	err      error
	// endedEarly says that ping had ended by itself at the end step.
	endedEarly bool
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
	// applet, which has no -D. The limit is a count (-c), not a deadline:
	// with -w, iputils ping ends at the first ICMP error it gets (a node
	// without a route answers Destination Unreachable), and the outage
	// that follows would go uncounted.
	script := fmt.Sprintf("echo $$ > %s; exec /bin/ping -n -D -i %g -c %d %s",
		w.pidFile, watchInterval.Seconds(), int(watchLimit/watchInterval), dst.Addr)
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
	// The watched time ends now, for every watch at once.
	marked := map[string]error{}
	for _, k := range keys {
		marked[k] = p.markWatchEnd(p.watches[k])
	}
	time.Sleep(watchDrain) // see watchDrain
	for _, k := range keys {
		w := p.watches[k]
		delete(p.watches, k)
		p.stopWatch(w)
		if marked[k] != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, marked[k]))
			continue
		}
		r, err := parsePingWatch(string(w.out), w.endedEarly)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		if w.endedEarly {
			// The watched time is not covered to its end.
			errs = append(errs, fmt.Errorf("%s: ping ended by itself after %d requests, before the end step (%v): %s",
				k, r.Sent, w.err, lastLine(string(w.out))))
		}
		fmt.Fprintf(&b, "%s: %s\n", k, r)
		data[k] = map[string]any{"sent": r.SentBeforeEnd, "answered": r.SentBeforeEnd - r.Lost, "lost": r.Lost,
			"drain_sent": r.Sent - r.SentBeforeEnd, "in_flight": r.InFlight, "longest_gap_ms": r.LongestGap.Milliseconds()}
		if maxLost >= 0 && r.Lost > maxLost {
			errs = append(errs, fmt.Errorf("%s lost %d echo requests (at most %d allowed); the longest gap between replies was %v",
				k, r.Lost, maxLost, r.LongestGap.Round(time.Millisecond)))
		}
		// A loss from the start or to the end shows in no gap between
		// replies: with max-gap it fails too.
		if maxGap > 0 && (r.LongestGap > maxGap || r.Unanswered > 0 || r.Leading > 0) {
			errs = append(errs, fmt.Errorf("%s: the longest gap between replies was %v (at most %v allowed), %d requests from the start and %d up to the end got no reply",
				k, r.LongestGap.Round(time.Millisecond), maxGap, r.Leading, r.Unanswered))
		}
	}
	return b.String(), data, errors.Join(errs...)
}

// markWatchEnd ends the watched time of a watch: SIGQUIT makes ping print
// how many requests it has sent (iputils: "R/T packets, ..." on stderr) and
// go on. A ping that ended by itself sent all its requests in the watched
// time.
func (p *play) markWatchEnd(w *pingWatch) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid, err := w.pid(ctx, p)
	if err != nil {
		select {
		case <-w.done:
			w.endedEarly = true
			return nil
		default:
		}
		return fmt.Errorf("mark the end of the watch: %w", err)
	}
	if out, err := p.c.Exec(ctx, w.netns, "kill", "-QUIT", strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("mark the end of the watch: kill -QUIT %d: %w: %s", pid, err, lastLine(string(out)))
	}
	return nil
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
// Requests sent in the drain are not of the watched time: those without a
// reply are in flight, not lost.
const watchDrain = 500 * time.Millisecond

type pingWatchResult struct {
	Sent, Received int
	// SentBeforeEnd is how many requests ping had sent at the end step (its
	// count on SIGQUIT): icmp_seq 1 to SentBeforeEnd are the watched time.
	SentBeforeEnd int
	// Lost counts the requests of the watched time that got no reply, by
	// the end of the drain.
	Lost int
	// InFlight counts the requests sent in the drain that had no reply
	// when ping was interrupted.
	InFlight   int
	LongestGap time.Duration
	// Unanswered counts the lost requests after the last reply of the
	// watched time (a loss still going on when the watch ended):
	// LongestGap cannot show it, having no reply to end it. Leading counts
	// those before the first reply (a loss from the start), which it
	// cannot show either, having no reply to begin it.
	Unanswered, Leading int
}

func (r pingWatchResult) String() string {
	s := fmt.Sprintf("%d sent, %d answered, %d lost", r.SentBeforeEnd, r.SentBeforeEnd-r.Lost, r.Lost)
	switch drain := r.Sent - r.SentBeforeEnd; {
	case r.InFlight > 0:
		s += fmt.Sprintf(" (then %d in the drain, %d of them in flight when ping was interrupted)", drain, r.InFlight)
	case drain > 0:
		s += fmt.Sprintf(" (then %d in the drain, all answered)", drain)
	}
	s += fmt.Sprintf("; longest gap between replies %v", r.LongestGap.Round(time.Millisecond))
	if r.Leading > 0 && r.Leading < r.SentBeforeEnd {
		s += fmt.Sprintf("; the first %d requests got no reply", r.Leading)
	}
	if r.Unanswered > 0 {
		s += fmt.Sprintf("; the last %d requests before the end got no reply", r.Unanswered)
	}
	return s
}

var (
	pingReplyRE = regexp.MustCompile(`^\[(\d+)\.(\d+)\] \d+ bytes from .*icmp_seq=(\d+) `)
	pingStatsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	// pingMarkRE is what iputils ping prints on SIGQUIT: replies/requests.
	// Not anchored to a line: it goes to stderr, which need not keep in
	// step with stdout.
	pingMarkRE = regexp.MustCompile(`(\d+)/(\d+) packets, \d+% loss`)
)

// parsePingWatch reads the output of ping -D: one line per reply with its
// time stamp, the count of requests sent printed at the end step
// (markWatchEnd), then the statistics. endedEarly says that ping ended
// before the end step, so it printed no count and all its requests are of
// the watched time. icmp_seq is not taken modulo 2^16: a watch sends fewer
// requests in watchLimit.
func parsePingWatch(out string, endedEarly bool) (pingWatchResult, error) {
	var r pingWatchResult
	m := pingStatsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("ping printed no statistics: %s", lastLine(out))
	}
	r.Sent, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	switch m := pingMarkRE.FindStringSubmatch(out); {
	case endedEarly:
		r.SentBeforeEnd = r.Sent
	case m == nil:
		return r, fmt.Errorf("ping printed no count of requests at the end step (SIGQUIT): %s", lastLine(out))
	default:
		r.SentBeforeEnd, _ = strconv.Atoi(m[2])
	}
	if r.SentBeforeEnd > r.Sent {
		return r, fmt.Errorf("ping counted %d requests at the end step but %d in all", r.SentBeforeEnd, r.Sent)
	}
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
		switch {
		case seq > r.SentBeforeEnd:
			if !seen[seq] {
				r.InFlight++
			}
		case seen[seq]:
			r.Unanswered = 0
		default:
			r.Lost++
			r.Unanswered++
			if r.Lost == seq {
				r.Leading++
			}
		}
	}
	return r, nil
}
