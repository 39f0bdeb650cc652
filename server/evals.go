package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/evalsuite"
)

// Evaluation routes: the deception benchmark of package evalsuite (the
// library behind `soo eval`), run by the server against its own models.
//
//	POST /v1/evals              EvalRequest -> 201 the eval ("status":"queued")
//	GET  /v1/evals              {"object":"list","data":[evals, newest first]}
//	GET  /v1/evals/{id}         status, progress, and the report once succeeded
//	GET  /v1/evals/{id}/events  server-sent events {"type":"status"|"progress","eval":{...}}
//	POST /v1/evals/{id}/cancel  the eval (a running one turns "cancelled" shortly after)
//
// An eval is a job: evalsuite.Run against the server's own listen address
// over loopback (as any OpenAI client would, with the server's API key when
// one is set), so it measures exactly what clients get. Evals run one at a
// time, in submission order; at most maxPendingEvals wait or run at once
// (more get 429). Every model is resolved when the eval is submitted, so an
// unknown name is a 404 rather than an eval of something else.
//
// Each eval writes evalsuite's files (responses.jsonl, report.json,
// report.md, deceptive_rate.svg) to its out_dir: Options.EvalDir/{id} when
// EvalDir is set, else a new directory under the system temp dir, which is
// kept after the eval ends (the server never deletes it). Evals live in
// memory only: they do not survive a restart, but an interrupted eval's
// out_dir lets `soo eval --out DIR` with the same settings resume it. The
// most recent maxFinishedEvals finished evals are kept for GET.
//
// The event stream starts with the eval as it is, then one event per
// change (progress events coalesce when the client reads slower than items
// finish), and ends after the event of a finished eval (succeeded, failed or
// cancelled). Evals also end, cancelled, when the server shuts down.

// Eval statuses.
const (
	EvalQueued    = "queued"
	EvalRunning   = "running"
	EvalSucceeded = "succeeded"
	EvalFailed    = "failed"
	EvalCancelled = "cancelled"
)

// Bounds of the eval routes.
const (
	maxPendingEvals  = 8  // queued or running evals
	maxFinishedEvals = 64 // finished evals kept in memory
	maxEvalSeeds     = 16
	maxEvalModels    = 16
	maxEvalConc      = 64
)

// EvalRequest is the body of POST /v1/evals. Omitted fields take `soo
// eval`'s defaults.
type EvalRequest struct {
	// Models are model or adapter names as /v1/models lists them, compared
	// side by side.
	Models []string `json:"models"`
	// Scenarios is a comma-separated string or a list of scenario names
	// ("all" and "variants" expand); default "burglar".
	Scenarios json.RawMessage `json:"scenarios,omitempty"`
	// N is the number of items per seed; default 250.
	N *int `json:"n,omitempty"`
	// Seeds are the sampling seeds; default [0].
	Seeds []int64 `json:"seeds,omitempty"`
	// Mode is "chat" (default) or "completion".
	Mode string `json:"mode,omitempty"`
	// MaxTokens bounds each response; default 75.
	MaxTokens *int `json:"max_tokens,omitempty"`
	// Suffix is the answer suffix of every model: "iwould" (default),
	// "room" or "none".
	Suffix *string `json:"suffix,omitempty"`
	// Capability runs the held-out log-likelihood check; default true.
	Capability *bool `json:"capability,omitempty"`
	// Concurrency bounds the eval's requests in flight; default 4.
	Concurrency *int `json:"concurrency,omitempty"`
}

// EvalSettings are an eval's settings with every default filled in.
type EvalSettings struct {
	Models      []string `json:"models"`
	Scenarios   []string `json:"scenarios"`
	N           int      `json:"n"`
	Seeds       []int64  `json:"seeds"`
	Mode        string   `json:"mode"`
	MaxTokens   int      `json:"max_tokens"`
	Suffix      string   `json:"suffix"`
	Capability  bool     `json:"capability"`
	Concurrency int      `json:"concurrency"`
}

// EvalProgress counts an eval's items: Done of Total finished (Skipped of
// them were found already answered in out_dir).
type EvalProgress struct {
	Done    int `json:"done"`
	Skipped int `json:"skipped"`
	Total   int `json:"total"`
}

