package wireguard_test

import (
	"encoding/json"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/twillnet/twill/overlay/backend/backendtest"
)

// BenchmarkUserspaceTCP runs one iperf3 TCP stream for 5 s pod to pod over
// userspace WireGuard in this process, so that go test -cpuprofile
// profiles wireguard-go as twilld runs it:
//
//	go test -run '^$' -bench UserspaceTCP -benchtime 1x -cpuprofile cpu.out ./overlay/backend/wireguard
func BenchmarkUserspaceTCP(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3")
	}
	lab := backendtest.New(b, "wgbench", 2)
	rs := lab.Start(b, parse(b, `{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Implementation":"userspace"}}`), stateDirs(b))
	podMTU(b, lab, 1440)
	to := rs[1].Node
	srv := exec.Command("ip", "netns", "exec", to.Pod, "iperf3", "-s", "-1", "-p", "5201")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer srv.Process.Kill()
	time.Sleep(300 * time.Millisecond)
	for b.Loop() {
		cpu0 := cpuTime(b)
		out, err := exec.Command("ip", "netns", "exec", rs[0].Node.Pod, "iperf3", "-c", to.PodIP.String(), "-p", "5201", "-t", "5", "-J", "-C", "cubic").Output()
		if err != nil {
			b.Fatalf("iperf3: %v: %s", err, out)
		}
		cpu := cpuTime(b) - cpu0
		var r struct {
			End struct {
				SumReceived struct {
					Bytes         float64 `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.End.SumReceived.BitsPerSecond/1e9, "Gbit/s")
		// Both nodes' WireGuard runs in this process: its CPU per GB is
		// what the two twillds would spend.
		b.ReportMetric(cpu.Seconds()/(r.End.SumReceived.Bytes/1e9), "cpu-s/GB")
	}
}

// cpuTime is the CPU time this process used so far (user and system).
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
