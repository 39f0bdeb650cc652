package training

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/internal/depend"
)

// Job statuses.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// JobRequest is the body of POST /v1/soo/jobs.
type JobRequest struct {
	Model        string          `json:"model"`
	AdapterName  string          `json:"adapter_name"`
	Dataset      json.RawMessage `json:"dataset"` // "paper" or [{"self","other"}...]
	Layer        *int            `json:"layer"`
	Site         string          `json:"site"`
	Pooling      string          `json:"pooling"`
	LoRA         LoRASpec        `json:"lora"`
	LearningRate float64         `json:"learning_rate"`
	WeightDecay  float64         `json:"weight_decay"`
	Epochs       int             `json:"epochs"`
	BatchSize    int             `json:"batch_size"`
	Seed         uint64          `json:"seed"`
	ChatTemplate bool            `json:"chat_template"` // tokenize pairs through the chat template (user turn + generation prompt)
	// Format is how the pairs' fragments are tokenized: "raw" or "chat"
	// (the chat template's user turn + generation prompt, as chat_template).
	Format string `json:"format"`
	// LMWeight is λ of the anchor term: loss = SOO + λ·LM on LMDataset.
	LMWeight float64 `json:"lm_weight"`
	// LMBatch is the documents per step of the LM term (default 4).
	LMBatch int `json:"lm_batch"`
	// LMDataset is "model" (the model directory's soo_capability.jsonl) or
	// a list of documents: strings or {"text"} or {"segments"} (LMText).
	LMDataset json.RawMessage `json:"lm_dataset"`
	// GradSide is "both" (default) or "other" (stop-gradient on self).
	GradSide string `json:"grad_side"`
	// Replace lets the job replace an existing adapter of its name when it
	// succeeds; without it an existing name is refused at submit.
	Replace bool `json:"replace"`
}

// LoRASpec is the "lora" object of a job request.
type LoRASpec struct {
	R             int      `json:"r"`
	Alpha         float64  `json:"alpha"`
	Dropout       *float64 `json:"dropout"`
	TargetModules []string `json:"target_modules"`
	UseRSLoRA     bool     `json:"use_rslora"`
}

// Job is a training job's public record.
type Job struct {
	ID            string      `json:"id"`
	Object        string      `json:"object"`
	Status        string      `json:"status"`
	Model         string      `json:"model"`
	AdapterName   string      `json:"adapter_name"`
	Spec          Spec        `json:"spec"`
	Pairs         int         `json:"pairs"`
	Progress      Progress    `json:"progress"`
	Losses        []float64   `json:"losses"`
	OverlapBefore *float64    `json:"overlap_before"`
	OverlapAfter  *float64    `json:"overlap_after"`
	Replace       bool        `json:"replace"`
	Result        *JobResult  `json:"result,omitempty"`
	Error         string      `json:"error,omitempty"`
	CreatedAt     int64       `json:"created_at"`
	StartedAt     int64       `json:"started_at,omitempty"`
	FinishedAt    int64       `json:"finished_at,omitempty"`
	request       *JobRequest `json:"-"`
}

// JobResult is the adapter a job trained, recorded once its training has
// finished and before it is registered: a job resumed after a crash that
// finds this very adapter registered under its name has succeeded.
type JobResult struct {
	SHA256       string `json:"sha256"`        // of adapter_model.safetensors
	ConfigSHA256 string `json:"config_sha256"` // of adapter_config.json
	Size         int64  `json:"size"`          // bytes of both files
	// Files are the PEFT files kept with a job whose adapter could not be
	// registered (Manager.AdapterFile); a finished run is never discarded.
	Files []string `json:"files,omitempty"`
}

// Event is what job subscribers receive: the job after a change.
type Event struct {
	Type string `json:"type"` // "status" or "progress"
	Job  Job    `json:"job"`
}

// Env is what jobs need from the server: the executor, tokenization, the
// overlap probe and adapter registration.
type Env struct {
	Executor *cpu.Executor
	// Encode tokenizes a prompt, raw or through the chat template.
	Encode func(text string, chat bool) ([]int32, error)
	// Probe returns the overlap MSE of adapter (nil: base) at spec's layer and
	// site on held-out probe pairs; nil skips the measurement.
	Probe func(ctx context.Context, a *lora.Adapter, spec Spec) (float64, error)
	// Register makes the adapter written in dir servable under name; it must
	// copy what it keeps (dir is removed afterwards). Without replace an
	// existing adapter of that name is an error wrapping adapters.ErrExists;
	// with replace the new adapter takes its place.
	Register func(ctx context.Context, name, dir string, replace bool) error
	// Lookup returns the record of the adapter registered under name, or an
	// error wrapping adapters.ErrNotFound. With it, a job to an existing
	// name without "replace" is refused at submit (ConflictError), and a job
	// resumed after a crash recognises the adapter it had already registered.
	Lookup func(ctx context.Context, name string) (adapters.Record, error)
	// EncodeSegment tokenizes a segment of an LM document without adding
	// anything (special: the text is one special token); nil refuses
	// documents with segments.
	EncodeSegment func(text string, special bool) ([]int32, error)
	// ModelName is the base model's id; requests must name it.
	ModelName string
	// BaseModelPath is written into adapter_config.json.
	BaseModelPath string
	// Limits bound the requests and the queue; zero fields take the defaults.
	Limits Limits
}

