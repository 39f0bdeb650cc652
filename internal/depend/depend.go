// Package depend classifies failures of the server's external dependencies
// (Redis today) so that every layer reports them the same way: an error that
// wraps ErrUnavailable and names the dependency, which the HTTP server maps to
// 503 service_unavailable.
//
// Packages that talk to a dependency (adapters, training) pass the errors of
// their calls through Classify: connectivity failures (refused or reset
// connections, timeouts, a closed client, an exhausted pool, a server that is
// loading or has lost its master) become Unavailable errors, and everything
// else (a missing key, a bad command, corrupt data) passes through unchanged.
package depend

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// ErrUnavailable is wrapped by every error that reports an unreachable,
// stalled or not-ready dependency.
var ErrUnavailable = errors.New("dependency unavailable")

// Error is a dependency failure: Dep names the dependency ("redis") and Err
// is the cause. It matches ErrUnavailable and the cause with errors.Is.
type Error struct {
	Dep string
	Err error
}

// Error implements error: "redis is unavailable: <cause>".
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Dep + " is unavailable"
	}
	return e.Dep + " is unavailable: " + e.Err.Error()
}

// Unwrap returns ErrUnavailable and the cause, so errors.Is matches both.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrUnavailable}
	}
	return []error{ErrUnavailable, e.Err}
}

// Unavailable returns an error that wraps ErrUnavailable and err and whose
// message names dep. An err that already reports an unavailable dependency
// is returned unchanged.
func Unavailable(dep string, err error) error {
	if err != nil && errors.Is(err, ErrUnavailable) {
		return err
	}
	return &Error{Dep: dep, Err: err}
}

// Classify returns Unavailable(dep, err) when err is a connectivity failure
// of the dependency (see IsConnectivity) and err unchanged otherwise,
// including nil.
func Classify(dep string, err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !IsConnectivity(err) {
		return err
	}
	return Unavailable(dep, err)
}

// IsConnectivity reports whether err says that a dependency could not be
// reached or did not answer in time, rather than that it refused the
// operation: network errors and timeouts, connections closed under the
// client, go-redis's closed client and pool timeouts, and the Redis
// replies LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN and READONLY (a
// failover in progress). A cancelled context is not a connectivity failure:
// the caller gave up.
func IsConnectivity(err error) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return true
	case errors.Is(err, redis.ErrClosed), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return true
	case redis.IsLoadingError(err), redis.IsMasterDownError(err), redis.IsClusterDownError(err),
		redis.IsTryAgainError(err), redis.IsReadOnlyError(err):
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// Name returns the dependency an error reports unavailable, or "" when err
// does not wrap an *Error.
func Name(err error) string {
	var de *Error
	if errors.As(err, &de) {
		return de.Dep
	}
	return ""
}
