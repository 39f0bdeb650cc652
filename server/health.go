package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
)

// GET /health answers, in order:
//
//	503 shutting_down   once Shutdown has begun (take the replica out)
//	503 model_loading   until the model is loaded
//	200 {"status":"ok"} when every dependency check passes (or none is set)
//	200 {"status":"degraded","dependencies":{"redis":"redis is unavailable: ..."}}
//	                    when a check fails or takes longer than healthTimeout
//
// A failed dependency keeps the status 200 on purpose: the replicas of a
// deployment share their Redis, so a load balancer that dropped every
// replica whose Redis is down would turn a partial outage (uploads, adapters
// not yet resident and job listings answer 503 dependency_unavailable) into
// a total one (the base model and resident adapters still serve). Monitoring
// reads "status" and "dependencies"; with checks set, an "ok" answer lists
// them too ({"redis":"ok"}).

// healthTimeout bounds each dependency check of /health.
const healthTimeout = 500 * time.Millisecond

// shutdownFlush bounds how long Shutdown waits, after its grace period, for
// the requests it cut to write their last event and close.
const shutdownFlush = 2 * time.Second

// shutdownError ends a generation still running when a shutdown's grace
// period is over; a stream reports it as its final error event.
func shutdownError() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Code: "shutting_down",
		Message: "the server is shutting down: the request was cut short at the end of its grace period; retry it"}
}

// healthState holds the dependency checks of /health and whether the server
// is draining (Shutdown has begun).
type healthState struct {
	mu       sync.Mutex
	checks   map[string]func(context.Context) error
	draining atomic.Bool
}

// AddHealthCheck makes GET /health check a dependency: check returns nil
// when name (e.g. "redis") is usable. Checks run concurrently on every
// /health request, each bounded by healthTimeout; a failed check makes the
// answer 200 {"status":"degraded"} with the error under "dependencies".
func (s *Server) AddHealthCheck(name string, check func(context.Context) error) {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if s.health.checks == nil {
		s.health.checks = map[string]func(context.Context) error{}
	}
	s.health.checks[name] = check
}

// answer writes the /health response.
func (h *healthState) answer(c *fiber.Ctx, ready bool) error {
	if h.draining.Load() {
		return Unavailable("shutting_down", "the server is shutting down")
	}
	if !ready {
		return Unavailable("model_loading", "the model is still loading")
	}
	deps := h.check(c.UserContext())
	if deps == nil {
		return c.JSON(fiber.Map{"status": "ok"})
	}
	status := "ok"
	for _, v := range deps {
		if v != "ok" {
			status = "degraded"
		}
	}
	return c.JSON(fiber.Map{"status": status, "dependencies": deps})
}

// check runs every dependency check at once and returns "ok" or the error
// of each (nil when there are none). A check that overruns healthTimeout is
// reported as such and left to finish on its own.
func (h *healthState) check(ctx context.Context) map[string]string {
	type check struct {
		name string
		fn   func(context.Context) error
	}
	h.mu.Lock()
	checks := make([]check, 0, len(h.checks))
	for name, fn := range h.checks {
		checks = append(checks, check{name, fn})
	}
	h.mu.Unlock()
	if len(checks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(checks)) // late checks finish without blocking
	out := make(map[string]string, len(checks))
	for _, ch := range checks {
		out[ch.name] = fmt.Sprintf("no answer within %v", healthTimeout)
		go func() { results <- result{ch.name, ch.fn(ctx)} }()
	}
	for range checks {
		select {
		case r := <-results:
			out[r.name] = "ok"
			if r.err != nil {
				out[r.name] = clip(r.err.Error(), maxMessage)
			}
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// refuseWhileDraining answers 503 shutting_down to every request that
// arrives, on a connection still open, after Shutdown has begun, and closes
// that connection.
func (s *Server) refuseWhileDraining(c *fiber.Ctx) error {
	if !s.health.draining.Load() {
		return c.Next()
	}
	c.Context().SetConnectionClose()
	return Unavailable("shutting_down", "the server is shutting down; retry on another replica")
}

// cutByShutdown returns shutdownError() for err when err is the
// cancellation of a generation by a shutdown past its grace period (the
// server's context is done), and err otherwise.
func (s *Server) cutByShutdown(err error) error {
	if s.ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return shutdownError()
	}
	return err
}

// ollamaError is the error line of an Ollama NDJSON stream.
type ollamaError struct {
	Error string `json:"error"`
}