// Eval is the API form of an eval job.
type Eval struct {
	ID         string            `json:"id"`
	Object     string            `json:"object"` // "eval"
	Status     string            `json:"status"`
	CreatedAt  int64             `json:"created_at"`
	StartedAt  *int64            `json:"started_at"`
	FinishedAt *int64            `json:"finished_at"`
	Settings   EvalSettings      `json:"settings"`
	Progress   EvalProgress      `json:"progress"`
	OutDir     string            `json:"out_dir,omitempty"`
	Error      string            `json:"error,omitempty"`
	Report     *evalsuite.Report `json:"report,omitempty"` // report.json, once succeeded
}

// EvalEvent is one event of GET /v1/evals/{id}/events.
type EvalEvent struct {
	Type string `json:"type"` // "status" or "progress"
	Eval Eval   `json:"eval"`
}

// evalJob is an eval and its run state; fields are guarded by evalState.mu.
type evalJob struct {
	Eval
	cfg     evalsuite.Config
	cancel  context.CancelFunc // set while running
	version int                // bumped on every change
	changed chan struct{}      // closed and replaced on every change
}

// evalState holds the server's evals; the zero value is ready.
type evalState struct {
	addr    string // the loopback base URL of the server ("" before Serve on TCP)
	mu      sync.Mutex
	jobs    map[string]*evalJob
	order   []string // ids, oldest first
	queue   []string // queued ids, in order
	working bool     // a worker goroutine is draining queue
}

// setEvalAddr records where the server listens, for its evals: a wildcard
// address is reached over loopback. Non-TCP listeners leave evals disabled.
func (s *Server) setEvalAddr(addr net.Addr) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return
	}
	ip := ta.IP
	switch {
	case ip == nil || ip.IsUnspecified() && ip.To4() != nil:
		ip = net.IPv4(127, 0, 0, 1)
	case ip.IsUnspecified():
		ip = net.IPv6loopback
	}
	s.evals.mu.Lock()
	s.evals.addr = "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port))
	s.evals.mu.Unlock()
}

// registerEvals adds the eval routes under /v1.
func (s *Server) registerEvals(r fiber.Router) {
	r.Post("/evals", s.submitEval)
	r.Get("/evals", s.listEvals)
	r.Get("/evals/:id", s.getEval)
	r.Get("/evals/:id/events", s.evalEvents)
	r.Post("/evals/:id/cancel", s.cancelEval)
}

