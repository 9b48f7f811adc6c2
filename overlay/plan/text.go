package plan

import (
	"io"
	"strconv"
	"strings"
)

// String renders the plan as text, one item a line, in the plan's order:
// device, routes, neighbours, FDB, peers, problems. The lines read like
// iproute2's (route ... via ... dev ... onlink); neighbour and FDB entries are
// all permanent, which the text leaves unsaid. Golden files and logs use it.
func (p Plan) String() string {
	var sb strings.Builder
	p.WriteText(&sb)
	return sb.String()
}

// WriteText writes the plan as String renders it.
func (p Plan) WriteText(w io.Writer) error {
	var sb strings.Builder
	sb.WriteString("backend " + p.Backend)
	if p.Device != "" {
		sb.WriteString(" device " + p.Device)
	}
	if p.Device6 != "" {
		sb.WriteString(" device6 " + p.Device6)
	}
	if p.MTU != 0 {
		sb.WriteString(" mtu " + strconv.Itoa(p.MTU))
	}
	sb.WriteString("\n")
	line := func(s string) { sb.WriteString(s + "\n") }
	for _, r := range p.Routes {
		line(r.String())
	}
	for _, n := range p.Neighbors {
		line(n.String())
	}
	for _, f := range p.FDB {
		line(f.String())
	}
	for _, x := range p.Peers {
		line(x.String())
	}
	for _, x := range p.Problems {
		line(x.String())
	}
	_, err := io.WriteString(w, sb.String())
	return err
}
