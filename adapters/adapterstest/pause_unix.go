//go:build unix

package adapterstest

import "syscall"

// Pause stops the server's process with SIGSTOP: connections are accepted
// by the kernel but nothing answers, until Resume.
func (r *RedisServer) Pause() error { return r.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (r *RedisServer) Resume() error { return r.cmd.Process.Signal(syscall.SIGCONT) }
