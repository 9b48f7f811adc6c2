package lease

import (
	"context"
	"errors"
)

// Assigner is a Registry that assigns each node its subnet itself instead of
// letting nodes allocate one: the Kubernetes API, where the subnet is the
// node's spec.podCIDR. Acquire then claims the assigned subnet (Claim) and
// allocates nothing; the Keeper, the Watcher and the daemon stay as they are.
type Assigner interface {
	// Claim returns the node's assigned lease, publishing req.Attrs on it.
	// While nothing is assigned yet it returns a *PendingError; an
	// assignment that can never be used (outside req.Config's network) is an
	// error marked Permanent.
	Claim(ctx context.Context, req Request) (Lease, error)
}

// Completer is a Registry that is told when the node is set up with its
// lease (the backend holds it, the subnet file is written): the Kubernetes
// registry then sets the node's NetworkUnavailable condition to False.
type Completer interface {
	Complete(ctx context.Context, l Lease) error
}

// PendingError says that the store has no subnet for the node yet, and one
// may come: the Kubernetes node has no podCIDR. The Keeper waits, saying
// Reason, instead of failing.
type PendingError struct {
	// Reason says what is missing and what sets it.
	Reason string
	// Wake, if not nil, is closed when something changed that may end the
	// wait (the node object changed); the wait is retried at once then.
	Wake <-chan struct{}
}

func (e *PendingError) Error() string { return e.Reason }

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that no retry can fix, so that the Keeper
// returns it rather than retrying: a subnet assigned outside the network.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// Refusal is a lease a Registry holds back from List and Watch, and why:
// on Kubernetes, a Node whose pod CIDRs are another, older Node's (a
// subnet routes to one node only).
type Refusal struct {
	Lease  Lease
	Reason string
}

// Refuser is a Registry that holds leases back; the daemon reports them as
// it reports the peers its backend does not route to.
type Refuser interface {
	// Refused returns the leases held back now, in subnet order.
	Refused() []Refusal
}
