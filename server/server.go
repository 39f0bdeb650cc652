// Package server is SOO Serve's HTTP layer on fiber: the OpenAI-compatible
// routes (/v1/models, /v1/chat/completions, /v1/completions), the
// Ollama-compatible routes (/api/chat, /api/generate, /api/tags, /api/show,
// /api/version), bearer-key auth, /health and /metrics.
//
// Handlers only parse and validate, turn the request into an
// engine/sched.Request, and stream back what the scheduler produces. Every
// error is a value (*Error, or an error AsAPIError maps) turned into the
// envelope {"error":{"message","type","param","code"}} in one place,
// errorHandler. Status and type: 400 invalid_request_error, 401
// authentication_error, 403 permission_error, 404 not_found_error, 409
// conflict_error, 413 request_too_large, 415 unsupported_media_type, 429
// rate_limit_error, 500 server_error, 503 service_unavailable (code
// model_loading, shutting_down, or dependency_unavailable with a message
// naming the dependency, e.g. Redis), 507 insufficient_storage (code
// storage_full or storage_read_only: the data directory refused a write).
// A message that quotes a client's string quotes at most 64 bytes of it, and
// no message passes 512 bytes. /health reports a failed dependency as 200
// {"status":"degraded"} (health.go).
//
// Before any handler (transport.go): an unknown method, conflicting
// Content-Length headers or Content-Length with Transfer-Encoding get a 400;
// a body with Content-Encoding (gzip or deflate, at most 2 layers; 415
// otherwise) is decoded as a stream whose decoded size is held to
// Limits.MaxBodyBytes (413), and handlers see the decoded body. A prompt of
// 64 KiB or more whose byte length proves it holds more tokens than the
// context is refused with 413 (code prompt_too_long) before it is tokenized;
// shorter prompts that do not fit get 400 context_length_exceeded.
//
// Browsers and cross-site requests: POST, PUT and PATCH bodies must be
// application/json (415 otherwise; the adapter upload takes
// multipart/form-data), so a web page cannot post JSON here without a CORS
// preflight, which this server never grants. Without an API key, a
// state-changing request (POST, PUT, PATCH, DELETE) that carries an Origin
// header must come from the server's own origin (Host, or loopback with the
// same port), else 403 (code cross_origin): this stops form posts and other
// "simple" requests from pages of other sites. Clients that send no Origin
// (SDKs, curl, other servers) are not affected. With an API key the key is
// the protection (browsers cannot attach it across origins without a
// preflight). Origin checks do not stop DNS rebinding; a server reachable
// from other machines should set an API key. The Authorization scheme is
// matched case-insensitively.
//
// Metrics labels come from bounded sets: the route pattern, the status, and
// the model only when it names a served model or adapter ("unknown"
// otherwise).
//
// Models are resolved through the Models interface, so an adapter registry
// can add adapters beside the base without touching the routes. Route groups
// live in one file each (openai.go, ollama.go); a new group is a method
// registering its routes, called from routes.
//
// response_format {"type":"json_object"} is accepted (with OpenAI's rule
// that a message must mention JSON) but the output is not constrained;
// "json_schema" is rejected with a 400.
package server

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/sooserve/sooserve/overlap"
)

// Limits bound what a request may ask for; requests beyond them get 400s
// (413 for the body).
type Limits struct {
	MaxBodyBytes   int // default 8 MiB
	MaxMessages    int // chat messages per request; default 1024
	MaxN           int // choices per request; default 16
	MaxStop        int // stop strings; default 4
	MaxStopLen     int // bytes per stop string; default 256
	MaxTopLogprobs int // top_logprobs / logprobs N; default 20
}

func (l *Limits) defaults() {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 8 << 20
	}
	if l.MaxMessages <= 0 {
		l.MaxMessages = 1024
	}
	if l.MaxN <= 0 {
		l.MaxN = 16
	}
	if l.MaxStop <= 0 {
		l.MaxStop = 4
	}
	if l.MaxStopLen <= 0 {
		l.MaxStopLen = 256
	}
	if l.MaxTopLogprobs <= 0 {
		l.MaxTopLogprobs = 20
	}
}

