package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/overlap"
	"github.com/sooserve/sooserve/training"
)

// Training routes (DESIGN §3, §8):
//
//	POST /v1/soo/jobs                     training.JobRequest -> 201 the job ("status":"queued")
//	GET  /v1/soo/jobs                     {"object":"list","data":[jobs, newest first]}
//	GET  /v1/soo/jobs/{id}                status, progress, losses, overlap before/after, result
//	GET  /v1/soo/jobs/{id}/events         server-sent events {"type":"status"|"progress","job":{...}}
//	POST /v1/soo/jobs/{id}/cancel         the job (a running job turns "cancelled" shortly after)
//	GET  /v1/soo/jobs/{id}/adapter/{file} a kept file of the job's adapter (see below)
//
// A submit is refused with 400 (param names the field) beyond the limits of
// training.Limits: by default epochs 1..100, at most 10,000 pairs, 20,000
// steps (epochs x ceil(pairs / batch_size)), batch_size 64, lora.r 64,
// lora.alpha 4096, 8 KiB per "self"/"other" text and 256 bytes for model,
// site, pooling and each of at most 16 target modules; with 429
// (rate_limit_error, code too_many_jobs) while 16 jobs are queued or
// running; with 409 (conflict_error, code adapter_exists) when adapter_name
// is already an adapter, or a pending job's target, and the request does not
// set "replace": true (which replaces that adapter when the job succeeds).
//
// A job that trained to its end but could not register its adapter (the
// name was taken while it ran, the registry failed) ends "failed" and keeps
// its PEFT files: result.files lists them, and GET
// /v1/soo/jobs/{id}/adapter/adapter_config.json and
// .../adapter_model.safetensors download them (upload them to /v1/adapters
// to serve them). A job that had registered its adapter when the process
// died succeeds when it resumes. With Redis (--redis) down or too slow,
// every route answers 503 naming Redis, never an empty list.
//
// The event stream starts with the job as it is, then one event per change,
// and ends after the event of a finished job (succeeded, failed or
// cancelled). Until SetTraining installs a manager these routes answer 503.

// trainerRef holds the training manager, set once the model is loaded.
type trainerRef struct {
	p atomic.Pointer[training.Manager]
}

// SetTraining installs the training job manager behind /v1/soo/jobs (nil
// removes it). The caller runs it (Manager.Run) and stops it.
func (s *Server) SetTraining(m *training.Manager) { s.soo.trainer.p.Store(m) }

// registerTraining adds the training routes under /v1.
func (s *Server) registerTraining(r fiber.Router) {
	r.Post("/soo/jobs", s.submitJob)
	r.Get("/soo/jobs", s.listJobs)
	r.Get("/soo/jobs/:id", s.getJob)
	r.Get("/soo/jobs/:id/events", s.jobEvents)
	r.Post("/soo/jobs/:id/cancel", s.cancelJob)
	r.Get("/soo/jobs/:id/adapter/:file", s.jobAdapterFile)
}

func (s *Server) trainer() (*training.Manager, error) {
	m := s.soo.trainer.p.Load()
	if m == nil {
		if !s.ready.Load() {
			return nil, Unavailable("model_loading", "the model is still loading")
		}
		return nil, Unavailable("training_unavailable", "SOO training is not enabled on this server")
	}
	return m, nil
}

// jobError maps the training package's errors to API errors.
func jobError(err error, id string) error {
	var re *training.RequestError
	var ce *training.ConflictError
	switch {
	case errors.As(err, &re):
		param := re.Param
		if param == "" {
			param = specParam(re.Message)
		}
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Message: re.Message, Err: err}
	case errors.As(err, &ce):
		return &Error{Status: http.StatusConflict, Type: TypeConflict, Param: "adapter_name", Code: "adapter_exists", Message: ce.Message, Err: err}
	case errors.Is(err, training.ErrQueueFull):
		return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: "too_many_jobs",
			Message: strings.TrimPrefix(err.Error(), "training: "), Err: err}
	case errors.Is(err, training.ErrNotFound):
		return NotFound("id", "job_not_found", "no training job %q", clip(id))
	}
	// Anything else, a Redis outage included (training.ErrUnavailable: 503
	// naming Redis), is mapped by AsAPIError.
	return fmt.Errorf("training: %w", err)
}

