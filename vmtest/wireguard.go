package vmtest

import "time"

// VMFlannelKeyFile is flanneld's WireGuard private key in a qemu lab's VM:
// flannel's default (WIREGUARD_KEY_FILE unset), on the VM's tmpfs, so a
// flanneld restart keeps it and a reboot does not.
const VMFlannelKeyFile = "/run/flannel/wgkey"

// WireGuardDevice is a WireGuard device as `twillctl vm wg-show` prints it
// (one JSON object): what `wg show` says of it, read from the kernel (or a
// userspace device's UAPI socket) with wgctrl, for the scenarios to hold
// against the leases on twill's nodes and flannel's alike. The images have
// no wg(8).
type WireGuardDevice struct {
	Name string `json:"name"`
	// Type is wgctrl's: "Linux kernel" or "userspace".
	Type       string          `json:"type"`
	PublicKey  string          `json:"public_key"`
	ListenPort int             `json:"listen_port"`
	Peers      []WireGuardPeer `json:"peers"`
}

// WireGuardPeer is one peer of a WireGuardDevice.
type WireGuardPeer struct {
	PublicKey string `json:"public_key"`
	// PresharedKey says whether the peer has one (never the key).
	PresharedKey bool     `json:"preshared_key"`
	Endpoint     string   `json:"endpoint"`
	AllowedIPs   []string `json:"allowed_ips"`
	// LastHandshake is zero before the first.
	LastHandshake    time.Time `json:"last_handshake,omitzero"`
	KeepaliveSeconds int       `json:"keepalive_seconds,omitempty"`
	ReceiveBytes     int64     `json:"rx_bytes"`
	TransmitBytes    int64     `json:"tx_bytes"`
	ProtocolVersion  int       `json:"protocol_version,omitempty"`
}
