package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Metric names, as they appear in Path.Samples and the table.
const (
	TCP1       = "tcp1_gbps"    // iperf3, one TCP stream, cubic
	TCP4       = "tcp4_gbps"    // iperf3, four TCP streams, cubic
	PingAvg    = "ping_avg_ms"  // ping round trip, mean
	PingP99    = "ping_p99_ms"  // ping round trip, 99th percentile
	UDP64      = "udp64_kpps"   // iperf3 -u, 64-byte datagrams received per second
	UDP1400    = "udp1400_kpps" // iperf3 -u, 1400-byte datagrams received per second
	CPUPerGB   = "cpu_s_per_gb" // CPU seconds of the path's userspace process(es) per GB carried (one TCP stream)
	metricsCSV = "tcp1_gbps,tcp4_gbps,ping_avg_ms,ping_p99_ms,udp64_kpps,udp1400_kpps,cpu_s_per_gb"
)

// Metrics in table order.
var Metrics = strings.Split(metricsCSV, ",")

// higherIsBetter says which way a metric goes, for the ratio column.
func higherIsBetter(m string) bool { return !strings.HasSuffix(m, "_ms") && m != CPUPerGB }

// Report is one benchmark run.
type Report struct {
	Started  time.Time `json:"started"`
	Machine  Machine   `json:"machine"`
	Rounds   int       `json:"rounds"`
	Duration string    `json:"duration"` // of each iperf3 run
	// Baseline is the path the ratios are taken to (kernel vxlan).
	Baseline string  `json:"baseline"`
	Paths    []*Path `json:"paths"`
}

// Machine says where the run happened.
type Machine struct {
	CPU    string `json:"cpu"`
	CPUs   int    `json:"cpus"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
}

// Path is one way pod traffic can take, and what was measured on it.
type Path struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Samples holds every round's value per metric.
	Samples map[string][]float64 `json:"samples"`
	// Median per metric; Ratio per metric: Median over the baseline's.
	Median map[string]float64 `json:"median"`
	// Failures are measurements that failed (their samples are missing).
	Failures []string           `json:"failures,omitempty"`
	Ratio    map[string]float64 `json:"ratio_to_baseline"`
}

func (p *Path) add(metric string, v float64) {
	if p.Samples == nil {
		p.Samples = map[string][]float64{}
	}
	p.Samples[metric] = append(p.Samples[metric], v)
}

// median of xs (NaN for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile of xs (p in 0..100), nearest rank.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// summarize computes medians and ratios to the baseline path.
func (r *Report) summarize() {
	var base *Path
	for _, p := range r.Paths {
		p.Median = map[string]float64{}
		for m, xs := range p.Samples {
			p.Median[m] = median(xs)
		}
		if p.Name == r.Baseline {
			base = p
		}
	}
	for _, p := range r.Paths {
		p.Ratio = map[string]float64{}
		if base == nil {
			continue
		}
		for m, v := range p.Median {
			if b, ok := base.Median[m]; ok && b != 0 && !math.IsNaN(b) && !math.IsNaN(v) {
				p.Ratio[m] = v / b
			}
		}
	}
}

// WriteTable prints the medians, each with its ratio to the baseline.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "%s, %d CPUs, Linux %s, %s; %d rounds of %s, medians (x = ratio to %s)\n",
		r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, r.Machine.Go, r.Rounds, r.Duration, r.Baseline)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := append([]string{"path"}, Metrics...)
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, p := range r.Paths {
		row := []string{p.Name}
		for _, m := range Metrics {
			v, ok := p.Median[m]
			switch {
			case !ok || math.IsNaN(v):
				row = append(row, "-")
			case r.Baseline != "" && p.Ratio[m] != 0 && higherIsBetter(m):
				row = append(row, fmt.Sprintf("%s (%.2fx)", format(v), p.Ratio[m]))
			default:
				row = append(row, format(v))
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	return tw.Flush()
}

func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// WriteJSON writes the report as indented JSON (NaN medians are left out).
func (r *Report) WriteJSON(w io.Writer) error {
	clean := func(m map[string]float64) {
		for k, v := range m {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				delete(m, k)
			}
		}
	}
	for _, p := range r.Paths {
		clean(p.Median)
		clean(p.Ratio)
	}
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}
