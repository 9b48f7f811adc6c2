package vmtest

import (
	"strings"
	"testing"
)

// TestValidNode is the one rule for node names, which the scenarios use
// too. The n01, n+1 and n001 cases passed the spec's old check
// (strconv.Atoi of the rest) and failed the scenarios' (an exact name).
func TestValidNode(t *testing.T) {
	for _, tt := range []struct {
		name  string
		nodes int
		want  string // "" accepted; else the whole error
	}{
		{"n1", 1, ""},
		{"n3", 3, ""},
		{"n1", 3, ""},
		{"n38", MaxNodes, ""},
		{"n2", 1, `node "n2": no such node (the lab has n1 only)`},
		{"n4", 3, `node "n4": no such node (the lab has n1..n3)`},
		{"n0", 3, `node "n0": no such node (the lab has n1..n3)`},
		{"n01", 3, `node "n01": no such node (the lab has n1..n3)`},
		{"n001", 3, `node "n001": no such node (the lab has n1..n3)`},
		{"n+1", 3, `node "n+1": no such node (the lab has n1..n3)`},
		{"n-1", 3, `node "n-1": no such node (the lab has n1..n3)`},
		{"N1", 3, `node "N1": no such node (the lab has n1..n3)`},
		{"n1 ", 3, `node "n1 ": no such node (the lab has n1..n3)`},
		{"1", 3, `node "1": no such node (the lab has n1..n3)`},
		{"n", 3, `node "n": no such node (the lab has n1..n3)`},
		{"", 3, `node "": no such node (the lab has n1..n3)`},
		{"twill-n1", 3, `node "twill-n1": no such node (the lab has n1..n3)`},
		{"n1", 0, `node "n1": no such node (the lab has no nodes)`},
	} {
		err := ValidNode(tt.name, tt.nodes)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ValidNode(%q, %d) = %v, want it accepted", tt.name, tt.nodes, err)
		case tt.want != "" && (err == nil || err.Error() != tt.want):
			t.Errorf("ValidNode(%q, %d) = %v, want %q", tt.name, tt.nodes, err, tt.want)
		}
	}
}

// TestSpecNodeNames checks that a spec's node_args and flannel_nodes go by
// ValidNode, and that the error names the field.
func TestSpecNodeNames(t *testing.T) {
	for _, tt := range []struct {
		spec Spec
		want string // "" accepted
	}{
		{Spec{Backend: "vxlan", NodeArgs: map[string][]string{"n1": {"--x"}}}, ""}, // 1 node by default
		{Spec{Backend: "vxlan", Nodes: 1, NodeArgs: map[string][]string{"n1": {"--x"}}}, ""},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"n3": {"--x"}}, FlannelNodes: []string{"n2"}}, ""},
		{Spec{Backend: "vxlan", NodeArgs: map[string][]string{"n2": {"--x"}}}, `node_args: node "n2": no such node (the lab has n1 only)`},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"n4": {"--x"}}}, `node_args: node "n4": no such node (the lab has n1..n3)`},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"n0": {"--x"}}}, `node_args: node "n0": no such node`},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"n01": {"--x"}}}, `node_args: node "n01": no such node`},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"n+1": {"--x"}}}, `node_args: node "n+1": no such node`},
		{Spec{Backend: "vxlan", Nodes: 3, NodeArgs: map[string][]string{"N1": {"--x"}}}, `node_args: node "N1": no such node`},
		{Spec{Backend: "vxlan", Nodes: 2, FlannelNodes: []string{"n3"}}, `flannel_nodes: node "n3": no such node (the lab has n1..n2)`},
		{Spec{Backend: "vxlan", Nodes: 2, FlannelNodes: []string{"n02"}}, `flannel_nodes: node "n02": no such node (the lab has n1..n2)`},
	} {
		_, err := tt.spec.withDefaults()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%+v: %v, want it accepted", tt.spec, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%+v: %v, want an error with %q", tt.spec, err, tt.want)
		}
	}
	// Every bad name is reported, in order.
	_, err := Spec{Backend: "vxlan", Nodes: 2, NodeArgs: map[string][]string{"n9": nil, "n0": nil}}.withDefaults()
	if want := "node_args: node \"n0\": no such node (the lab has n1..n2)\nnode_args: node \"n9\": no such node (the lab has n1..n2)"; err == nil || err.Error() != want {
		t.Errorf("two bad names: %v, want %q", err, want)
	}
}