// Options configures a Server.
type Options struct {
	// APIKey, when set, is required as "Authorization: Bearer KEY" on every
	// route but /health.
	APIKey string
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Metrics to record into; nil creates them on a new registry.
	Metrics *Metrics
	Limits  Limits
	// Version is reported by /api/version; default the Ollama API version
	// the routes follow.
	Version string
	// OverlapStore keeps per-request overlap records (overlap.go); nil means
	// an in-memory overlap.Ring of OverlapRing records (0: the default size).
	OverlapStore overlap.Store
	OverlapRing  int
	// EvalDir, when set, holds the output of POST /v1/evals jobs (one
	// directory per eval); "" means a new temp directory per eval (evals.go).
	EvalDir string
}

// Server is the HTTP server. Models are set with SetModels once loaded;
// until then model routes and /health answer 503.
type Server struct {
	app     *fiber.App
	log     *slog.Logger
	metrics *Metrics
	opts    Options
	models  atomic.Pointer[Models]
	ready   atomic.Bool

	// ctx is the parent of every generation; cancel ends them all (a
	// shutdown whose grace period ran out).
	ctx    context.Context
	cancel context.CancelFunc

	paths map[string]bool // static route paths, for metrics labels

	decodes chan struct{} // turns to decode a compressed body (transport.go)

	soo   sooState  // overlap records and training (overlap.go, training.go)
	evals evalState // deception evals of the server's own models (evals.go)

	health healthState // dependency checks and draining (health.go)
}