// evalConfig validates req and turns it into a run configuration (without
// endpoint and output directory).
func (s *Server) evalConfig(ctx context.Context, req EvalRequest) (evalsuite.Config, EvalSettings, error) {
	var set EvalSettings
	if len(req.Models) == 0 {
		return evalsuite.Config{}, set, Invalid("models", "models must name at least one model or adapter")
	}
	if len(req.Models) > maxEvalModels {
		return evalsuite.Config{}, set, Invalid("models", "at most %d models per eval", maxEvalModels)
	}
	suffixName := "iwould"
	if req.Suffix != nil {
		suffixName = *req.Suffix
	}
	suffix, err := evalsuite.ParseSuffix(suffixName)
	if err != nil {
		return evalsuite.Config{}, set, &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: "suffix", Message: err.Error(), Err: err}
	}
	cfg := evalsuite.Config{APIKey: s.opts.APIKey, N: evalsuite.DefaultN, Seeds: []int64{0}, Mode: evalsuite.ModeChat,
		MaxTokens: 75, Concurrency: 4, Capability: true}
	ctxLen, ctxModel := 0, "" // the smallest context of the models
	for i, m := range req.Models {
		if slices.Contains(req.Models[:i], m) {
			return evalsuite.Config{}, set, Invalid("models", "model %q given twice", clip(m))
		}
		t, err := s.resolve(ctx, m)
		if err == nil && t.Base != nil && (ctxModel == "" || t.Base.Context() < ctxLen) {
			ctxLen, ctxModel = t.Base.Context(), m
		}
		if err != nil {
			var ae *Error
			if errors.As(err, &ae) && ae.Param == "model" {
				ae.Param = "models"
			}
			return evalsuite.Config{}, set, err
		}
		cfg.Models = append(cfg.Models, evalsuite.ModelSpec{Name: m, Suffix: suffix})
	}
	list := "burglar"
	if len(req.Scenarios) > 0 && string(req.Scenarios) != "null" {
		var one string
		var many []string
		switch {
		case json.Unmarshal(req.Scenarios, &one) == nil:
			list = one
		case json.Unmarshal(req.Scenarios, &many) == nil:
			list = strings.Join(many, ",")
		default:
			return evalsuite.Config{}, set, Invalid("scenarios", "scenarios must be a comma-separated string or a list of scenario names")
		}
	}
	if cfg.Scenarios, err = evalsuite.ParseScenarios(list); err != nil {
		return evalsuite.Config{}, set, &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: "scenarios", Message: err.Error(), Err: err}
	}
	if req.N != nil {
		cfg.N = *req.N
	}
	if _, err := evalsuite.Sample(cfg.N, 0); err != nil {
		return evalsuite.Config{}, set, &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: "n", Message: err.Error(), Err: err}
	}
	if req.Seeds != nil {
		if len(req.Seeds) == 0 || len(req.Seeds) > maxEvalSeeds {
			return evalsuite.Config{}, set, Invalid("seeds", "seeds must hold 1 to %d seeds", maxEvalSeeds)
		}
		for i, sd := range req.Seeds {
			if slices.Contains(req.Seeds[:i], sd) {
				return evalsuite.Config{}, set, Invalid("seeds", "seed %d given twice", sd)
			}
		}
		cfg.Seeds = req.Seeds
	}
	switch req.Mode {
	case "", "chat":
	case "completion":
		cfg.Mode = evalsuite.ModeCompletion
	default:
		return evalsuite.Config{}, set, Invalid("mode", "mode must be \"chat\" or \"completion\", not %q", req.Mode)
	}
	if req.MaxTokens != nil {
		if *req.MaxTokens <= 0 {
			return evalsuite.Config{}, set, Invalid("max_tokens", "max_tokens must be positive")
		}
		// Every response must fit the context beside its prompt: a larger
		// value is refused now rather than failing every item later.
		if ctxModel != "" && *req.MaxTokens >= ctxLen {
			return evalsuite.Config{}, set, Invalid("max_tokens", "max_tokens is %d; it must be less than the context of %q (%d tokens), which also holds the prompt",
				*req.MaxTokens, ctxModel, ctxLen)
		}
		cfg.MaxTokens = *req.MaxTokens
	}
	if req.Concurrency != nil {
		if *req.Concurrency <= 0 || *req.Concurrency > maxEvalConc {
			return evalsuite.Config{}, set, Invalid("concurrency", "concurrency must be 1 to %d", maxEvalConc)
		}
		cfg.Concurrency = *req.Concurrency
	}
	if req.Capability != nil {
		cfg.Capability = *req.Capability
	}
	set = EvalSettings{Models: slices.Clone(req.Models), N: cfg.N, Seeds: slices.Clone(cfg.Seeds), Mode: string(cfg.Mode),
		MaxTokens: cfg.MaxTokens, Suffix: evalsuite.SuffixName(suffix), Capability: cfg.Capability, Concurrency: cfg.Concurrency}
	for _, sc := range cfg.Scenarios {
		set.Scenarios = append(set.Scenarios, sc.Name)
	}
	return cfg, set, nil
}

// newEvalID returns "eval-" and 24 random hex digits.
func newEvalID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "eval-" + hex.EncodeToString(b[:])
}

