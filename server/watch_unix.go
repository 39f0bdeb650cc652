//go:build linux || darwin || freebsd || netbsd || openbsd

package server

import (
	"context"
	"net"
	"syscall"
	"time"
)

// watchClient cancels a generation whose client has closed its connection.
// fasthttp does not report a disconnect while a handler runs, so the
// connection is polled with a non-consuming, non-blocking peek (MSG_PEEK):
// zero bytes means the peer closed it. Bytes of a pipelined next request are
// left in place. It returns when ctx ends.
func watchClient(ctx context.Context, conn net.Conn, cancel context.CancelFunc) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var buf [1]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		closed := false
		_ = raw.Control(func(fd uintptr) {
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			closed = n == 0 && err == nil
		})
		if closed {
			cancel()
			return
		}
	}
}
