//go:build !unix

package adapterstest

import "errors"

// Pause is not supported without Unix signals.
func (r *RedisServer) Pause() error { return errors.New("adapterstest: pausing needs SIGSTOP") }

// Resume is not supported without Unix signals.
func (r *RedisServer) Resume() error { return nil }