// Default limits of job requests and of the queue. The paper's recipes (15
// and 8 epochs of 156 pairs in batches of 4, r 8 and 4: 585 steps) use a
// small part of them.
const (
	DefaultMaxPending   = 16     // jobs queued or running at once
	DefaultMaxEpochs    = 100    // epochs of one job
	DefaultMaxPairs     = 10_000 // pairs of one job's dataset
	DefaultMaxSteps     = 20_000 // optimiser steps of one job: epochs x ceil(pairs / batch_size)
	DefaultMaxRank      = 64     // lora.r of one job
	DefaultMaxTextBytes = 8 << 10
	// MaxStringBytes bounds the other strings of a request (model, site,
	// pooling, each target module).
	MaxStringBytes = 256
	// maxTargets bounds the length of lora.target_modules.
	maxTargets = 16
)

// Limits bound what one job may ask for and how many jobs may wait. A
// request over a limit is refused with a RequestError naming the field; a
// submit beyond MaxPending with ErrQueueFull.
type Limits struct {
	MaxPending   int // jobs queued or running (default DefaultMaxPending)
	MaxEpochs    int // default DefaultMaxEpochs
	MaxPairs     int // default DefaultMaxPairs
	MaxSteps     int // default DefaultMaxSteps
	MaxRank      int // default DefaultMaxRank
	MaxTextBytes int // bytes of one "self" or "other" text (default DefaultMaxTextBytes)
}

func (l Limits) withDefaults() Limits {
	for _, f := range []struct {
		p   *int
		def int
	}{{&l.MaxPending, DefaultMaxPending}, {&l.MaxEpochs, DefaultMaxEpochs}, {&l.MaxPairs, DefaultMaxPairs},
		{&l.MaxSteps, DefaultMaxSteps}, {&l.MaxRank, DefaultMaxRank}, {&l.MaxTextBytes, DefaultMaxTextBytes}} {
		if *f.p <= 0 {
			*f.p = f.def
		}
	}
	return l
}

// ErrNotFound is returned for an unknown job id.
var ErrNotFound = errors.New("training: no such job")

// ErrQueueFull is wrapped by the error of a submit while Limits.MaxPending
// jobs are queued or running (HTTP 429).
var ErrQueueFull = errors.New("training: too many jobs queued or running")

// ErrNoFile is returned by AdapterFile for a file the job does not keep.
var ErrNoFile = errors.New("training: the job keeps no such file")

// ErrUnavailable is wrapped by the errors of a job store that cannot be
// reached or answers too slowly (Redis; HTTP 503). It is
// depend.ErrUnavailable: the errors also name the dependency.
var ErrUnavailable = depend.ErrUnavailable

// ConflictError is a job request refused because its adapter name is taken,
// by a registered adapter or by a job still queued or running, and the
// request does not set "replace" (HTTP 409).
type ConflictError struct {
	Name, Message string
}

func (e *ConflictError) Error() string { return "training: " + e.Message }

// RequestError is a job request rejected before it is queued (HTTP 400).
type RequestError struct {
	Param, Message string
}

func (e *RequestError) Error() string { return "training: " + e.Message }

// Manager queues and runs SOO training jobs, one at a time, persisting each
// job under dir so that a restarted process resumes unfinished jobs from
// their last epoch checkpoint. A Manager made by NewRedisManager keeps the
// queue, the job records, the checkpoints and the events in Redis instead,
// shared by several replicas (see redisqueue.go).
type Manager struct {
	dir    string
	env    Env
	limits Limits
	log    *slog.Logger
	rq     *redisQueue // nil: jobs on disk, queue in memory

	mu      sync.Mutex
	jobs    map[string]*Job
	queue   []string
	cancels map[string]context.CancelFunc
	subs    map[chan Event]string // channel -> job id ("" = all)
	wake    chan struct{}
	done    chan struct{}
}

