package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/twillnet/twill/web/api"
)

// bgpSessions checks that every running node's dashboard lists an
// established BGP session with each other running node (the bgp
// backend's node-to-node mesh), asking it with twillctl bgp.
func (p *play) bgpSessions(ctx context.Context, within time.Duration) (string, map[string]any, error) {
	twillctl, _ := filepath.Abs(filepath.Join(p.bin, "twillctl"))
	detail, err := retry(ctx, within, func() (string, error) {
		var b strings.Builder
		var bad []string
		nodes := p.c.Nodes()
		for _, n := range nodes {
			if p.down[n.Name] {
				continue
			}
			out, err := p.c.Exec(ctx, n.NetNS, twillctl, "bgp", "--node", n.DashboardURL, "-o", "json")
			if err != nil {
				return "", fmt.Errorf("twillctl bgp on %s: %v: %s", n.Name, err, lastLine(string(out)))
			}
			var bs api.BGPSessions
			if err := json.Unmarshal(out, &bs); err != nil {
				return "", fmt.Errorf("twillctl bgp on %s: %w", n.Name, err)
			}
			up := map[string]bool{}
			for _, s := range bs.Sessions {
				if s.State == "Established" {
					up[s.Peer] = true
				}
			}
			fmt.Fprintf(&b, "%s: %d sessions, %d established\n", n.Name, len(bs.Sessions), len(up))
			for _, m := range nodes {
				if m.Name != n.Name && !p.down[m.Name] && !up[m.UnderlayIP.String()] {
					bad = append(bad, fmt.Sprintf("%s has no established session with %s (%s)", n.Name, m.Name, m.UnderlayIP))
				}
			}
		}
		if len(bad) > 0 {
			return b.String(), fmt.Errorf("bgp mesh incomplete: %s", strings.Join(bad, "; "))
		}
		return b.String(), nil
	})
	return detail, nil, err
}
