package vmtest

import (
	"context"
	"errors"

	"github.com/twillnet/twill/internal/capture"
)

// CaptureUnderlay records the frames on every link of the hub namespace
// (the bridge and its ports: the nodes' veths or taps) while during runs.
// A frame forwarded between two nodes is seen on both ports.
func (l *Lab) CaptureUnderlay(_ context.Context, during func() error) ([][]byte, error) {
	hub := l.snapshot().HubNetNS
	if hub == "" {
		return nil, errors.New("the lab has no hub namespace")
	}
	return capture.Frames(hub, "", during)
}
