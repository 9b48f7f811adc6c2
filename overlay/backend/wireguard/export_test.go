package wireguard

import "time"

// SetStaleAfter shortens how long a peer may go without a handshake, so
// that a test sees a peer that does not answer without waiting 3 minutes.
func (b *Backend) SetStaleAfter(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.staleAfter = d
}
