// Package web is twilld's HTTP face: the dashboard (html/template pages
// with go:embed assets, live through server-sent events), the JSON API
// under /api/v1/, Prometheus /metrics, and /livez and /readyz.
//
// It reads the daemon's status snapshots through Source and keeps only what
// it derives from them (a short history of counter samples for rates, and
// what peers' dashboards answered). It must not reach into the daemon's
// internals, and nothing it serves changes the node's state unless the
// operator set an API token.
package web