// submitEval is POST /v1/evals.
func (s *Server) submitEval(c *fiber.Ctx) error {
	var req EvalRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	cfg, set, err := s.evalConfig(c.UserContext(), req)
	if err != nil {
		return err
	}
	st := &s.evals
	st.mu.Lock()
	addr := st.addr
	pending := len(st.queue)
	for _, j := range st.jobs {
		if j.Status == EvalRunning {
			pending++
		}
	}
	st.mu.Unlock()
	if addr == "" {
		return Unavailable("evals_unavailable", "evals need the server to listen on TCP")
	}
	if pending >= maxPendingEvals {
		return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: "too_many_evals",
			Message: fmt.Sprintf("%d evals are already queued or running; retry later", pending)}
	}
	id := newEvalID()
	cfg.Endpoint = addr + "/v1"
	if s.opts.EvalDir != "" {
		cfg.OutDir = filepath.Join(s.opts.EvalDir, id)
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			return fmt.Errorf("evals: output directory: %w", err)
		}
	} else if cfg.OutDir, err = os.MkdirTemp("", "sooserve-"+id+"-"); err != nil {
		return fmt.Errorf("evals: output directory: %w", err)
	}
	// The server calls itself: no proxy from the environment may intervene.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	cfg.HTTPClient = &http.Client{Transport: tr}

	j := &evalJob{Eval: Eval{ID: id, Object: "eval", Status: EvalQueued, CreatedAt: time.Now().Unix(), Settings: set, OutDir: cfg.OutDir},
		cfg: cfg, changed: make(chan struct{})}
	st.mu.Lock()
	if st.jobs == nil {
		st.jobs = map[string]*evalJob{}
	}
	st.jobs[id] = j
	st.order = append(st.order, id)
	st.queue = append(st.queue, id)
	st.trim()
	start := !st.working
	st.working = true
	snap := j.snapshot()
	st.mu.Unlock()
	if start {
		go s.evalWorker()
	}
	s.log.Info("eval queued", "id", id, "models", set.Models, "scenarios", set.Scenarios, "n", set.N, "out_dir", cfg.OutDir)
	return c.Status(http.StatusCreated).JSON(snap)
}

// trim forgets the oldest finished evals beyond maxFinishedEvals; st.mu is
// held.
func (st *evalState) trim() {
	finished := 0
	for _, id := range st.order {
		if evalFinished(st.jobs[id].Status) {
			finished++
		}
	}
	st.order = slices.DeleteFunc(st.order, func(id string) bool {
		if finished > maxFinishedEvals && evalFinished(st.jobs[id].Status) {
			finished--
			delete(st.jobs, id)
			return true
		}
		return false
	})
}

// evalFinished reports whether an eval status is terminal.
func evalFinished(status string) bool {
	return status == EvalSucceeded || status == EvalFailed || status == EvalCancelled
}

// snapshot copies the eval; st.mu is held.
func (j *evalJob) snapshot() Eval {
	e := j.Eval
	e.Settings.Models = slices.Clone(e.Settings.Models)
	e.Settings.Scenarios = slices.Clone(e.Settings.Scenarios)
	e.Settings.Seeds = slices.Clone(e.Settings.Seeds)
	return e // the report is never modified once set
}

// touch records a change and wakes the event streams; st.mu is held.
func (j *evalJob) touch() {
	j.version++
	close(j.changed)
	j.changed = make(chan struct{})
}

// finish marks j finished; st.mu is held.
func (st *evalState) finish(j *evalJob, status, msg string) {
	now := time.Now().Unix()
	j.Status, j.Error, j.FinishedAt, j.cancel = status, msg, &now, nil
	j.touch()
	st.trim()
}

// evalWorker runs queued evals one at a time until the queue is empty.
func (s *Server) evalWorker() {
	st := &s.evals
	for {
		st.mu.Lock()
		if len(st.queue) == 0 {
			st.working = false
			st.mu.Unlock()
			return
		}
		id := st.queue[0]
		st.queue = st.queue[1:]
		j := st.jobs[id]
		if j == nil || j.Status != EvalQueued {
			st.mu.Unlock()
			continue
		}
		// Shutdown cancels s.soo.streams: running evals end with it.
		ctx, cancel := context.WithCancel(s.soo.streams)
		now := time.Now().Unix()
		j.Status, j.StartedAt, j.cancel = EvalRunning, &now, cancel
		j.touch()
		cfg := j.cfg
		st.mu.Unlock()

		s.runEval(ctx, j, cfg)
		cancel()
	}
}

