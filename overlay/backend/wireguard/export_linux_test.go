package wireguard

import "time"

// SetStaleAfter shortens how long a peer may go without a handshake, so
// that a test sees a peer that does not answer without waiting 3 minutes.
func (b *Backend) SetStaleAfter(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.staleAfter = d
}

// RefreshHandshakes greets the peers whose handshake would be getting old
// at now, as Run does every 30 s.
func (b *Backend) RefreshHandshakes(now time.Time) { b.refreshHandshakes(now) }
