package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/internal/depend"
)

// Error types of the envelope, by status (DESIGN §3).
const (
	TypeInvalidRequest = "invalid_request_error"  // 400
	TypeAuthentication = "authentication_error"   // 401
	TypePermission     = "permission_error"       // 403 (a cross-origin request without an API key)
	TypeNotFound       = "not_found_error"        // 404
	TypeConflict       = "conflict_error"         // 409
	TypeTooLarge       = "request_too_large"      // 413
	TypeUnsupported    = "unsupported_media_type" // 415 (content type or encoding)
	TypeRateLimit      = "rate_limit_error"       // 429
	TypeServer         = "server_error"           // 500
	TypeUnavailable    = "service_unavailable"    // 503 (loading, shutting down, a dependency down)
	TypeStorage        = "insufficient_storage"   // 507 (disk full, over quota, read-only)
)

// Error is an API error: an HTTP status and the fields of the OpenAI error
// envelope {"error":{"message","type","param","code"}}. Handlers return
// *Error values (or errors wrapping them); errorHandler is the one place that
// turns any error into the envelope.
type Error struct {
	Status  int
	Type    string
	Message string
	Param   string // "" is written as null
	Code    string // "" is written as null
	Err     error  // the underlying cause, logged but not sent
}

// Error implements error.
func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Type, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Type, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Invalid returns a 400 invalid_request_error about param.
func Invalid(param, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

// NotFound returns a 404 not_found_error.
func NotFound(param, code, format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Type: TypeNotFound, Param: param, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable returns a 503 with code.
func Unavailable(code, msg string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: code, Message: msg}
}

// envelope is the wire form of an error.
type envelope struct {
	Error envelopeBody `json:"error"`
}

type envelopeBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Envelope returns the JSON envelope of e. The message and param are cut to
// maxMessage and maxParam bytes, so no error echoes a client's string at
// length.
func (e *Error) Envelope() []byte {
	b, _ := json.Marshal(envelope{envelopeBody{Message: clipTo(e.Message, maxMessage), Type: e.Type,
		Param: nullable(clipTo(e.Param, maxParam)), Code: nullable(e.Code)}})
	return b
}

// Lengths that error texts are cut to.
const (
	maxMessage = 512 // bytes of an envelope's message
	maxParam   = 128 // bytes of an envelope's param
	maxEcho    = 64  // bytes of a client string quoted in a message (see clip)
	maxLogged  = 2048
)

// clip cuts a client's string for quoting in a message: to maxEcho bytes,
// or n[0] when given (see clipTo).
func clip(s string, n ...int) string {
	if len(n) > 0 {
		return clipTo(s, n[0])
	}
	return clipTo(s, maxEcho)
}

// clipTo returns s cut to at most n bytes at a UTF-8 boundary, ending in
// "…" when cut.
func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := max(n-len(ellipsis), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// clippedErr logs an error's text cut to maxLogged bytes (computed only when
// the record is logged).
type clippedErr struct{ err error }

// LogValue implements slog.LogValuer.
func (c clippedErr) LogValue() slog.Value { return slog.StringValue(clipTo(c.err.Error(), maxLogged)) }

// AsAPIError maps any error to an *Error: *Error values pass through, the
// scheduler's and fiber's errors get their statuses, anything else is a 500
// whose message does not leak internals.
func AsAPIError(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	var fe *fiber.Error
	switch {
	case errors.Is(err, sched.ErrQueueFull):
		return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: "queue_full", Message: "the server's request queue is full; retry later", Err: err}
	case errors.Is(err, sched.ErrClosed):
		return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "shutting_down", Message: "the server is shutting down", Err: err}
	case errors.Is(err, sched.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Message: err.Error(), Err: err}
	case errors.Is(err, sched.ErrNonFinite):
		return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Code: "non_finite_logits",
			Message: "the model produced non-finite logits (NaN/Inf); the adapter or weights are numerically broken", Err: err}
	case errors.Is(err, depend.ErrUnavailable):
		return dependencyError(err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EROFS):
		return storageError(err)
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "timeout", Message: "the request timed out", Err: err}
	case errors.As(err, &fe):
		return fromFiber(fe)
	}
	return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Message: "internal server error", Err: err}
}

