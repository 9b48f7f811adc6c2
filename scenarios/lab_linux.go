package scenarios

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/twillnet/twill/internal/plural"
	"github.com/twillnet/twill/vmtest"
)

// lab brings up the scenario's lab as spec says or, with Attach, opens the
// running lab spec.Name. done releases it and, unless Keep or Attach,
// tears it down.
func (r *Runner) lab(ctx context.Context, spec vmtest.Spec, s *Scenario, log *slog.Logger) (c vmtest.Cluster, done func() error, err error) {
	var l *vmtest.Lab
	if r.Attach {
		l, err = attach(spec.Name, s)
	} else {
		l, err = vmtest.Up(ctx, spec, log)
	}
	if err != nil {
		return nil, nil, err
	}
	done = func() error {
		_ = l.Close()
		if r.Keep || r.Attach {
			return nil
		}
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := vmtest.Down(dctx, spec.Name); err != nil {
			return fmt.Errorf("tear down lab %s: %w", spec.Name, err)
		}
		return nil
	}
	return l, done, nil
}

// attach opens a running lab and checks that it is the cluster the
// scenario asks for.
func attach(lab string, s *Scenario) (*vmtest.Lab, error) {
	c, err := vmtest.Open(lab)
	if err != nil {
		return nil, err
	}
	spec := c.Spec()
	var problems []string
	if n := len(c.Nodes()); n < s.Cluster.Nodes {
		problems = append(problems, fmt.Sprintf("it has %s, the scenario needs %d", plural.Count(n, "node"), s.Cluster.Nodes))
	}
	if s.Cluster.Backend != "" && spec.Backend != s.Cluster.Backend {
		problems = append(problems, fmt.Sprintf("its backend is %s, the scenario's is %s", spec.Backend, s.Cluster.Backend))
	}
	if s.Cluster.IPMasq && !spec.IPMasq {
		problems = append(problems, "the scenario needs --ip-masq")
	}
	if s.Cluster.Outside && !spec.Outside {
		problems = append(problems, "the scenario needs an outside host (--outside)")
	}
	if len(problems) > 0 {
		c.Close()
		return nil, fmt.Errorf("lab %s does not fit scenario %s: %s", lab, s.Name, strings.Join(problems, "; "))
	}
	return c, nil
}