// specParams map the start of training.Spec's validation messages (which
// the manager reports without a param) to the request field.
var specParams = []struct{ prefix, param string }{
	{"layer", "layer"}, {"unknown site", "site"}, {"site", "site"}, {"unknown pooling", "pooling"}, {"pooling", "pooling"},
	{"r ", "lora.r"}, {"alpha", "lora.alpha"}, {"dropout", "lora.dropout"}, {"unknown target module", "lora.target_modules"},
	{"target", "lora.target_modules"}, {"learning_rate", "learning_rate"}, {"weight_decay", "weight_decay"},
	{"epochs", "epochs"}, {"batch_size", "batch_size"},
	{"lm_weight", "lm_weight"}, {"lm_batch", "lm_batch"}, {"grad_side", "grad_side"},
}

// specParam guesses the field a spec validation message is about ("" when
// none matches).
func specParam(msg string) string {
	msg = strings.TrimPrefix(strings.TrimPrefix(msg, "training: "), "overlap: ")
	for _, p := range specParams {
		if strings.HasPrefix(msg, p.prefix) {
			return p.param
		}
	}
	return ""
}

// submitJob is POST /v1/soo/jobs.
func (s *Server) submitJob(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	var req training.JobRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	job, err := m.Submit(c.UserContext(), req)
	if err != nil {
		return jobError(err, "")
	}
	c.Locals(localModel, job.Model) // the base's id: never a client string
	return c.Status(http.StatusCreated).JSON(job)
}

// listJobs is GET /v1/soo/jobs.
func (s *Server) listJobs(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	jobs, err := m.List(c.UserContext())
	if err != nil {
		return jobError(err, "")
	}
	return c.JSON(fiber.Map{"object": "list", "data": jobs})
}

// jobAdapterFile is GET /v1/soo/jobs/{id}/adapter/{file}.
func (s *Server) jobAdapterFile(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	id, file := c.Params("id"), c.Params("file")
	b, err := m.AdapterFile(c.UserContext(), id, file)
	if errors.Is(err, training.ErrNoFile) {
		return NotFound("file", "file_not_found", "the job %q keeps no file %q: a job keeps its adapter's files only when it could not register them (see its result.files)",
			clip(id), clip(file))
	}
	if err != nil {
		return jobError(err, id)
	}
	ctype := fiber.MIMEOctetStream
	if strings.HasSuffix(file, ".json") {
		ctype = fiber.MIMEApplicationJSON
	}
	c.Set(fiber.HeaderContentType, ctype)
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf("attachment; filename=%q", file))
	return c.Send(b)
}

// getJob is GET /v1/soo/jobs/{id}.
func (s *Server) getJob(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	id := c.Params("id")
	job, err := m.Get(c.UserContext(), id)
	if err != nil {
		return jobError(err, id)
	}
	return c.JSON(job)
}

// cancelJob is POST /v1/soo/jobs/{id}/cancel.
func (s *Server) cancelJob(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	id := c.Params("id")
	job, err := m.Cancel(c.UserContext(), id)
	if err != nil {
		return jobError(err, id)
	}
	return c.JSON(job)
}

// finished reports whether a job status is terminal.
func finished(status string) bool {
	return status == training.StatusSucceeded || status == training.StatusFailed || status == training.StatusCancelled
}

// jobPoll is how often an event stream re-reads its job, so that it ends
// even when it missed the final event (slow subscribers miss events).
var jobPoll = time.Second

