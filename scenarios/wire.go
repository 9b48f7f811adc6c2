package scenarios

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/twillnet/twill/internal/packet"
	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/vmtest"
)

// wireMarkers is how many marked datagrams underlay-encrypted sends.
const wireMarkers = 20

// underlayEncrypted sends marked UDP datagrams from pod from to pod to
// while the underlay is captured (on the bridge's ports, from this
// machine), and passes only if they reached the pod and the marker is
// nowhere on the underlay in plain text. On wireguard it also wants at
// least as many WireGuard data messages (type 4) from from's node to to's
// node's port (wireGuardEndpoint).
//
// With family ipv6 the datagrams go between the pods' IPv6 addresses.
func (p *play) underlayEncrypted(ctx context.Context, from, to, family string) (string, map[string]any, error) {
	capt, ok := p.c.(vmtest.UnderlayCapturer)
	if !ok {
		return "", nil, fmt.Errorf("underlay-encrypted: %w by this cluster (its underlay cannot be captured from here)", errors.ErrUnsupported)
	}
	src, dst, err := p.podPair(from, to)
	if err != nil {
		return "", nil, err
	}
	srcNode, err := p.c.Node(src.Node)
	if err != nil {
		return "", nil, err
	}
	dstNode, err := p.c.Node(dst.Node)
	if err != nil {
		return "", nil, err
	}
	marker := []byte(fmt.Sprintf("twill-underlay-marker-%s-%d", p.c.Name(), time.Now().UnixNano()))
	target := netip.AddrPortFrom(addrIn(dst, family), 7777).String()
	markerHex := hex.EncodeToString(marker)
	// The receiver counts the datagrams (the pod's Udp counters would
	// count one for datagrams that userspace WireGuard coalesced).
	var recvOut []byte
	var recvErr error
	received := make(chan struct{})
	go func() {
		defer close(received)
		recvOut, recvErr = p.c.Exec(ctx, dst.NetNS, p.twillctl(), "vm", "recv-udp", "--listen", target, "--hex", markerHex,
			"--count", strconv.Itoa(wireMarkers), "--timeout", "20s")
	}()
	// The receiver may take a while to listen (a VM under TCG): the
	// datagrams go again, every second, until it has counted them all.
	sent := 0
	frames, err := capt.CaptureUnderlay(ctx, func() error {
		for {
			select {
			case <-received:
				return nil
			case <-time.After(time.Second):
			}
			out, err := p.c.Exec(ctx, src.NetNS, p.twillctl(), "vm", "send-udp", "--to", target, "--hex", markerHex, "--count", strconv.Itoa(wireMarkers))
			if err != nil {
				return fmt.Errorf("send from %s: %v: %s", from, err, lastLine(string(out)))
			}
			sent += wireMarkers
		}
	})
	<-received
	if err != nil {
		return "", nil, err
	}
	if recvErr != nil {
		return "", nil, fmt.Errorf("receive in %s: %v: %s", to, recvErr, lastLine(string(recvOut)))
	}
	var reached, expected int
	if _, err := fmt.Sscanf(lastLine(string(recvOut)), "received %d of %d", &reached, &expected); err != nil {
		return "", nil, fmt.Errorf("receive in %s: %q says no count", to, lastLine(string(recvOut)))
	}
	srcIP, dstIP, port := p.wireGuardEndpoint(srcNode, dstNode, family)
	plain, wgData := 0, 0
	for _, f := range frames {
		if bytes.Contains(f, marker) {
			plain++
		}
		if from, to, payload, ok := packet.UDPOfFrame(f); ok && from.Addr() == srcIP && to.Addr() == dstIP &&
			to.Port() == port && packet.IsWireGuardData(payload) {
			wgData++
		}
	}
	detail := fmt.Sprintf("%d marked datagrams %s -> %s:7777: %d reached the pod (it counts %d); %d frames captured on the underlay, %d with the marker in plain text, %d WireGuard data messages %s -> %s:%d",
		sent, addrIn(src, family), addrIn(dst, family), reached, wireMarkers, len(frames), plain, wgData, srcIP, dstIP, port)
	data := map[string]any{"sent": sent, "reached_pod": reached, "frames": len(frames), "plaintext_frames": plain, "wireguard_data_messages": wgData}
	var errs []error
	if reached < wireMarkers {
		errs = append(errs, fmt.Errorf("%d of %d marked datagrams reached %s", reached, wireMarkers, to))
	}
	if plain > 0 {
		errs = append(errs, fmt.Errorf("%d frames on the underlay carry the marker in plain text", plain))
	}
	if p.backend == netconf.TypeWireGuard && wgData < wireMarkers {
		errs = append(errs, fmt.Errorf("%d WireGuard data messages from %s to %s:%d on the underlay, want at least %d", wgData, srcIP, dstIP, port, wireMarkers))
	}
	return detail, data, errors.Join(errs...)
}

// wireGuardEndpoint is where WireGuard carries pod traffic of a family
// between two nodes, by the backend's Mode: the IPv6 underlay and
// ListenPortV6 for IPv6 in Mode separate, the IPv6 underlay and
// ListenPort in Mode ipv6, else the IPv4 underlay and ListenPort (Mode
// ipv4, and auto between the lab's nodes, whose IPv4 addresses are
// private and IPv6 ones unique local: flannel's choice is then IPv4).
func (p *play) wireGuardEndpoint(src, dst vmtest.Node, family string) (netip.Addr, netip.Addr, uint16) {
	b := netconf.Backend{Mode: "separate", ListenPort: netconf.DefaultWireGuardPort, ListenPortV6: netconf.DefaultWireGuardPortV6}
	if p.conf != nil && p.conf.Backend.Type == netconf.TypeWireGuard {
		b = p.conf.Backend
	}
	switch {
	case b.Mode == "separate" && family == ipv6:
		return src.UnderlayIP6, dst.UnderlayIP6, uint16(b.ListenPortV6)
	case b.Mode == "ipv6":
		return src.UnderlayIP6, dst.UnderlayIP6, uint16(b.ListenPort)
	}
	return src.UnderlayIP, dst.UnderlayIP, uint16(b.ListenPort)
}
