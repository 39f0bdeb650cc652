//go:build !xla

package xla

import (
	"errors"

	"github.com/gomlx/gomlx/backends"
)

// errNoXLA is returned for the xla backends in builds without the xla tag.
var errNoXLA = errors.New("this binary was built without XLA support (rebuild with -tags xla and install a PJRT plugin)")

// xlaPluginAvailable reports whether a PJRT plugin can be used; never in a
// build without the xla tag.
func xlaPluginAvailable() (string, bool) { return "", false }

func newXLABackend(plugin string) (backends.Backend, error) { return nil, errNoXLA }
