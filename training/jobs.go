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

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/internal/atomicfile"
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
	Error         string      `json:"error,omitempty"`
	CreatedAt     int64       `json:"created_at"`
	StartedAt     int64       `json:"started_at,omitempty"`
	FinishedAt    int64       `json:"finished_at,omitempty"`
	request       *JobRequest `json:"-"`
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
	// copy what it keeps (dir is removed afterwards).
	Register func(ctx context.Context, name, dir string) error
	// ModelName is the base model's id; requests must name it.
	ModelName string
	// BaseModelPath is written into adapter_config.json.
	BaseModelPath string
}

// ErrNotFound is returned for an unknown job id.
var ErrNotFound = errors.New("training: no such job")

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
	dir string
	env Env
	log *slog.Logger
	rq  *redisQueue // nil: jobs on disk, queue in memory

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
	m := &Manager{dir: dir, env: env, log: log, jobs: map[string]*Job{}, cancels: map[string]context.CancelFunc{},
		subs: map[chan Event]string{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
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

// Submit validates a request and queues a job.
func (m *Manager) Submit(req JobRequest) (Job, error) {
	j, err := m.newJob(req)
	if err != nil {
		return Job{}, err
	}
	if m.rq != nil {
		return m.rq.submit(j)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
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

// newJob validates a request and makes its queued job.
func (m *Manager) newJob(req JobRequest) (*Job, error) {
	cfg := m.env.Executor.Config()
	if req.Model != "" && req.Model != m.env.ModelName {
		return nil, &RequestError{"model", fmt.Sprintf("model %q is not the base model %q", req.Model, m.env.ModelName)}
	}
	if err := adapters.ValidateName(req.AdapterName); err != nil {
		return nil, &RequestError{"adapter_name", err.Error()}
	}
	spec := Spec{Site: req.Site, Pooling: Pooling(req.Pooling), Rank: req.LoRA.R, Alpha: req.LoRA.Alpha,
		Targets: req.LoRA.TargetModules, RSLoRA: req.LoRA.UseRSLoRA, LR: req.LearningRate, WeightDecay: req.WeightDecay,
		Epochs: req.Epochs, BatchSize: req.BatchSize, Seed: req.Seed, Dropout: Mistral7BRecipe().Dropout}
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
	pairs, err := datasetPairs(req.Dataset)
	if err != nil {
		return nil, &RequestError{"dataset", err.Error()}
	}
	if _, err := m.tokenize(pairs, req.ChatTemplate, spec.MaxTokens); err != nil {
		return nil, &RequestError{"dataset", err.Error()}
	}
	j := &Job{ID: newID(), Object: "soo.job", Status: StatusQueued, Model: m.env.ModelName, AdapterName: req.AdapterName,
		Spec: spec, Pairs: len(pairs), CreatedAt: time.Now().Unix(), request: &req, Losses: []float64{}}
	j.Progress.Epochs = spec.Epochs
	j.Progress.Steps = spec.Epochs * ((len(pairs) + spec.BatchSize - 1) / spec.BatchSize)
	return j, nil
}

func datasetPairs(raw json.RawMessage) ([]Pair, error) {
	if len(raw) == 0 || string(raw) == "null" || string(raw) == `"paper"` {
		return PaperPairs(), nil
	}
	var name string
	if json.Unmarshal(raw, &name) == nil {
		return nil, fmt.Errorf("unknown dataset %q (want \"paper\" or a list of {\"self\",\"other\"} pairs)", name)
	}
	return ParsePairs(raw)
}

func (m *Manager) tokenize(pairs []Pair, chat bool, maxLen int) ([]TokPair, error) {
	return Tokenize(pairs, func(s string) ([]int32, error) { return m.env.Encode(s, chat) }, maxLen)
}

// Get returns a job by id.
func (m *Manager) Get(id string) (Job, error) {
	if m.rq != nil {
		return m.rq.get(id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return Job{}, ErrNotFound
	}
	return m.snapshot(j), nil
}

// List returns every job, newest first.
func (m *Manager) List() []Job {
	if m.rq != nil {
		return m.rq.list()
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
	return out
}

// Cancel stops a queued or running job; its checkpoint is removed and no
// adapter is registered. Cancelling a finished job is a no-op.
func (m *Manager) Cancel(id string) (Job, error) {
	if m.rq != nil {
		return m.rq.cancel(id)
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
	pairs, err := datasetPairs(req.Dataset)
	if err != nil {
		return err
	}
	toks, err := m.tokenize(pairs, req.ChatTemplate, j.Spec.MaxTokens)
	if err != nil {
		return err
	}
	jdir := filepath.Join(m.dir, j.ID)
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
	if m.env.Probe != nil {
		v, err := m.env.Probe(ctx, res.Adapter, j.Spec)
		if err != nil {
			return fmt.Errorf("training: overlap after: %w", err)
		}
		m.mu.Lock()
		j.OverlapAfter = &v
		m.mu.Unlock()
	}
	out := filepath.Join(jdir, "adapter")
	if err := adapters.WriteDir(out, res.Adapter, adapters.NewConfig(res.Adapter, j.Spec.Dropout, m.env.BaseModelPath)); err != nil {
		return err
	}
	defer os.RemoveAll(out)
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.env.Register != nil {
		if err := m.env.Register(ctx, j.AdapterName, out); err != nil {
			return fmt.Errorf("training: register adapter %q: %w", j.AdapterName, err)
		}
	}
	return nil
}

// finish records a terminal status (m.mu held) and drops the checkpoint.
func (m *Manager) finish(j *Job, status, msg string) {
	j.Status = status
	j.Error = msg
	j.FinishedAt = time.Now().Unix()
	_ = os.RemoveAll(filepath.Join(m.dir, j.ID, "checkpoint"))
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
		m.rq.publish(ev)
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
	return c
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sooj-" + hex.EncodeToString(b[:])
}