// NewManager loads the jobs persisted under dir and requeues unfinished ones.
// Call Run to start working.
func NewManager(dir string, env Env, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.Default()
	}
	m := newManager(dir, env, log)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("training: jobs dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("training: jobs dir: %w", err)
	}
	var pending []*Job
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "job.json"))
		if err != nil {
			continue // a job directory whose record never landed: nothing was acknowledged
		}
		var rec struct {
			Job
			Request *JobRequest `json:"request"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			log.Warn("skipping unreadable job record", "dir", e.Name(), "err", err)
			continue
		}
		j := rec.Job
		j.request = rec.Request
		m.jobs[j.ID] = &j
		if j.Status == StatusQueued || j.Status == StatusRunning {
			pending = append(pending, &j)
		}
	}
	sort.Slice(pending, func(a, b int) bool { return pending[a].CreatedAt < pending[b].CreatedAt })
	for _, j := range pending {
		j.Status = StatusQueued
		m.queue = append(m.queue, j.ID)
		log.Info("requeued unfinished training job", "job", j.ID)
	}
	return m, nil
}

func newManager(dir string, env Env, log *slog.Logger) *Manager {
	return &Manager{dir: dir, env: env, limits: env.Limits.withDefaults(), log: log, jobs: map[string]*Job{},
		cancels: map[string]context.CancelFunc{}, subs: map[chan Event]string{}, wake: make(chan struct{}, 1),
		done: make(chan struct{})}
}

// lookupTimeout bounds the adapter lookup of a submit.
const lookupTimeout = 2 * time.Second

// Submit validates a request and queues a job. It refuses a request over
// the limits (RequestError), an adapter name that is registered, or that a
// job still queued or running on this Manager trains, unless the request
// sets "replace" (ConflictError), and a submit while Limits.MaxPending jobs
// are queued or running (ErrQueueFull). With Redis, two jobs to one new name
// may both be accepted: the later to finish then fails at registration, and
// keeps its files (JobResult.Files).
func (m *Manager) Submit(ctx context.Context, req JobRequest) (Job, error) {
	j, err := m.newJob(req)
	if err != nil {
		return Job{}, err
	}
	if !req.Replace && m.env.Lookup != nil {
		lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		_, err := m.env.Lookup(lctx, req.AdapterName)
		cancel()
		switch {
		case err == nil:
			return Job{}, nameTaken(req.AdapterName, "")
		case !errors.Is(err, adapters.ErrNotFound):
			return Job{}, fmt.Errorf("training: look up adapter %q: %w", req.AdapterName, err)
		}
	}
	if m.rq != nil {
		return m.rq.submit(ctx, j)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	pending := 0
	for _, o := range m.jobs {
		if terminal(o.Status) {
			continue
		}
		pending++
		if o.AdapterName == j.AdapterName && !req.Replace {
			return Job{}, nameTaken(req.AdapterName, o.ID)
		}
	}
	if pending >= m.limits.MaxPending {
		return Job{}, queueFull(pending)
	}
	if err := m.persist(j); err != nil {
		return Job{}, err
	}
	m.jobs[j.ID] = j
	m.queue = append(m.queue, j.ID)
	m.publish(Event{"status", *j})
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return m.snapshot(j), nil
}

// nameTaken is the ConflictError of a name registered (job "") or trained
// by job.
func nameTaken(name, job string) *ConflictError {
	what := fmt.Sprintf("the adapter %q already exists", name)
	if job != "" {
		what = fmt.Sprintf("the job %s, queued or running, already trains the adapter %q", job, name)
	}
	return &ConflictError{Name: name, Message: what +
		`: pass "replace": true to replace it when this job succeeds, or choose another adapter_name`}
}

// queueFull is the error of a submit while n jobs are pending.
func queueFull(n int) error {
	return fmt.Errorf("%w: %d jobs are queued or running; retry when one has finished", ErrQueueFull, n)
}

// clip shortens a client string echoed in an error message (at a UTF-8
// boundary).
func clip(s string) string {
	n := 64
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// checkStrings refuses the request's free strings when they are longer than
// any valid value could be (they are echoed in errors and stored).
func checkStrings(req *JobRequest) error {
	if len(req.AdapterName) > 64 {
		return &RequestError{"adapter_name", fmt.Sprintf("adapter_name is %d bytes; at most 64 characters of A-Z a-z 0-9 . _ -", len(req.AdapterName))}
	}
	for _, f := range []struct{ param, v string }{{"model", req.Model}, {"site", req.Site}, {"pooling", req.Pooling}, {"format", req.Format}, {"grad_side", req.GradSide}} {
		if len(f.v) > MaxStringBytes {
			return &RequestError{f.param, fmt.Sprintf("%s is %d bytes, more than the limit of %d", f.param, len(f.v), MaxStringBytes)}
		}
	}
	if len(req.LoRA.TargetModules) > maxTargets {
		return &RequestError{"lora.target_modules", fmt.Sprintf("lora.target_modules lists %d modules, more than the limit of %d", len(req.LoRA.TargetModules), maxTargets)}
	}
	for _, t := range req.LoRA.TargetModules {
		if len(t) > MaxStringBytes {
			return &RequestError{"lora.target_modules", fmt.Sprintf("a target module name is %d bytes, more than the limit of %d", len(t), MaxStringBytes)}
		}
	}
	return nil
}

// newJob validates a request and makes its queued job.
func (m *Manager) newJob(req JobRequest) (*Job, error) {
	cfg := m.env.Executor.Config()
	lim := m.limits
	if err := checkStrings(&req); err != nil {
		return nil, err
	}
	if req.Model != "" && req.Model != m.env.ModelName {
		return nil, &RequestError{"model", fmt.Sprintf("model %q is not the base model %q", clip(req.Model), m.env.ModelName)}
	}
	if err := adapters.ValidateName(req.AdapterName); err != nil {
		return nil, &RequestError{"adapter_name", err.Error()}
	}
	if req.AdapterName == m.env.ModelName {
		return nil, &RequestError{"adapter_name", fmt.Sprintf("%q is the base model's id; choose another adapter_name", req.AdapterName)}
	}
	switch {
	case req.Epochs < 0 || req.Epochs > lim.MaxEpochs:
		return nil, &RequestError{"epochs", fmt.Sprintf("epochs must be between 1 and %d, got %d", lim.MaxEpochs, req.Epochs)}
	case req.LoRA.R < 0 || req.LoRA.R > lim.MaxRank:
		return nil, &RequestError{"lora.r", fmt.Sprintf("lora.r must be between 1 and %d for a training job, got %d", lim.MaxRank, req.LoRA.R)}
	}
	spec := Spec{Site: req.Site, Pooling: Pooling(req.Pooling), Rank: req.LoRA.R, Alpha: req.LoRA.Alpha,
		Targets: req.LoRA.TargetModules, RSLoRA: req.LoRA.UseRSLoRA, LR: req.LearningRate, WeightDecay: req.WeightDecay,
		Epochs: req.Epochs, BatchSize: req.BatchSize, Seed: req.Seed, Dropout: Mistral7BRecipe().Dropout,
		LMWeight: req.LMWeight, LMBatch: req.LMBatch, GradSide: req.GradSide}
	switch req.Format {
	case "", "raw", "chat":
		if req.Format == "raw" && req.ChatTemplate {
			return nil, &RequestError{"format", `format "raw" contradicts chat_template true`}
		}
	default:
		return nil, &RequestError{"format", fmt.Sprintf("format must be \"raw\" or \"chat\", got %q", clip(req.Format))}
	}
	if !(req.LMWeight >= 0 && req.LMWeight <= MaxLMWeight) {
		return nil, &RequestError{"lm_weight", fmt.Sprintf("lm_weight must be in [0, %d], got %g", MaxLMWeight, req.LMWeight)}
	}
	hasLM := len(req.LMDataset) > 0 && string(req.LMDataset) != "null"
	switch {
	case req.LMWeight > 0 && !hasLM:
		return nil, &RequestError{"lm_dataset", `lm_weight > 0 needs lm_dataset ("model" or a list of documents)`}
	case req.LMWeight == 0 && hasLM:
		return nil, &RequestError{"lm_weight", "lm_dataset is given but lm_weight is 0"}
	case req.LMWeight == 0 && req.LMBatch != 0:
		return nil, &RequestError{"lm_batch", "lm_batch needs lm_weight > 0"}
	}
	if req.LoRA.Dropout != nil {
		spec.Dropout = *req.LoRA.Dropout
	}
	spec.Layer = DefaultLayer(cfg)
	if req.Layer != nil {
		spec.Layer = *req.Layer
	}
	if err := spec.Normalize(cfg); err != nil {
		return nil, &RequestError{"", err.Error()}
	}
	if spec.LMWeight > 0 {
		if _, err := m.lmDocs(&req); err != nil {
			return nil, err
		}
	}
	pairs, err := datasetPairs(req.Dataset)
	if err != nil {
		return nil, &RequestError{"dataset", err.Error()}
	}
	if len(pairs) > lim.MaxPairs {
		return nil, &RequestError{"dataset", fmt.Sprintf("the dataset has %d pairs, more than the limit of %d", len(pairs), lim.MaxPairs)}
	}
	for i, p := range pairs {
		if n := max(len(p.Self), len(p.Other)); n > lim.MaxTextBytes {
			return nil, &RequestError{"dataset", fmt.Sprintf("pair %d has a text of %d bytes, more than the limit of %d", i, n, lim.MaxTextBytes)}
		}
	}
	steps := spec.Epochs * ((len(pairs) + spec.BatchSize - 1) / spec.BatchSize)
	if steps > lim.MaxSteps {
		return nil, &RequestError{"epochs", fmt.Sprintf("%d epochs of %d pairs in batches of %d make %d steps, more than the limit of %d: train fewer epochs or pairs, or larger batches",
			spec.Epochs, len(pairs), spec.BatchSize, steps, lim.MaxSteps)}
	}
	if _, err := m.tokenize(pairs, useChat(&req), spec.MaxTokens); err != nil {
		return nil, &RequestError{"dataset", err.Error()}
	}
	j := &Job{ID: newID(), Object: "soo.job", Status: StatusQueued, Model: m.env.ModelName, AdapterName: req.AdapterName,
		Spec: spec, Pairs: len(pairs), Replace: req.Replace, CreatedAt: time.Now().Unix(), request: &req, Losses: []float64{}}
	j.Progress.Epochs = spec.Epochs
	j.Progress.Steps = steps
	return j, nil
}

func datasetPairs(raw json.RawMessage) ([]Pair, error) {
	if len(raw) == 0 || string(raw) == "null" || string(raw) == `"paper"` {
		return PaperPairs(), nil
	}
	var name string
	if json.Unmarshal(raw, &name) == nil {
		return nil, fmt.Errorf("unknown dataset %q (want \"paper\" or a list of {\"self\",\"other\"} pairs)", clip(name))
	}
	return ParsePairs(raw)
}

// useChat reports whether the request's fragments go through the chat template.
func useChat(req *JobRequest) bool { return req.ChatTemplate || req.Format == "chat" }

// maxLMDocTokens bounds the tokens of one LM document.
const maxLMDocTokens = 2048

// lmDocs reads and tokenizes the request's LM documents: "model" is the
// base model directory's CapabilityFile, a list is inline (each text within
// the limit of a pair's text, at most MaxPairs documents).
func (m *Manager) lmDocs(req *JobRequest) ([]LMDoc, error) {
	var name string
	var texts []LMText
	var err error
	if json.Unmarshal(req.LMDataset, &name) == nil {
		if name != "model" {
			return nil, &RequestError{"lm_dataset", fmt.Sprintf("unknown lm_dataset %q (want \"model\" or a list of documents)", clip(name))}
		}
		path := filepath.Join(m.env.BaseModelPath, CapabilityFile)
		data, rerr := os.ReadFile(path)
		if rerr != nil {
			return nil, &RequestError{"lm_dataset", fmt.Sprintf("lm_dataset \"model\": the model ships no capability set (%s): %v", CapabilityFile, errors.Unwrap(rerr))}
		}
		if texts, err = ParseLMTexts(data); err != nil {
			return nil, &RequestError{"lm_dataset", err.Error()}
		}
	} else {
		if texts, err = ParseLMTexts(req.LMDataset); err != nil {
			return nil, &RequestError{"lm_dataset", err.Error()}
		}
		if len(texts) > m.limits.MaxPairs {
			return nil, &RequestError{"lm_dataset", fmt.Sprintf("lm_dataset has %d documents, more than the limit of %d", len(texts), m.limits.MaxPairs)}
		}
		for i, t := range texts {
			n := len(t.Text)
			for _, s := range t.Segments {
				n += len(s.Text)
			}
			if n > m.limits.MaxTextBytes {
				return nil, &RequestError{"lm_dataset", fmt.Sprintf("lm document %d has %d bytes of text, more than the limit of %d", i, n, m.limits.MaxTextBytes)}
			}
		}
	}
	seg := m.env.EncodeSegment
	if seg == nil {
		seg = func(string, bool) ([]int32, error) {
			return nil, errors.New("this server cannot tokenize segments")
		}
	}
	docs, err := EncodeLMTexts(texts, func(s string) ([]int32, error) { return m.env.Encode(s, false) }, seg, maxLMDocTokens)
	if err != nil {
		return nil, &RequestError{"lm_dataset", err.Error()}
	}
	return docs, nil
}

func (m *Manager) tokenize(pairs []Pair, chat bool, maxLen int) ([]TokPair, error) {
	return Tokenize(pairs, func(s string) ([]int32, error) { return m.env.Encode(s, chat) }, maxLen)
}

// Get returns a job by id.
func (m *Manager) Get(ctx context.Context, id string) (Job, error) {
	if m.rq != nil {
		return m.rq.get(ctx, id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	return m.snapshot(j), nil
}

// List returns every job, newest first. With Redis, a failure to read the
// jobs is an error wrapping ErrUnavailable, never an empty list.
func (m *Manager) List(ctx context.Context) ([]Job, error) {
	if m.rq != nil {
		return m.rq.list(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Job, 0, len(m.jobs))
	for _, j := range m.jobs {
		out = append(out, m.snapshot(j))
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].CreatedAt != out[b].CreatedAt {
			return out[a].CreatedAt > out[b].CreatedAt
		}
		return out[a].ID > out[b].ID
	})
	return out, nil
}

// AdapterFile returns file (adapter_config.json or
// adapter_model.safetensors) of the adapter that job id trained and could
// not register (JobResult.Files); ErrNoFile when the job keeps no such file.
func (m *Manager) AdapterFile(ctx context.Context, id, file string) ([]byte, error) {
	j, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if j.Result == nil || !slices.Contains(j.Result.Files, file) {
		return nil, ErrNoFile
	}
	if m.rq != nil {
		return m.rq.resultFile(ctx, id, file)
	}
	b, err := os.ReadFile(filepath.Join(m.dir, id, "adapter", file))
	if err != nil {
		return nil, fmt.Errorf("training: job %s: %w", id, err)
	}
	return b, nil
}

// Cancel stops a queued or running job; its checkpoint is removed and no
// adapter is registered. Cancelling a finished job is a no-op.
func (m *Manager) Cancel(ctx context.Context, id string) (Job, error) {
	if m.rq != nil {
		return m.rq.cancel(ctx, id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	switch j.Status {
	case StatusQueued:
		m.queue = slices.DeleteFunc(m.queue, func(q string) bool { return q == id })
		m.finish(j, StatusCancelled, "")
	case StatusRunning:
		if c := m.cancels[id]; c != nil {
			c() // the worker marks it cancelled
		}
	}
	return m.snapshot(j), nil
}

// Subscribe returns a channel of events for job id ("" for all jobs) and a
// function that ends the subscription. Slow subscribers miss events rather
// than block training.
func (m *Manager) Subscribe(id string) (<-chan Event, func()) {
	ch := make(chan Event, 64)
	m.mu.Lock()
	m.subs[ch] = id
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
		m.mu.Unlock()
	}
}

// Run works through the queue until ctx ends; a job interrupted by ctx stays
// "running" on disk and resumes from its checkpoint on the next start.
//
// With Redis, Run is a worker: it takes jobs from the shared stream (and
// claims those a dead worker left), and a job interrupted by ctx stays
// pending for another worker (or this one, restarted) to claim.
func (m *Manager) Run(ctx context.Context) {
	defer close(m.done)
	if m.rq != nil {
		m.rq.run(ctx)
		return
	}
	for {
		m.mu.Lock()
		var j *Job
		if len(m.queue) > 0 {
			j = m.jobs[m.queue[0]]
			m.queue = m.queue[1:]
		}
		m.mu.Unlock()
		if j == nil {
			select {
			case <-ctx.Done():
				return
			case <-m.wake:
				continue
			}
		}
		m.runJob(ctx, j)
		if ctx.Err() != nil {
			return
		}
	}
}

// Done is closed when Run returns.
func (m *Manager) Done() <-chan struct{} { return m.done }

// Close releases what NewRedisManager opened (its event subscription; not
// the client). Call it after Run has returned. It is a no-op without Redis.
func (m *Manager) Close() error {
	if m.rq == nil {
		return nil
	}
	return m.rq.close()
}

func (m *Manager) runJob(ctx context.Context, j *Job) {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	m.cancels[j.ID] = cancel
	j.Status = StatusRunning
	if j.StartedAt == 0 {
		j.StartedAt = time.Now().Unix()
	}
	_ = m.persist(j)
	m.publish(Event{"status", *j})
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.cancels, j.ID)
		m.mu.Unlock()
	}()
	err := m.train(jctx, j)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err == nil:
		m.finish(j, StatusSucceeded, "")
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// The process is stopping: leave the job running on disk for resume.
		m.log.Info("training job interrupted; it resumes on restart", "job", j.ID)
	case errors.Is(err, context.Canceled):
		m.finish(j, StatusCancelled, "")
	default:
		m.log.Error("training job failed", "job", j.ID, "err", err)
		m.finish(j, StatusFailed, err.Error())
	}
}

func (m *Manager) train(ctx context.Context, j *Job) error {
	req := j.request
	if req == nil {
		return errors.New("training: job record has no request")
	}
	jdir := filepath.Join(m.dir, j.ID)
	out := filepath.Join(jdir, "adapter")
	if j.Result != nil {
		// A run before a crash trained the job to its end.
		if done, err := m.resume(ctx, j, out); done {
			return err
		}
	}
	pairs, err := datasetPairs(req.Dataset)
	if err != nil {
		return err
	}
	toks, err := m.tokenize(pairs, useChat(req), j.Spec.MaxTokens)
	if err != nil {
		return err
	}
	var docs []LMDoc
	if j.Spec.LMWeight > 0 {
		if docs, err = m.lmDocs(req); err != nil {
			return err
		}
	}
	ckdir := filepath.Join(jdir, "checkpoint")
	if m.rq != nil {
		if err := m.rq.fetchCheckpoint(ctx, j.ID, ckdir); err != nil {
			return err
		}
	}
	if m.env.Probe != nil && j.OverlapBefore == nil {
		v, err := m.env.Probe(ctx, nil, j.Spec)
		if err != nil {
			return fmt.Errorf("training: overlap before: %w", err)
		}
		m.mu.Lock()
		j.OverlapBefore = &v
		_ = m.persist(j)
		m.mu.Unlock()
	}
	var lastPut time.Time // Redis: progress writes to the record are throttled
	res, err := Train(ctx, m.env.Executor, toks, j.Spec, j.AdapterName, RunOptions{
		CheckpointDir: ckdir,
		LMDocs:        docs,
		Progress: func(p Progress) {
			m.mu.Lock()
			j.Progress = p
			// Steps before a resume may already be recorded: keep one loss per step.
			j.Losses = append(j.Losses[:min(len(j.Losses), max(p.Step-1, 0))], p.Loss)
			m.publish(Event{"progress", *j})
			if m.rq != nil && time.Since(lastPut) >= m.rq.progressEvery {
				lastPut = time.Now()
				_ = m.persist(j)
			}
			m.mu.Unlock()
		},
		EpochDone: func(int) {
			if m.rq != nil {
				m.rq.storeCheckpoint(j.ID, ckdir)
			}
			m.mu.Lock()
			lastPut = time.Now()
			_ = m.persist(j)
			m.mu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	j.Losses = res.Losses
	m.mu.Unlock()
	var after error // a failed measurement must not discard the trained adapter
	if m.env.Probe != nil {
		v, err := m.env.Probe(ctx, res.Adapter, j.Spec)
		switch {
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("training: overlap after: %w", err)
		case err != nil:
			after = fmt.Errorf("training: overlap after: %w", err)
		default:
			m.mu.Lock()
			j.OverlapAfter = &v
			m.mu.Unlock()
		}
	}
	if err := os.RemoveAll(out); err != nil {
		return fmt.Errorf("training: %w", err)
	}
	if err := adapters.WriteDir(out, res.Adapter, adapters.NewConfig(res.Adapter, j.Spec.Dropout, m.env.BaseModelPath)); err != nil {
		return err
	}
	f, err := adapters.ReadDir(out, adapters.Limits{})
	if err != nil {
		return fmt.Errorf("training: read back the adapter: %w", err)
	}
	// The result is recorded before it is registered: a job resumed after a
	// crash at any point from here on recognises its registered adapter.
	m.mu.Lock()
	j.Result = &JobResult{SHA256: adapters.Sum(f.Weights), ConfigSHA256: adapters.Sum(f.Config), Size: f.Size()}
	if err := m.persist(j); err != nil {
		m.log.Warn("training: record the trained adapter", "job", j.ID, "err", err)
	}
	m.mu.Unlock()
	if after != nil {
		return m.keep(j, out, after)
	}
	return m.register(ctx, j, out)
}

// resume finishes a job whose earlier run recorded its result (j.Result)
// and then stopped (a crash, a shutdown, a worker that died): when the
// adapter registered under the job's name is that result, the job has
// succeeded; when the run's files are still in out, they are registered.
// Otherwise (the files were on another worker) it returns false and the job
// trains again from its last checkpoint.
func (m *Manager) resume(ctx context.Context, j *Job, out string) (bool, error) {
	if m.registeredResult(ctx, j) {
		m.log.Info("training job had registered its adapter before it stopped", "job", j.ID, "adapter", j.AdapterName)
		_ = os.RemoveAll(out)
		return true, nil
	}
	f, err := adapters.ReadDir(out, adapters.Limits{})
	if err == nil && adapters.Sum(f.Weights) == j.Result.SHA256 && adapters.Sum(f.Config) == j.Result.ConfigSHA256 {
		m.log.Info("training job registers the adapter it trained before it stopped", "job", j.ID, "adapter", j.AdapterName)
		return true, m.register(ctx, j, out)
	}
	m.log.Info("training job's adapter files are gone; it trains again from its last checkpoint", "job", j.ID)
	return false, nil
}

// registeredResult reports whether the adapter registered under j's name is
// the adapter j trained (its recorded sha256 sums).
func (m *Manager) registeredResult(ctx context.Context, j *Job) bool {
	if m.env.Lookup == nil || j.Result == nil {
		return false
	}
	rec, err := m.env.Lookup(ctx, j.AdapterName)
	return err == nil && rec.SHA256 == j.Result.SHA256 && rec.ConfigSHA256 == j.Result.ConfigSHA256
}

// register makes the adapter in dir servable under j's name. An existing
// adapter that is j's own result (registered by a run that stopped before
// it recorded its success) counts as registered. When registration fails
// the files are kept with the job (keep).
func (m *Manager) register(ctx context.Context, j *Job, dir string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("training: %w", err)
	}
	var err error
	if m.env.Register != nil {
		err = m.env.Register(ctx, j.AdapterName, dir, j.Replace)
		if errors.Is(err, adapters.ErrExists) && m.registeredResult(ctx, j) {
			err = nil
		}
	}
	if err == nil {
		_ = os.RemoveAll(dir)
		return nil
	}
	if cerr := ctx.Err(); cerr != nil { // cancelled or stopping: a resume registers it
		return fmt.Errorf("training: register adapter %q: %w", j.AdapterName, errors.Join(cerr, err))
	}
	return m.keep(j, dir, fmt.Errorf("training: register adapter %q: %w", j.AdapterName, err))
}

// keep keeps the trained adapter in dir with job j, whose run ends with
// cause: on disk it stays in dir, with Redis it goes to the job's result
// key. It returns cause with a note of where the files are.
func (m *Manager) keep(j *Job, dir string, cause error) error {
	var err error
	if m.rq != nil {
		var f adapters.Files
		if f, err = adapters.ReadDir(dir, adapters.Limits{}); err == nil {
			err = m.rq.storeResult(j.ID, f)
		}
	}
	if err != nil {
		m.log.Error("training: keep the trained adapter", "job", j.ID, "err", err)
		return fmt.Errorf("%w; and the trained adapter could not be kept: %v", cause, err)
	}
	m.mu.Lock()
	j.Result.Files = []string{adapters.ConfigFile, adapters.WeightsFile}
	m.mu.Unlock()
	return fmt.Errorf("%w; the trained adapter's files are kept with the job (result.files)", cause)
}

// finish records a terminal status (m.mu held) and drops the checkpoint.
func (m *Manager) finish(j *Job, status, msg string) {
	j.Status = status
	j.Error = msg
	j.FinishedAt = time.Now().Unix()
	_ = os.RemoveAll(filepath.Join(m.dir, j.ID, "checkpoint"))
	if j.Result == nil || len(j.Result.Files) == 0 { // the files of a failed registration stay
		_ = os.RemoveAll(filepath.Join(m.dir, j.ID, "adapter"))
	}
	if err := m.persist(j); err != nil {
		m.log.Error("persist job", "job", j.ID, "err", err)
	}
	m.publish(Event{"status", *j})
}

// persist writes the job record atomically (m.mu held).
func (m *Manager) persist(j *Job) error {
	if m.rq != nil {
		return m.rq.put(j)
	}
	dir := filepath.Join(m.dir, j.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("training: persist job: %w", err)
	}
	b, err := json.Marshal(struct {
		Job
		Request *JobRequest `json:"request"`
	}{*j, j.request})
	if err != nil {
		return fmt.Errorf("training: persist job: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, "job.json"), b)
}

// publish sends ev to the subscribers (m.mu held): with Redis, to those of
// every replica through pub/sub.
func (m *Manager) publish(ev Event) {
	if m.rq != nil {
		m.rq.publish(context.Background(), ev)
		return
	}
	m.fanout(ev)
}

// fanout sends ev to this process's subscribers (m.mu held).
func (m *Manager) fanout(ev Event) {
	ev.Job = m.snapshot(&ev.Job)
	for ch, id := range m.subs {
		if id != "" && id != ev.Job.ID {
			continue
		}
		select {
		case ch <- ev:
		default:
		}
	}
}

// snapshot copies a job so callers never share its slices.
func (m *Manager) snapshot(j *Job) Job {
	c := *j
	c.Losses = slices.Clone(j.Losses)
	if c.Losses == nil {
		c.Losses = []float64{}
	}
	if j.Result != nil {
		r := *j.Result
		r.Files = slices.Clone(r.Files)
		c.Result = &r
	}
	return c
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sooj-" + hex.EncodeToString(b[:])
}
