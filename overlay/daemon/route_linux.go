package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// procNet is the calling thread's view of /proc/net (a thread that entered
// another network namespace sees that namespace's routes there; /proc/net
// shows the process's first thread's).
const procNet = "/proc/thread-self/net/"

// defaultRouteInterface is the interface of the default route with the
// lowest metric: the IPv4 one, or with v6 the IPv6 one.
func defaultRouteInterface(v6 bool) (string, error) {
	file, parse := "route", defaultRoute4
	if v6 {
		file, parse = "ipv6_route", defaultRoute6
	}
	f, err := os.Open(procNet + file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return parse(f)
}

// defaultRoute4 reads /proc/net/route: the interface of the IPv4 default
// route with the lowest metric.
func defaultRoute4(r io.Reader) (string, error) {
	best, bestMetric := "", -1
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[1] != "00000000" || fields[7] != "00000000" {
			continue
		}
		metric, err := strconv.Atoi(fields[6])
		if err != nil {
			continue
		}
		if bestMetric < 0 || metric < bestMetric {
			best, bestMetric = fields[0], metric
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read /proc/net/route: %w", err)
	}
	if best == "" {
		return "", errors.New("no IPv4 default route")
	}
	return best, nil
}

// defaultRoute6 reads /proc/net/ipv6_route (destination, its length,
// source, its length, next hop, metric, refcount, use, flags, device; in
// hex): the interface of the IPv6 default route with the lowest metric,
// leaving out unreachable routes and loopback.
func defaultRoute6(r io.Reader) (string, error) {
	const rtfUp, rtfReject = 0x1, 0x200
	best, bestMetric := "", uint64(0)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || strings.Trim(f[0], "0") != "" || f[1] != "00" || f[9] == "lo" {
			continue
		}
		metric, err1 := strconv.ParseUint(f[5], 16, 32)
		flags, err2 := strconv.ParseUint(f[8], 16, 32)
		if err1 != nil || err2 != nil || flags&rtfUp == 0 || flags&rtfReject != 0 {
			continue
		}
		if best == "" || metric < bestMetric {
			best, bestMetric = f[9], metric
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read /proc/net/ipv6_route: %w", err)
	}
	if best == "" {
		return "", errors.New("no IPv6 default route")
	}
	return best, nil
}
