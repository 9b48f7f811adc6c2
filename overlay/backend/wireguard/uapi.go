package wireguard

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// uapiSet is cfg as the text of a UAPI "set" operation (wireguard-go's
// IpcSet): keys in hex, one key=value a line.
func uapiSet(cfg wgtypes.Config) string {
	var sb strings.Builder
	kv := func(k, v string) { sb.WriteString(k + "=" + v + "\n") }
	if cfg.PrivateKey != nil {
		kv("private_key", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		kv("listen_port", strconv.Itoa(*cfg.ListenPort))
	}
	if cfg.FirewallMark != nil {
		kv("fwmark", strconv.Itoa(*cfg.FirewallMark))
	}
	if cfg.ReplacePeers {
		kv("replace_peers", "true")
	}
	for _, p := range cfg.Peers {
		kv("public_key", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			kv("remove", "true")
			continue
		}
		if p.UpdateOnly {
			kv("update_only", "true")
		}
		if p.PresharedKey != nil {
			kv("preshared_key", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			kv("endpoint", p.Endpoint.String())
		}
		if p.PersistentKeepaliveInterval != nil {
			kv("persistent_keepalive_interval", strconv.Itoa(int(p.PersistentKeepaliveInterval.Seconds())))
		}
		if p.ReplaceAllowedIPs {
			kv("replace_allowed_ips", "true")
		}
		for _, a := range p.AllowedIPs {
			kv("allowed_ip", a.String())
		}
	}
	return sb.String()
}

// uapiPeers reads the peers out of the text of a UAPI "get" operation.
func uapiPeers(text string) ([]wgtypes.Peer, error) {
	var peers []wgtypes.Peer
	var p *wgtypes.Peer
	var sec, nsec int64
	flush := func() {
		if p != nil {
			if sec != 0 || nsec != 0 {
				p.LastHandshakeTime = time.Unix(sec, nsec)
			}
			peers = append(peers, *p)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		if k == "public_key" {
			flush()
			p = &wgtypes.Peer{}
			err = hexKey(v, &p.PublicKey)
		} else if p != nil {
			switch k {
			case "preshared_key":
				err = hexKey(v, &p.PresharedKey)
			case "endpoint":
				var ap netip.AddrPort
				if ap, err = netip.ParseAddrPort(v); err == nil {
					p.Endpoint = net.UDPAddrFromAddrPort(ap)
				}
			case "allowed_ip":
				var pf netip.Prefix
				if pf, err = netip.ParsePrefix(v); err == nil {
					p.AllowedIPs = append(p.AllowedIPs, net.IPNet{IP: pf.Addr().AsSlice(), Mask: net.CIDRMask(pf.Bits(), pf.Addr().BitLen())})
				}
			case "rx_bytes":
				p.ReceiveBytes, err = strconv.ParseInt(v, 10, 64)
			case "tx_bytes":
				p.TransmitBytes, err = strconv.ParseInt(v, 10, 64)
			case "last_handshake_time_sec":
				sec, err = strconv.ParseInt(v, 10, 64)
			case "last_handshake_time_nsec":
				nsec, err = strconv.ParseInt(v, 10, 64)
			case "persistent_keepalive_interval":
				var s int
				s, err = strconv.Atoi(v)
				p.PersistentKeepaliveInterval = time.Duration(s) * time.Second
			case "protocol_version":
				p.ProtocolVersion, err = strconv.Atoi(v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("UAPI %s=%s: %w", k, v, err)
		}
	}
	flush()
	return peers, sc.Err()
}

func hexKey(s string, k *wgtypes.Key) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != wgtypes.KeyLen {
		return fmt.Errorf("not a hex key")
	}
	copy(k[:], b)
	return nil
}