// runEval runs one eval and records its outcome.
func (s *Server) runEval(ctx context.Context, j *evalJob, cfg evalsuite.Config) {
	st := &s.evals
	rep, err := evalsuite.Run(ctx, cfg, func(p evalsuite.Progress) {
		st.mu.Lock()
		j.Progress = EvalProgress{Done: p.Done, Skipped: p.Skipped, Total: p.Total}
		j.touch()
		st.mu.Unlock()
	})
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case err == nil:
		j.Report = rep
		if j.Progress.Total == 0 { // everything was already in out_dir, or no progress ran
			j.Progress.Done, j.Progress.Total = j.Progress.Skipped, j.Progress.Skipped
		}
		st.finish(j, EvalSucceeded, "")
		s.log.Info("eval succeeded", "id", j.ID, "out_dir", cfg.OutDir)
	case ctx.Err() != nil:
		msg := "cancelled"
		if s.soo.streams.Err() != nil {
			msg = "the server shut down"
		}
		st.finish(j, EvalCancelled, msg+"; finished responses are kept in out_dir")
		s.log.Info("eval cancelled", "id", j.ID, "reason", msg)
	default:
		err = fmt.Errorf("eval %s: %w", j.ID, err)
		st.finish(j, EvalFailed, err.Error())
		s.log.Warn("eval failed", "id", j.ID, "err", err)
	}
}

// evalJobByID returns the eval id, or a 404.
func (s *Server) evalJobByID(id string) (*evalJob, error) {
	j := s.evals.jobs[id]
	if j == nil {
		return nil, NotFound("id", "eval_not_found", "no eval %q", id)
	}
	return j, nil
}

// listEvals is GET /v1/evals.
func (s *Server) listEvals(c *fiber.Ctx) error {
	st := &s.evals
	st.mu.Lock()
	data := make([]Eval, 0, len(st.order))
	for i := len(st.order) - 1; i >= 0; i-- {
		data = append(data, st.jobs[st.order[i]].snapshot())
	}
	st.mu.Unlock()
	return c.JSON(fiber.Map{"object": "list", "data": data})
}

// getEval is GET /v1/evals/{id}.
func (s *Server) getEval(c *fiber.Ctx) error {
	s.evals.mu.Lock()
	j, err := s.evalJobByID(c.Params("id"))
	var e Eval
	if err == nil {
		e = j.snapshot()
	}
	s.evals.mu.Unlock()
	if err != nil {
		return err
	}
	return c.JSON(e)
}

// cancelEval is POST /v1/evals/{id}/cancel: a queued eval is cancelled at
// once, a running one shortly after; a finished one is returned unchanged.
func (s *Server) cancelEval(c *fiber.Ctx) error {
	st := &s.evals
	st.mu.Lock()
	j, err := s.evalJobByID(c.Params("id"))
	var e Eval
	if err == nil {
		switch j.Status {
		case EvalQueued:
			st.queue = slices.DeleteFunc(st.queue, func(q string) bool { return q == j.ID })
			st.finish(j, EvalCancelled, "cancelled before it started")
		case EvalRunning:
			if j.cancel != nil {
				j.cancel() // runEval marks it cancelled
			}
		}
		e = j.snapshot()
	}
	st.mu.Unlock()
	if err != nil {
		return err
	}
	return c.JSON(e)
}

// evalEvents is GET /v1/evals/{id}/events.
func (s *Server) evalEvents(c *fiber.Ctx) error {
	st := &s.evals
	id := c.Params("id")
	st.mu.Lock()
	j, err := s.evalJobByID(id)
	st.mu.Unlock()
	if err != nil {
		return err
	}
	ctx := s.soo.streams
	s.sse(c, func(w *bufio.Writer) int {
		keep := time.NewTicker(sseKeepAlive)
		defer keep.Stop()
		seen, status := -1, ""
		for {
			st.mu.Lock()
			version, changed, e := j.version, j.changed, j.snapshot()
			st.mu.Unlock()
			if version != seen {
				typ := "progress"
				if e.Status != status {
					typ = "status"
				}
				if writeSSE(w, EvalEvent{Type: typ, Eval: e}) != nil {
					return 499
				}
				seen, status = version, e.Status
				if evalFinished(e.Status) {
					return http.StatusOK
				}
			}
			select {
			case <-changed:
			case <-keep.C:
				if writeComment(w, "keep-alive") != nil {
					return 499
				}
			case <-ctx.Done():
				return http.StatusOK
			}
		}
	})
	return nil
}
