//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package server

import (
	"context"
	"net"
)

// watchClient is a no-op where a non-blocking peek is unavailable: a
// non-streaming request then runs to completion after its client leaves.
func watchClient(ctx context.Context, conn net.Conn, cancel context.CancelFunc) {}