// jobEvents is GET /v1/soo/jobs/{id}/events.
func (s *Server) jobEvents(c *fiber.Ctx) error {
	m, err := s.trainer()
	if err != nil {
		return err
	}
	id := c.Params("id")
	ch, unsub := m.Subscribe(id)
	job, err := m.Get(c.UserContext(), id)
	if err != nil {
		unsub()
		return jobError(err, id)
	}
	ctx := s.soo.streams
	s.sse(c, func(w *bufio.Writer) int {
		defer unsub()
		if writeSSE(w, training.Event{Type: "status", Job: job}) != nil {
			return 499
		}
		if finished(job.Status) {
			return http.StatusOK
		}
		poll := time.NewTicker(jobPoll)
		defer poll.Stop()
		idle := time.Now()
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return http.StatusOK
				}
				if writeSSE(w, ev) != nil {
					return 499
				}
				idle = time.Now()
				if ev.Type == "status" && finished(ev.Job.Status) {
					return http.StatusOK
				}
			case <-poll.C:
				j, err := m.Get(ctx, id)
				if err == nil && finished(j.Status) {
					_ = writeSSE(w, training.Event{Type: "status", Job: j})
					return http.StatusOK
				}
				if time.Since(idle) >= sseKeepAlive {
					if writeComment(w, "keep-alive") != nil {
						return 499
					}
					idle = time.Now()
				}
			case <-ctx.Done():
				return http.StatusOK
			}
		}
	})
	return nil
}

// ErrNoRegistry is what TrainingEnv's Register returns until an adapter
// registry is wired in (UseRegistry): jobs then train, fail at registration
// and keep their files.
var ErrNoRegistry = errors.New("adapter registry not available: the trained adapter cannot be registered")

// UseRegistry makes the jobs of env register their adapters in reg
// (Registry.PutDir, replacing an existing adapter only for a job that sets
// "replace") and look names up in it (refusing a taken name at submit, and
// recognising after a crash an adapter a job had already registered).
func UseRegistry(env *training.Env, reg *adapters.Registry) {
	env.Register = func(ctx context.Context, name, dir string, replace bool) error {
		if _, err := reg.PutDir(ctx, name, dir, replace); err != nil {
			return fmt.Errorf("register adapter %q: %w", name, err)
		}
		return nil
	}
	env.Lookup = reg.Get
}

// TrainingEnv builds the environment of SOO training jobs on b: its cpu
// executor (a cpu executor over the same weights when b serves on xla),
// tokenization raw or through its chat template (one user turn with the
// generation prompt), the latent-SOO probe pairs for the overlap before and
// after, and the base's id and directory. Register returns
// ErrNoRegistry: set it to the adapter registry's registration.
func TrainingEnv(ctx context.Context, b *Base) (training.Env, error) {
	ex, ok := b.Sched.Executor().(*cpu.Executor)
	if b.trainer != nil {
		ex, ok = b.trainer, true
	}
	if !ok {
		return training.Env{}, fmt.Errorf("training: the base %q does not run on the cpu executor", b.ID)
	}
	encode := func(text string, useChat bool) ([]int32, error) {
		if !useChat {
			return b.Tokenizer.Encode(text, tokenizer.EncodeOptions{AddSpecial: true})
		}
		if b.Template == nil {
			return nil, fmt.Errorf("model %q has no chat template (set chat_template false)", b.ID)
		}
		s, err := b.Template.Render(ctx, []chat.Message{{Role: "user", Content: text}}, chat.RenderOptions{AddGenerationPrompt: true})
		if err != nil {
			return nil, fmt.Errorf("chat template: %w", err)
		}
		return b.Tokenizer.Encode(s, tokenizer.EncodeOptions{ParseSpecial: true})
	}
	pairs, err := overlap.EncodePairs(b.Tokenizer, overlap.ProbePairs())
	if err != nil {
		return training.Env{}, fmt.Errorf("training: probe pairs: %w", err)
	}
	return training.Env{
		Executor: ex,
		Encode:   encode,
		Probe:    training.ProbeAtLayer(ex, pairs),
		Register: func(context.Context, string, string, bool) error {
			return ErrNoRegistry
		},
		EncodeSegment: func(text string, special bool) ([]int32, error) {
			return b.Tokenizer.Encode(text, tokenizer.EncodeOptions{ParseSpecial: special})
		},
		ModelName:     b.ID,
		BaseModelPath: b.Dir,
	}, nil
}