// dependencyError is the 503 of a dependency that is down or stalled: its
// message names the dependency and the failure ("redis is unavailable:
// dial tcp ...: connection refused").
func dependencyError(err error) *Error {
	msg := "a dependency of the server is unavailable"
	var de *depend.Error
	if errors.As(err, &de) {
		msg = de.Error()
	}
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "dependency_unavailable", Message: msg, Err: err}
}

// storageError is the 507 of a write the server's storage refused: full
// (ENOSPC), over quota (EDQUOT) or read-only (EROFS). The message names the
// condition, not the path.
func storageError(err error) *Error {
	e := &Error{Status: http.StatusInsufficientStorage, Type: TypeStorage, Code: "storage_full", Err: err}
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS} {
		if errors.Is(err, errno) {
			if errno == syscall.EROFS {
				e.Code = "storage_read_only"
			}
			e.Message = "the server cannot store this: " + errno.Error()
			break
		}
	}
	return e
}

func fromFiber(fe *fiber.Error) *Error {
	e := &Error{Status: fe.Code, Message: fe.Message, Err: fe}
	switch fe.Code {
	case http.StatusBadRequest:
		e.Type = TypeInvalidRequest
	case http.StatusUnauthorized:
		e.Type = TypeAuthentication
	case http.StatusNotFound:
		e.Type, e.Code = TypeNotFound, "route_not_found"
		e.Message = "no such route"
	case http.StatusMethodNotAllowed:
		e.Type = TypeInvalidRequest
		e.Message = "method not allowed"
	case http.StatusConflict:
		e.Type = TypeConflict
	case http.StatusRequestEntityTooLarge:
		e.Type, e.Code = TypeTooLarge, "body_too_large"
		e.Message = "request body too large"
	case http.StatusForbidden:
		e.Type = TypePermission
	case http.StatusUnsupportedMediaType:
		e.Type = TypeUnsupported
	case http.StatusTooManyRequests:
		e.Type = TypeRateLimit
	case http.StatusServiceUnavailable:
		e.Type = TypeUnavailable
	default:
		if fe.Code >= 500 {
			e.Type = TypeServer
		} else {
			e.Type = TypeInvalidRequest
		}
	}
	return e
}

// errorHandler is fiber's ErrorHandler: every error any route returns is
// written here, as the envelope.
func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	ae := AsAPIError(err)
	if ae.Status >= 500 {
		s.log.Error("request failed", "method", c.Method(), "path", clipTo(c.Path(), maxParam), "status", ae.Status, "err", clippedErr{err})
	} else {
		s.log.Debug("request rejected", "method", c.Method(), "path", clipTo(c.Path(), maxParam), "status", ae.Status, "err", clippedErr{err})
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(ae.Status).Send(ae.Envelope())
}

// decodeJSON decodes a request body into v, turning syntax and type errors
// into 400s that name the offending field.
func decodeJSON(body []byte, v any) error {
	if len(body) == 0 {
		return Invalid("", "request body is empty; expected a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return Invalid("", "request body is not valid JSON: %v (at byte %d)", err, se.Offset)
		case errors.As(err, &te):
			field := strings.TrimPrefix(te.Field, "samplingFields.")
			if field == "" {
				return Invalid("", "request body must be a JSON object, not %s", te.Value)
			}
			return Invalid(field, "field %q must be %s, not %s", field, jsonKind(te.Type.Kind().String()), te.Value)
		default:
			var ae *Error
			if errors.As(err, &ae) {
				return ae
			}
			return Invalid("", "invalid request body: %v", err)
		}
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int32", "int64", "uint64", "uint", "float32", "float64":
		return "a number"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return "of another type"
}
