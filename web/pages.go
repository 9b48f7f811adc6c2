package web

import (
	"bytes"
	"cmp"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/twillnet/twill/overlay/netconf"
	"github.com/twillnet/twill/overlay/plan"
	"github.com/twillnet/twill/overlay/status"
	"github.com/twillnet/twill/web/api"
)

//go:embed assets/*.html
var templateFS embed.FS

//go:embed assets/static
var staticFS embed.FS

func staticFiles() http.Handler {
	sub, _ := fs.Sub(staticFS, "assets/static")
	fileServer := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Files only: a directory (the folder itself, "", "x/") is not listed.
		if f, err := fs.Stat(sub, strings.TrimSuffix(r.URL.Path, "/")); r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") || err != nil || f.IsDir() {
			writeText(w, http.StatusNotFound, "not found\n")
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=300")
		fileServer.ServeHTTP(w, r)
	})
}

// pageNames are the dashboard's pages, in menu order, and the live regions
// each one has (besides "status", which all have).
var pageRegions = map[string][]string{
	"overview": {"node", "topology", "cluster"},
	"leases":   {"leases"},
	"routes":   {"routes"},
	"tunnels":  {"tunnels"},
}

type pages struct {
	t map[string]*template.Template
}

func loadPages() (*pages, error) {
	p := &pages{t: map[string]*template.Template{}}
	for name := range pageRegions {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "assets/layout.html", "assets/parts.html", "assets/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parse page %s: %w", name, err)
		}
		p.t[name] = t
	}
	return p, nil
}

// pageData is what a page's templates get.
type pageData struct {
	Page    string
	Version string
	Node    api.NodeInfo
	Now     time.Time
	// OtherProblems are the node's problems that are not about a peer
	// left unrouted (those are listed apart, from Node.PeerProblems).
	OtherProblems []string

	Leases       []api.Lease
	Reservations int

	Routes      api.Routes
	Differences int

	Tunnels []tunnelRow
	Drops   []countRow
	// BGP are the bgp backend's sessions (nil for the other backends).
	BGP []api.BGPSession
	// WireGuard says the tunnels are WireGuard peers (a last handshake
	// column).
	WireGuard bool

	Topology topology
	Cluster  []clusterRow
}

type countRow struct {
	Name  string
	Count uint64
}

type tunnelRow struct {
	api.Tunnel
	Drops []countRow
	Spark sparkline
}

type clusterRow struct {
	api.ClusterNode
	TxRate, RxRate float64
	Ready          bool
	Up, Tunnels    int
}

// build fills the data of one page from a snapshot.
func (s *Server) build(page string, snap status.Snapshot) pageData {
	d := pageData{Page: page, Version: s.opts.Version, Node: s.nodeInfo(snap), Now: time.Now()}
	switch page {
	case "overview":
		for _, p := range d.Node.Problems {
			if !slices.ContainsFunc(snap.Backend.PeerProblems, func(pp plan.Problem) bool { return pp.String() == p }) {
				d.OtherProblems = append(d.OtherProblems, p)
			}
		}
		c := s.cluster(snap)
		d.Topology = layoutTopology(c)
		for _, n := range c.Nodes {
			row := clusterRow{ClusterNode: n}
			if n.Node != nil {
				row.Ready = n.Node.Ready
			}
			for _, t := range n.Tunnels {
				row.TxRate += t.TxBytesPerSecond
				row.RxRate += t.RxBytesPerSecond
				row.Tunnels++
				if t.State == api.StateUp {
					row.Up++
				}
			}
			d.Cluster = append(d.Cluster, row)
		}
	case "leases":
		d.Leases = leaseList(snap, d.Now).Leases
		for _, l := range d.Leases {
			if l.Reservation {
				d.Reservations++
			}
		}
	case "routes":
		d.Routes = routeTable(snap)
		for _, rows := range [][]api.RouteRow{d.Routes.Routes, d.Routes.Neighbors, d.Routes.FDB} {
			for _, r := range rows {
				if r.Status != "ok" {
					d.Differences++
				}
			}
		}
	case "tunnels":
		tl := s.tunnelList(snap, true)
		for _, t := range tl.Tunnels {
			d.Tunnels = append(d.Tunnels, tunnelRow{Tunnel: t, Drops: counts(t.Drops), Spark: newSparkline(t.History)})
		}
		d.Drops = counts(tl.Drops)
		if snap.Backend.BGP != nil {
			d.BGP = bgpSessions(snap).Sessions
		}
		d.WireGuard = snap.Node.BackendType == netconf.TypeWireGuard
	}
	return d
}

