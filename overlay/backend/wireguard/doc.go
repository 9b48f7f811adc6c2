// Package wireguard is the wireguard backend, in flannel's format: each
// node publishes its WireGuard public key in its lease's BackendData
// ({"PublicKey":"<base64>"}), listens on ListenPort (51820), and has one
// WireGuard peer per peer node (that key, endpoint publicIP:ListenPort,
// allowed IPs the peer's subnet). The device is twill-wg, with the own
// subnet's network address as a /32; each peer's subnet is routed to it
// (routing.Router keeps the routes). Pod traffic between nodes is therefore
// encrypted on the underlay: UDP to ListenPort carrying WireGuard messages.
//
// With IPv6 (EnableIPv6) the layout follows Backend.Mode, as flannel's:
// separate adds twill-wg-v6 on ListenPortV6, with the own IPv6 subnet's
// address as a /128 and a peer per node at [PublicIPv6]:ListenPortV6
// (key from BackendV6Data); auto, ipv4 and ipv6 keep one device with both
// subnets' addresses and one peer per node holding both subnets, at the
// endpoint the plan picks. The node publishes its one key in BackendData
// and BackendV6Data.
//
// WireGuard runs in the kernel (configured through wgctrl) where the
// kernel can create wireguard links, and in userspace (wireguard-go in
// twilld: a TUN device and its UDP sockets) where it cannot; the wire
// format is the same either way. Backend.Implementation forces one.
//
// The private key is made on first start and kept, mode 0600, in the state
// directory (StateDir/wireguard.key), so that restarts and reboots keep the
// public key peers know. A peer whose lease goes, or whose key changes, is
// removed from the device in the same lease event.
//
// A peer new to the device is greeted (a keepalive, which starts a
// handshake) rather than left until pod traffic or WireGuard's retry; idle
// peers are greeted again before their handshake is 3 minutes old, and a
// peer past that (or never handshaken 3 minutes after it was learned) is
// reported as not handshaking.
//
// It must not touch devices other than its own, nor keep peers the leases
// no longer name. The package is Linux-only but for the key file and the
// UAPI text.
package wireguard
