package adapters

import (
	"errors"
	"fmt"

	"github.com/sooserve/sooserve/internal/depend"
)

// Kinds of adapter errors. Every error the registry, the stores and the
// upload parser return wraps at most one of them, so callers (the HTTP
// server) map them to statuses with errors.Is: ErrInvalid 400, ErrNotFound
// 404, ErrExists 409, ErrTooLarge 413, ErrUnavailable 503 (the store's Redis
// is down or stalled; the error names the dependency); anything else is an
// internal failure.
var (
	ErrInvalid     = errors.New("invalid adapter")
	ErrNotFound    = errors.New("adapter not found")
	ErrExists      = errors.New("adapter already exists")
	ErrTooLarge    = errors.New("adapter too large")
	ErrUnavailable = depend.ErrUnavailable
)

// Error is a typed adapter error: Kind is one of ErrInvalid, ErrNotFound,
// ErrExists or ErrTooLarge, Msg says what is wrong (naming the module,
// tensor or field), and Err is an optional cause.
type Error struct {
	Kind error
	Msg  string
	Err  error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Unwrap returns the kind and the cause, so errors.Is matches both.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

func typed(kind error, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// invalid returns an ErrInvalid error.
func invalid(format string, args ...any) *Error { return typed(ErrInvalid, nil, format, args...) }

// notFound returns the ErrNotFound error for name.
func notFound(name string) *Error {
	return typed(ErrNotFound, nil, "adapters: the adapter %q does not exist", name)
}

// exists returns the ErrExists error for name.
func exists(name string) *Error {
	return typed(ErrExists, nil, "adapters: the adapter %q already exists (replace it with ?replace=true or load_inplace)", name)
}

// IsTyped reports whether err wraps one of the error kinds of this package.
func IsTyped(err error) bool {
	return errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrTooLarge) ||
		errors.Is(err, ErrUnavailable)
}
