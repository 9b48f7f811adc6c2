// Package web is twilld's HTTP face: the dashboard (html/template pages
// with go:embed assets, live through server-sent events), the JSON API
// under /api/v1/, Prometheus /metrics, and /livez and /readyz.
//
// It reads the daemon's status snapshots (overlay/status) through Source,
// serves the wire types of web/api, and keeps only what it derives from
// them (a short history of counter samples for rates, and what peers'
// dashboards answered). It must not reach into the daemon's internals nor
// import the daemon or a backend (so it links no etcd client, nftables or
// eBPF; a test holds it to that), and nothing it serves changes the node's
// state unless the operator set an API token.
package web
