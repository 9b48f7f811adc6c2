package kernel

import (
	"github.com/twillnet/twill/overlay/plan"
)

// Drift is how the kernel's state differs from a plan: what is missing (or
// different: the desired entry shows as missing and the kernel's as extra)
// and what is there that the plan does not want.
type Drift struct {
	MissingRoutes, ExtraRoutes       []plan.Route
	MissingNeighbors, ExtraNeighbors []plan.Neighbor
	MissingFDB, ExtraFDB             []plan.FDBEntry
}

// InSync reports whether there is no drift.
func (d Drift) InSync() bool {
	return len(d.MissingRoutes)+len(d.ExtraRoutes)+len(d.MissingNeighbors)+len(d.ExtraNeighbors)+len(d.MissingFDB)+len(d.ExtraFDB) == 0
}

// Compare lists the drift between the plan p and the state s (as Read gives
// it for OwnedDevices(p)).
func Compare(p plan.Plan, s State) Drift {
	var d Drift
	d.MissingRoutes, d.ExtraRoutes = diff(p.Routes, s.Routes, plan.Route.String)
	d.MissingNeighbors, d.ExtraNeighbors = diff(p.Neighbors, s.Neighbors, plan.Neighbor.String)
	d.MissingFDB, d.ExtraFDB = diff(p.FDB, s.FDB, plan.FDBEntry.String)
	return d
}

func diff[T any](want, have []T, key func(T) string) (missing, extra []T) {
	w, h := map[string]bool{}, map[string]bool{}
	for _, x := range want {
		w[key(x)] = true
	}
	for _, x := range have {
		h[key(x)] = true
		if !w[key(x)] {
			extra = append(extra, x)
		}
	}
	for _, x := range want {
		if !h[key(x)] {
			missing = append(missing, x)
		}
	}
	return missing, extra
}
