// Package bench measures the ways pod traffic can take between two nodes,
// in one run on one machine, so that their ratios mean something: the
// underlay itself, host-gw, a vxlan device made by hand (the baseline),
// twill's vxlan, twill's udp with offloads on and off, and a reference
// tunnel that moves one packet per system call as flannel's udp backend
// does. Every path gets its own vmtest netns lab (2 nodes, a pod each;
// twilld runs as a real process); the measurements are iperf3 TCP with 1
// and 4 streams (cubic), ping (mean and 99th percentile), iperf3 UDP
// packet rates with 64 and 1400-byte datagrams, and the CPU seconds per GB
// of the userspace processes that carry the packets (both twilld for the
// twill paths, the bench process for the in-process reference tunnel).
// Rounds are interleaved across paths, in the given order in even rounds
// and reversed in odd ones (so no path is always first); the report keeps
// every sample and gives medians and ratios to the baseline, as a table
// and as JSON.
//
// It must not change the host's namespace (labs are made without host
// access) and stops only the processes it started. It is Linux-only and
// needs root and iperf3.
package bench