// New returns a server with its routes registered.
func New(opts Options) *Server {
	opts.Limits.defaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.Version == "" {
		opts.Version = "0.17.4"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{log: opts.Logger, metrics: opts.Metrics, opts: opts, ctx: ctx, cancel: cancel, decodes: make(chan struct{}, maxDecodes)}
	s.app = fiber.New(fiber.Config{
		AppName:               "sooserve",
		BodyLimit:             opts.Limits.MaxBodyBytes,
		ErrorHandler:          s.errorHandler,
		DisableStartupMessage: true,
		ReadTimeout:           2 * time.Minute,
		IdleTimeout:           2 * time.Minute,
		// fasthttp would otherwise parse a multipart body while reading it
		// (spooling files to disk, resetting the connection when the body is
		// not multipart); the upload handler parses it from the body.
		DisablePreParseMultipartForm: true,
		// Otherwise each keep-alive connection keeps the largest body
		// buffer it has used (up to MaxBodyBytes, a decoded gzip bomb
		// included) until it closes: 64 idle connections held 350 MB after
		// a soak (cmd/soo TestSoakHostile).
		ReduceMemoryUsage: true,
	})
	s.app.Server().Handler = s.guard(s.app.Server().Handler)
	s.initSOO()
	s.routes()
	s.paths = map[string]bool{}
	for _, r := range s.app.GetRoutes(true) {
		if !strings.ContainsAny(r.Path, ":*+") {
			s.paths[r.Path] = true
		}
	}
	return s
}

// routes registers every route group.
func (s *Server) routes() {
	s.app.Use(s.observe)
	s.app.Use(s.refuseWhileDraining)
	s.app.Get("/health", s.healthRoute)
	s.app.Use(s.auth)
	s.app.Use(s.transport)
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	s.app.Get("/metrics", func(c *fiber.Ctx) error {
		metrics(c.Context())
		return nil
	})
	s.registerOpenAI(s.app.Group("/v1"))
	s.registerOverlap(s.app.Group("/v1"))
	s.registerTraining(s.app.Group("/v1"))
	s.registerEvals(s.app.Group("/v1"))
	s.registerOllama(s.app.Group("/api"))
}

// App returns the fiber app, for route groups added by other packages.
func (s *Server) App() *fiber.App { return s.app }

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Registry returns the server's Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.Registry }

// SetModels installs the model resolver and marks the server ready.
func (s *Server) SetModels(m Models) {
	s.models.Store(&m)
	s.ready.Store(m != nil)
}

// Serve serves HTTP on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.setEvalAddr(ln.Addr()) // evals call the server here
	if err := s.app.Listener(ln); err != nil {
		return fmt.Errorf("server: serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting connections and waits for in-flight requests
// (streams included) to finish. From its start, requests that still arrive on
// open connections, /health included, get 503 shutting_down.
//
// When ctx ends first, the remaining generations are cancelled: a stream gets
// a final error event (code shutting_down) and, on the OpenAI routes,
// "data: [DONE]"; a response not yet started is a 503 shutting_down. Shutdown
// then waits up to shutdownFlush for those responses to be written and their
// connections to close, and returns nil: cutting requests at the deadline is
// the planned end of a grace period, not a failure. It returns an error only
// when connections are still open after that (a client that stopped reading).
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.draining.Store(true)
	s.ready.Store(false)
	s.soo.stopStream() // endless event streams end; generations drain
	// fasthttp closes idle connections, closes each active one after its
	// response, and returns when none is left. It holds its lock throughout,
	// so it runs once, on a context that outlives ctx by shutdownFlush.
	fctx, fcancel := context.WithCancel(context.Background())
	defer fcancel()
	done := make(chan error, 1)
	go func() { done <- s.app.ShutdownWithContext(fctx) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("server: shutdown: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	s.log.Warn("shutdown: grace period over; cutting in-flight requests", "connections", s.app.Server().GetOpenConnectionsCount())
	s.cancel() // generations end with shutdownError (drive, streamError)
	flush := time.NewTimer(shutdownFlush)
	defer flush.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("server: shutdown: %w", err)
		}
		return nil
	case <-flush.C:
		open := s.app.Server().GetOpenConnectionsCount()
		fcancel()
		<-done
		return fmt.Errorf("server: shutdown: %d connections still open %v after the grace period", open, shutdownFlush)
	}
}

// healthRoute is GET /health (health.go).
func (s *Server) healthRoute(c *fiber.Ctx) error { return s.health.answer(c, s.ready.Load()) }

// auth checks the bearer key (the scheme is case-insensitive, RFC 9110
// §11.1).
func (s *Server) auth(c *fiber.Ctx) error {
	if s.opts.APIKey == "" {
		return c.Next()
	}
	h := c.Get(fiber.HeaderAuthorization)
	scheme, key, _ := strings.Cut(strings.TrimSpace(h), " ")
	if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(s.opts.APIKey)) != 1 {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="sooserve"`)
		msg := "invalid API key"
		if h == "" {
			msg = "missing API key: send Authorization: Bearer KEY"
		}
		return &Error{Status: fiber.StatusUnauthorized, Type: TypeAuthentication, Code: "invalid_api_key", Message: msg}
	}
	return c.Next()
}

// Locals keys.
const (
	localModel    = "soo.model"
	localStreamed = "soo.streamed"
)

// observe counts requests and their latency. Streamed responses finish after
// the handler returns; their writer records them (see finishStream).
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	err := c.Next()
	if c.Locals(localStreamed) != nil {
		return err
	}
	status := c.Response().StatusCode()
	if err != nil {
		status = AsAPIError(err).Status
	}
	model, _ := c.Locals(localModel).(string)
	route := routeOf(c)
	if route == "unmatched" && s.paths[c.Path()] {
		route = strings.Clone(c.Path()) // rejected by a middleware before routing
	}
	s.record(route, model, status, time.Since(start))
	return err
}

// unknownModel is the model label of a request whose model is not servable.
const unknownModel = "unknown"

// modelLabel returns name when it is a model or adapter the server serves
// now, "" for none, and unknownModel otherwise, so clients cannot add label
// values: the labels are bounded by the models and adapters that ever
// existed. Handlers may store the request's model before validating it.
func (s *Server) modelLabel(name string) string {
	if name == "" {
		return ""
	}
	ms := s.models.Load()
	if ms == nil || len(name) > 256 {
		return unknownModel
	}
	switch m := (*ms).(type) {
	case Single:
		if name == m.Base.ID {
			return m.Base.ID
		}
		return unknownModel
	case *AdapterModels:
		if name == m.Base.ID {
			return m.Base.ID
		}
	}
	for _, info := range (*ms).List(s.ctx) {
		if info.ID == name {
			return info.ID
		}
	}
	return unknownModel
}

// routeOf returns the matched route's pattern ("unmatched" for none).
func routeOf(c *fiber.Ctx) string {
	if r := c.Route(); r != nil && r.Path != "/" && r.Path != "" {
		return r.Path
	}
	return "unmatched"
}

// record counts one finished request. The model label is the request's
// model only when it names a servable model (see modelLabel).
func (s *Server) record(route, model string, status int, d time.Duration) {
	model = s.modelLabel(model)
	s.metrics.requests.WithLabelValues(route, model, fmt.Sprint(status)).Inc()
	if model != "" {
		s.metrics.latency.WithLabelValues(route, model).Observe(d.Seconds())
	}
}
