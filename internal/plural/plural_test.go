package plural

import "testing"

func TestCount(t *testing.T) {
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0 pods"}, {1, "1 pod"}, {2, "2 pods"}, {-1, "-1 pod"}, {12, "12 pods"}} {
		if got := Count(tt.n, "pod"); got != tt.want {
			t.Errorf("Count(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	if got := Word(1, "node"); got != "node" {
		t.Errorf("Word(1) = %q", got)
	}
}