func counts(m map[string]uint64) []countRow {
	var out []countRow
	for k, v := range m {
		out = append(out, countRow{k, v})
	}
	slices.SortFunc(out, func(a, b countRow) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (s *Server) page(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := s.pages.t[name].Execute(&buf, s.build(name, s.snapshot())); err != nil {
			s.log.Error("render page", "page", name, "err", err)
			writeText(w, http.StatusInternalServerError, "could not render the page\n")
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(showControls(buf.Bytes()))
	}
}

// showControls writes the control characters of a rendered page (what a
// lease said: Kubernetes annotations may hold any string; html/template
// escapes markup, not these) as visible \x1b, \u0085, so that none reaches
// the browser or a terminal raw. The templates write none but white space.
func showControls(b []byte) []byte {
	isControl := func(r rune) bool { return r != '\n' && r != '\t' && r != '\r' && unicode.IsControl(r) }
	if !bytes.ContainsFunc(b, isControl) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case isControl(r) && r < 0x80:
			out = fmt.Appendf(out, `\x%02x`, r)
		case isControl(r):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// renderRegions renders the live regions of a page.
func (s *Server) renderRegions(name string, snap status.Snapshot) (map[string]string, error) {
	d := s.build(name, snap)
	out := map[string]string{}
	var buf bytes.Buffer
	for _, region := range append([]string{"status"}, pageRegions[name]...) {
		buf.Reset()
		if err := s.pages.t[name].ExecuteTemplate(&buf, "region-"+region, d); err != nil {
			return nil, fmt.Errorf("render region %s of %s: %w", region, name, err)
		}
		out[region] = string(showControls(buf.Bytes()))
	}
	return out, nil
}

// events streams a page's live regions as server-sent events, one
// "update" after every counter sample.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("page")
	if _, ok := pageRegions[name]; !ok {
		writeText(w, http.StatusBadRequest, "want ?page=overview, leases, routes or tunnels\n")
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprintf(w, "retry: 2000\n\n")
	send := func(snap status.Snapshot) error {
		regions, err := s.renderRegions(name, snap)
		if err != nil {
			return err
		}
		data, err := json.Marshal(map[string]any{"regions": regions})
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "event: update\ndata: %s\n\n", data); err != nil {
			return err
		}
		return rc.Flush()
	}
	// Take the tick before the snapshot, so that no sample is missed.
	tick := s.ticked()
	if err := send(s.sampled()); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick:
			tick = s.ticked()
			if err := send(s.sampled()); err != nil {
				return
			}
		}
	}
}

var funcs = template.FuncMap{
	"bytes":    humanBytes,
	"rate":     humanRate,
	"count":    humanCount,
	"duration": humanDuration,
	"secs":     func(f float64) string { return humanDuration(time.Duration(f) * time.Second) },
	"until": func(s string) string {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return ""
		}
		return humanDuration(time.Until(t))
	},
	"ago": func(s string) string {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return "never"
		}
		return humanDuration(time.Since(t)) + " ago"
	},
	"json": func(m json.RawMessage) string {
		var buf bytes.Buffer
		if json.Compact(&buf, m) != nil {
			return string(m)
		}
		return buf.String()
	},
	"args": func(title string, rows []api.RouteRow) map[string]any {
		return map[string]any{"Title": title, "Rows": rows}
	},
	"sum": func(m map[string]uint64) uint64 {
		var n uint64
		for _, v := range m {
			n += v
		}
		return n
	},
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	f, i := float64(n), 0
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i-1])
}

func humanRate(bps float64) string {
	if bps < 0.5 {
		return "0 B/s"
	}
	if bps < 1024 {
		return fmt.Sprintf("%.0f B/s", bps)
	}
	return humanBytes(uint64(bps)) + "/s"
}

func humanCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(c)
	}
	return b.String()
}

func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	days, h, m, s := int(d/(24*time.Hour)), int(d/time.Hour)%24, int(d/time.Minute)%60, int(d/time.Second)%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh %02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// sparkline is a small rate graph drawn as two SVG polylines.
type sparkline struct {
	W, H   int
	Tx, Rx string // polyline points
	RxArea string // polygon under Rx
	Peak   float64
	Empty  bool
}

func newSparkline(h []api.RatePoint) sparkline {
	s := sparkline{W: 160, H: 34}
	if len(h) < 2 {
		s.Empty = true
		return s
	}
	for _, p := range h {
		s.Peak = math.Max(s.Peak, math.Max(p.TxBytesPerSecond, p.RxBytesPerSecond))
	}
	top := math.Max(s.Peak, 1)
	var tx, rx strings.Builder
	step := float64(s.W-2) / float64(len(h)-1)
	for i, p := range h {
		x := 1 + float64(i)*step
		yt := float64(s.H-2) - p.TxBytesPerSecond/top*float64(s.H-4)
		yr := float64(s.H-2) - p.RxBytesPerSecond/top*float64(s.H-4)
		fmt.Fprintf(&tx, "%.1f,%.1f ", x, yt)
		fmt.Fprintf(&rx, "%.1f,%.1f ", x, yr)
	}
	s.Tx, s.Rx = strings.TrimSpace(tx.String()), strings.TrimSpace(rx.String())
	s.RxArea = fmt.Sprintf("1,%d %s %d,%d", s.H-2, s.Rx, s.W-1, s.H-2)
	return s
}

// topology is the cluster picture: nodes as boxes on a circle, tunnels as
// lines between them.
type topology struct {
	W, H     int
	Nodes    []topoNode
	Links    []topoLink
	TooMany  int // nodes left out of the picture
	NodesAll int
}

type topoNode struct {
	X, Y, BoxX, BoxY, BoxW, BoxH int
	Name, Subnet, Class, Note    string
	Why                          string // why this node does not route to it
}

type topoLink struct {
	X1, Y1, X2, Y2 int
	LX, LY         int // label centre
	LW, RX, RY     int // label box width and corner
	State, Label   string
	Title          string
}

// maxTopologyNodes is the most nodes drawn.
const maxTopologyNodes = 24

func layoutTopology(c api.Cluster) topology {
	t := topology{W: 900, H: 420, NodesAll: len(c.Nodes)}
	nodes := c.Nodes
	if len(nodes) > maxTopologyNodes {
		t.TooMany = len(nodes) - maxTopologyNodes
		// Keep this node in the picture.
		selfAt := slices.IndexFunc(nodes, func(n api.ClusterNode) bool { return n.Self })
		kept := slices.Clone(nodes[:maxTopologyNodes])
		if selfAt >= maxTopologyNodes {
			kept[0] = nodes[selfAt]
		}
		nodes = kept
	}
	pos := map[string]int{}
	key := map[string]string{} // a node's IPv6 subnet -> its Subnet
	cx, cy := t.W/2, t.H/2
	rx, ry := float64(t.W)/2-110, float64(t.H)/2-50
	for i, n := range nodes {
		var x, y int
		switch len(nodes) {
		case 1:
			x, y = cx, cy
		case 2:
			x, y = cx-220+440*i, cy
		default:
			a := -math.Pi/2 + 2*math.Pi*float64(i)/float64(len(nodes))
			x, y = cx+int(rx*math.Cos(a)), cy+int(ry*math.Sin(a))
		}
		name := n.Name
		if len([]rune(name)) > 20 {
			name = string([]rune(name)[:19]) + "…"
		}
		class := "node"
		note := ""
		switch {
		case n.Self:
			class += " self"
			note = "this node"
		case n.NotRouted != "":
			class += " unrouted"
			note = "not routed by this node"
		case n.Reachability == "no-answer":
			class += " down"
			note = "no answer"
		case n.Reachability == "unknown":
			note = "no dashboard"
		}
		w, h := 156, 50
		if note != "" {
			h = 62
		}
		if n.NotRouted != "" {
			w = 176
		}
		pos[n.Subnet] = len(t.Nodes)
		if n.IPv6Subnet != "" && n.IPv6Subnet != n.Subnet {
			key[n.IPv6Subnet] = n.Subnet // its IPv6 tunnels join the same link
		}
		t.Nodes = append(t.Nodes, topoNode{X: x, Y: y, BoxX: x - w/2, BoxY: y - h/2, BoxW: w, BoxH: h, Name: name, Subnet: n.Subnet, Class: class, Note: note, Why: n.NotRouted})
	}
	type edge struct {
		state string
		rate  float64
		from  []string
	}
	edges := map[[2]string]*edge{}
	rank := map[string]int{api.StateIdle: 0, api.StateUp: 1, api.StateNotHandshaking: 2, api.StateUnreachable: 3}
	for _, n := range nodes {
		for _, tn := range n.Tunnels {
			peer := cmp.Or(key[tn.Peer], tn.Peer)
			if _, ok := pos[peer]; !ok {
				continue
			}
			k := [2]string{n.Subnet, peer}
			if cmpSubnet(k[0], k[1]) > 0 {
				k[0], k[1] = k[1], k[0]
			}
			e := edges[k]
			if e == nil {
				e = &edge{state: tn.State}
				edges[k] = e
			}
			if rank[tn.State] > rank[e.state] {
				e.state = tn.State
			}
			e.rate = math.Max(e.rate, tn.TxBytesPerSecond+tn.RxBytesPerSecond)
			e.from = append(e.from, n.Name+": "+tn.State)
		}
	}
	keys := make([][2]string, 0, len(edges))
	for k := range edges {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int {
		return cmpSubnet(a[0], b[0])*2 + cmpSubnet(a[1], b[1])
	})
	for _, k := range keys {
		e := edges[k]
		a, b := t.Nodes[pos[k[0]]], t.Nodes[pos[k[1]]]
		label := e.state
		if e.state != api.StateUnreachable && e.state != api.StateNotHandshaking {
			label = humanRate(e.rate)
		}
		slices.Sort(e.from)
		t.Links = append(t.Links, topoLink{
			X1: a.X, Y1: a.Y, X2: b.X, Y2: b.Y, LX: (a.X + b.X) / 2, LY: (a.Y + b.Y) / 2,
			LW: 16 + 7*len(label), RX: (a.X+b.X)/2 - (16+7*len(label))/2, RY: (a.Y+b.Y)/2 - 11, State: e.state, Label: label,
			Title: a.Name + " ↔ " + b.Name + " (" + strings.Join(e.from, "; ") + ")",
		})
	}
	return t
}
