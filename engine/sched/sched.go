// Package sched is continuous batching over an engine.Executor: a bounded
// request queue, up to MaxBatch running sequences, and one loop that runs a
// Forward step over all of them, samples each row's next token, decodes and
// stop-matches its text and streams the result to the request's Stream.
//
// Sequences join and leave the running batch at token boundaries. A new
// sequence's prompt is prefilled in the same Forward call as the other
// sequences' decode rows (one row per sequence per step), in chunks of at
// most PrefillChunk tokens, at most StepTokens tokens per step. Mixing
// prefill and decode in one call keeps the executor busy with a single
// batched pass per step (the weights are read once for all rows, which is
// what bounds decode speed on the CPU), and chunking bounds how much a long
// prompt delays the others' next token. Chunk boundaries are fixed multiples
// of PrefillChunk from the start of each prompt, never a function of what
// else is running, and the executor computes each row independently of the
// batch, so a greedy request produces the same tokens whatever it shares its
// steps with.
package sched

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/sample"
)

// Errors returned by Submit, or ending a choice as its final Event's Err
// (ErrNonFinite), possibly wrapped.
var (
	// ErrQueueFull means the queue holds MaxQueue requests already.
	ErrQueueFull = errors.New("sched: queue full")
	// ErrClosed means the scheduler is shutting down or closed.
	ErrClosed = errors.New("sched: scheduler closed")
	// ErrInvalid marks a request the scheduler cannot run as given.
	ErrInvalid = errors.New("sched: invalid request")
	// ErrNonFinite ends a choice whose logits hold a NaN or an infinity: the
	// model (its weights or the request's adapter) is numerically broken, and
	// sampling from such a row would only make up a token.
	ErrNonFinite = errors.New("sched: the model produced non-finite logits")
)

// FinishReason says why a choice stopped.
type FinishReason string

// Finish reasons, as the OpenAI API names them.
const (
	FinishStop   FinishReason = "stop"   // an EOS token or a stop string
	FinishLength FinishReason = "length" // max tokens or the context length
)

// TextDecoder turns a sequence's token ids into text incrementally
// (tokenizer.StreamDecoder satisfies it).
type TextDecoder interface {
	Add(id int32) string
	Flush() string
}

// Request is one generation request.
type Request struct {
	Prompt    []int32       // prompt token ids (at least one)
	Adapter   *lora.Adapter // nil for the base model
	Params    sample.Params // sampling; with a Seed, choice i uses Seed+i
	MaxTokens int           // generated tokens per choice; <= 0 means up to the context length
	Stop      []string      // stop strings, matched on the decoded text
	EOS       []int32       // token ids that end a choice (not emitted as text)
	N         int           // choices; <= 0 means 1
	// Logprobs asks for each token's log-probability; TopLogprobs > 0 also
	// asks for that many alternatives per token.
	Logprobs    bool
	TopLogprobs int
	// Capture, when set, captures the activations at these points for every
	// prompt token during choice 0's prefill (in its prefill rows, chunks
	// included, at no extra forward pass); read them with Stream.Captured.
	// Requests without it pay nothing.
	Capture []engine.Point
	// PrefillOnly runs the prompt's prefill without logits and generates
	// nothing (N must be 1): a capture-only request such as an overlap twin.
	// Its choice ends with FinishStop and no token once the prompt is in; the
	// prompt may fill the whole context.
	PrefillOnly bool
	// PromptLogprobs asks for every prompt token's log-probability given the
	// tokens before it (with TopLogprobs alternatives), computed in choice 0's
	// prefill rows; read them with Stream.PromptLogprobs once the prompt is in.
	PromptLogprobs bool
	// Constraint, when set, makes each choice's constraint (one call per
	// choice): before each sample it masks the tokens not allowed next (the
	// logprobs reported are those of the masked distribution), and a choice
	// whose constraint reports its output complete ends with FinishStop.
	// Requests without it pay nothing.
	Constraint func() sample.Constraint
}

// PromptLogprob is a prompt token's log-probability given the tokens before
// it; the first prompt token has none (First is set).
type PromptLogprob struct {
	Token   int32
	Logprob float32
	Top     []sample.TokenLogprob
	First   bool
}

// Event is one step of one choice: a generated token with the text it
// released, or (with Finish set) the end of the choice.
type Event struct {
	Index    int    // choice index
	Token    int32  // the generated token; -1 on a final event without one
	Text     string // text released by this event (may be empty)
	Logprob  float32
	Top      []sample.TokenLogprob // nil unless TopLogprobs > 0
	Finish   FinishReason          // set on the choice's last event
	Err      error                 // a failure that ended the choice
	Elapsed  time.Duration         // since Submit
	HasToken bool                  // Token, Logprob and Top are set
}

// Usage counts a request's tokens.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
}

// Options configures a Scheduler.
type Options struct {
	MaxBatch     int // running sequences; default 8
	MaxQueue     int // waiting requests before ErrQueueFull; default 64
	PrefillChunk int // prompt tokens per row per step; default 256
	StepTokens   int // tokens per Forward step (prefill chunks + decode rows); default 1024
	// MaxContext bounds prompt plus generated tokens; 0 means the model's
	// max_position_embeddings.
	MaxContext int
	// NewDecoder returns a fresh text decoder for a choice; nil means no
	// text (Event.Text stays empty and stop strings never match).
	NewDecoder func() TextDecoder
	// Observer, when set, is told about every step (for metrics).
	Observer Observer
	Logger   *slog.Logger
}

// Observer receives the scheduler's measurements.
type Observer interface {
	// Step reports a Forward step: its running sequences, tokens and duration.
	Step(running, tokens int, d time.Duration)
	// Queue reports the number of waiting requests after a change.
	Queue(waiting int)
	// Running reports the number of sequences in the running batch, before
	// each step and when the batch empties.
	Running(n int)
}

// Scheduler runs requests on an executor with continuous batching. Its
// methods are safe for concurrent use.
type Scheduler struct {
	ex   engine.Executor
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	queue   []*seqState // waiting choices, in arrival order
	queued  int         // requests (not choices) waiting
	closing bool
	wake    chan struct{}
	stopped chan struct{}
	cancel  context.CancelFunc
	running int // sequences in the batch (read by Stats)
}

// Stream delivers a request's events. Recv returns io.EOF after every choice
// has finished.
type Stream struct {
	mu       sync.Mutex
	events   []Event
	open     int // choices not yet finished
	notify   chan struct{}
	usage    Usage
	start    time.Time
	cancel   context.CancelFunc
	released bool

	// Capture (Request.Capture): acts accumulates choice 0's prompt
	// activations; captured is closed once they are complete or the choice
	// ended without them (capErr).
	acts     map[engine.Point]engine.Tensor2D
	captured chan struct{}
	capErr   error

	promptLP []PromptLogprob // Request.PromptLogprobs, filled during prefill
}

// seqState is one choice being generated.
type seqState struct {
	st      *Stream
	req     *Request
	ctx     context.Context
	index   int
	seq     engine.Sequence
	prompt  []int32
	fed     int // prompt tokens already prefilled
	last    int32
	gen     int
	sampler *sample.Sampler
	con     sample.Constraint // Request.Constraint's, or nil
	dec     TextDecoder
	stop    *sample.StopMatcher
	max     int
	done    bool
	queued  bool
	logits  []float32 // this sequence's logits, reused every step (engine.Row.LogitsBuf)
}

// logitsBuf returns ss's reused buffer for one row of logits: a decode
// batch's steps then make no vocabulary-sized garbage.
func (s *Scheduler) logitsBuf(ss *seqState) []float32 {
	if ss.logits == nil {
		ss.logits = make([]float32, s.ex.Config().VocabSize)
	}
	return ss.logits
}

// New returns a scheduler over ex and starts its loop.
func New(ex engine.Executor, opts Options) *Scheduler {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 8
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 64
	}
	if opts.PrefillChunk <= 0 {
		opts.PrefillChunk = 256
	}
	if opts.StepTokens <= 0 {
		opts.StepTokens = 1024
	}
	opts.StepTokens = max(opts.StepTokens, opts.PrefillChunk+opts.MaxBatch)
	if mp := ex.Config().MaxPositions; opts.MaxContext <= 0 || (mp > 0 && opts.MaxContext > mp) {
		opts.MaxContext = mp
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scheduler{ex: ex, opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), stopped: make(chan struct{}), cancel: cancel}
	go s.loop(ctx)
	return s
}

// Executor returns the executor the scheduler runs on.
func (s *Scheduler) Executor() engine.Executor { return s.ex }

// MaxContext returns the longest prompt-plus-generation the scheduler runs.
func (s *Scheduler) MaxContext() int { return s.opts.MaxContext }

// Stats returns the number of running sequences and waiting requests.
func (s *Scheduler) Stats() (running, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, s.queued
}

// Submit queues req. The request runs until every choice finishes, ctx is
// cancelled (its sequences leave the batch at the next token boundary) or the
// scheduler closes. It fails with ErrQueueFull, ErrClosed or ErrInvalid.
func (s *Scheduler) Submit(ctx context.Context, req Request) (*Stream, error) {
	if len(req.Prompt) == 0 {
		return nil, fmt.Errorf("%w: empty prompt", ErrInvalid)
	}
	if req.PrefillOnly && len(req.Prompt) > s.opts.MaxContext {
		return nil, fmt.Errorf("%w: prompt of %d tokens exceeds the context of %d", ErrInvalid, len(req.Prompt), s.opts.MaxContext)
	}
	if !req.PrefillOnly && len(req.Prompt) >= s.opts.MaxContext {
		return nil, fmt.Errorf("%w: prompt of %d tokens leaves no room in the context of %d", ErrInvalid, len(req.Prompt), s.opts.MaxContext)
	}
	if err := req.Params.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	n := max(req.N, 1)
	if req.PrefillOnly && n != 1 {
		return nil, fmt.Errorf("%w: a prefill-only request has one choice, not %d", ErrInvalid, n)
	}
	if n > s.opts.MaxBatch*4 {
		return nil, fmt.Errorf("%w: n=%d exceeds %d", ErrInvalid, n, s.opts.MaxBatch*4)
	}
	maxTok := max(s.opts.MaxContext-len(req.Prompt), 0)
	if req.MaxTokens > 0 {
		maxTok = min(maxTok, req.MaxTokens)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sched: submit: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	st := &Stream{open: n, notify: make(chan struct{}, 1), usage: Usage{PromptTokens: len(req.Prompt)}, start: time.Now(), cancel: cancel}
	r := req
	r.Prompt = append([]int32(nil), req.Prompt...)
	if len(r.Capture) > 0 {
		r.Capture = append([]engine.Point(nil), r.Capture...)
		st.captured = make(chan struct{})
		st.acts = make(map[engine.Point]engine.Tensor2D, len(r.Capture))
	}
	seqs := make([]*seqState, n)
	for i := range seqs {
		p := r.Params
		if p.Seed != nil {
			sd := *p.Seed + uint64(i)
			p.Seed = &sd
		}
		ss := &seqState{st: st, req: &r, ctx: rctx, index: i, prompt: r.Prompt, sampler: sample.New(p), stop: sample.NewStopMatcher(r.Stop), max: maxTok, queued: true}
		if s.opts.NewDecoder != nil {
			ss.dec = s.opts.NewDecoder()
		}
		if r.Constraint != nil {
			ss.con = r.Constraint()
		}
		seqs[i] = ss
	}
	s.mu.Lock()
	switch {
	case s.closing:
		s.mu.Unlock()
		cancel()
		return nil, ErrClosed
	case s.queued >= s.opts.MaxQueue:
		s.mu.Unlock()
		cancel()
		return nil, ErrQueueFull
	}
	s.queue = append(s.queue, seqs...)
	s.queued++
	q := s.queued
	s.mu.Unlock()
	if o := s.opts.Observer; o != nil {
		o.Queue(q)
	}
	// A cancelled request leaves the queue (or the batch) promptly.
	context.AfterFunc(rctx, s.poke)
	s.poke()
	return st, nil
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close stops accepting requests and waits for queued and running ones to
// finish; when ctx ends first, the rest are cancelled. It returns ctx's
// error in that case.
func (s *Scheduler) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.poke()
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
		s.cancel()
		<-s.stopped
		return fmt.Errorf("sched: close: %w", ctx.Err())
	}
}

// loop is the scheduler's only goroutine touching sequences.
func (s *Scheduler) loop(ctx context.Context) {
	defer close(s.stopped)
	var batch []*seqState
	for {
		// Drop finished and cancelled sequences; admit waiting ones.
		batch = s.sweep(batch, ctx)
		s.mu.Lock()
		var cancelled []*seqState
		kept := s.queue[:0]
		for _, ss := range s.queue {
			switch {
			case ss.ctx.Err() != nil || ctx.Err() != nil:
				cancelled = append(cancelled, ss)
			case len(batch) < s.opts.MaxBatch:
				batch = append(batch, ss)
			default:
				kept = append(kept, ss)
			}
		}
		clear(s.queue[len(kept):])
		s.queue = kept
		for _, ss := range append(cancelled, batch...) {
			if ss.queued {
				ss.queued = false
				if ss.index == 0 {
					s.queued--
				}
			}
		}
		s.running = len(batch)
		q, closing := s.queued, s.closing
		s.mu.Unlock()
		for _, ss := range cancelled {
			s.finish(ss, "", cancelErr(ss.ctx, ctx))
		}
		if o := s.opts.Observer; o != nil {
			o.Queue(q)
			o.Running(len(batch))
		}
		if len(batch) == 0 {
			if closing && q == 0 {
				return
			}
			select {
			case <-s.wake:
			case <-ctx.Done():
			}
			continue
		}
		s.step(ctx, batch)
	}
}

func cancelErr(reqCtx, schedCtx context.Context) error {
	if err := reqCtx.Err(); err != nil {
		return fmt.Errorf("sched: request: %w", err)
	}
	return fmt.Errorf("sched: shutting down: %w", schedCtx.Err())
}

// sweep removes finished sequences and ends cancelled ones.
func (s *Scheduler) sweep(batch []*seqState, schedCtx context.Context) []*seqState {
	kept := batch[:0]
	for _, ss := range batch {
		if !ss.done && (ss.ctx.Err() != nil || schedCtx.Err() != nil) {
			s.finish(ss, "", cancelErr(ss.ctx, schedCtx))
		}
		if !ss.done {
			kept = append(kept, ss)
		}
	}
	clear(batch[len(kept):])
	return kept
}

// step runs one Forward call over the batch and handles its outputs.
func (s *Scheduler) step(ctx context.Context, batch []*seqState) {
	rows := make([]engine.Row, 0, len(batch))
	owners := make([]*seqState, 0, len(batch))
	budget := s.opts.StepTokens
	captures := false
	// Decode rows first: they cost one token each and are never delayed.
	for _, ss := range batch {
		if ss.fed == len(ss.prompt) {
			rows = append(rows, engine.Row{Seq: ss.seq, Tokens: []int32{ss.last}, Adapter: ss.req.Adapter, Logits: engine.LogitsLast, LogitsBuf: s.logitsBuf(ss)})
			owners = append(owners, ss)
			budget--
		}
	}
	for _, ss := range batch {
		if ss.fed == len(ss.prompt) {
			continue
		}
		end := min(ss.fed+s.opts.PrefillChunk-ss.fed%s.opts.PrefillChunk, len(ss.prompt))
		if end-ss.fed > budget && len(rows) > 0 {
			continue // next step
		}
		if ss.seq == nil {
			ss.seq = s.ex.NewSequence()
		}
		mode := engine.LogitsNone
		if end == len(ss.prompt) && !ss.req.PrefillOnly {
			mode = engine.LogitsLast
		}
		if ss.req.PromptLogprobs && ss.index == 0 {
			mode = engine.LogitsAll
		}
		row := engine.Row{Seq: ss.seq, Tokens: ss.prompt[ss.fed:end], Adapter: ss.req.Adapter, Logits: mode}
		if mode == engine.LogitsLast {
			row.LogitsBuf = s.logitsBuf(ss)
		}
		if ss.st.captured != nil && ss.index == 0 {
			row.Capture = &engine.Capture{Points: ss.req.Capture}
			captures = true
		}
		rows = append(rows, row)
		owners = append(owners, ss)
		budget -= end - ss.fed
	}
	if captures {
		keepLayers(rows, owners)
	}
	tokens := 0
	for _, r := range rows {
		tokens += len(r.Tokens)
	}
	t0 := time.Now()
	outs, err := s.ex.Forward(ctx, rows)
	if o := s.opts.Observer; o != nil {
		o.Step(len(batch), tokens, time.Since(t0))
	}
	if err != nil {
		s.log.Error("forward step failed", "rows", len(rows), "err", err)
		for _, ss := range owners {
			s.finish(ss, "", fmt.Errorf("sched: forward: %w", err))
		}
		return
	}
	for i, ss := range owners {
		if ss.fed < len(ss.prompt) {
			if rows[i].Logits == engine.LogitsAll {
				if err := ss.st.addPromptLogprobs(ss, outs[i].Logits); err != nil {
					s.log.Warn("non-finite logits", "err", err)
					s.finish(ss, "", err)
					continue
				}
			}
			ss.fed += len(rows[i].Tokens)
			if rows[i].Capture != nil {
				ss.st.addActs(outs[i].Acts, ss.fed == len(ss.prompt))
			}
			if ss.fed < len(ss.prompt) {
				continue
			}
			if ss.req.PrefillOnly {
				s.finish(ss, FinishStop, nil)
				continue
			}
		}
		s.advance(ss, outs[i].Logits.Row(outs[i].Logits.Rows-1))
	}
}

// addPromptLogprobs records, from a prefill chunk's logits (one row per
// chunk token), the log-probability of each following prompt token. A row
// holding a NaN or an infinity is an ErrNonFinite error.
func (st *Stream) addPromptLogprobs(ss *seqState, logits engine.Tensor2D) error {
	var add []PromptLogprob
	if ss.fed == 0 {
		add = append(add, PromptLogprob{Token: ss.prompt[0], First: true})
	}
	for j := 0; j < logits.Rows; j++ {
		next := ss.fed + j + 1
		if next >= len(ss.prompt) {
			break
		}
		row := logits.Row(j)
		if i := nonFinite(row); i >= 0 {
			return nonFiniteErr(ss, ss.fed+j, i, row[i])
		}
		lp := sample.LogSoftmax(row)
		e := PromptLogprob{Token: ss.prompt[next], Logprob: lp[ss.prompt[next]]}
		if ss.req.TopLogprobs > 0 {
			e.Top = sample.Top(lp, ss.req.TopLogprobs)
		}
		add = append(add, e)
	}
	st.mu.Lock()
	st.promptLP = append(st.promptLP, add...)
	st.mu.Unlock()
	return nil
}

// PromptLogprobs returns the prompt tokens' log-probabilities computed so far
// (all of them once the first token has been generated).
func (st *Stream) PromptLogprobs() []PromptLogprob {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.promptLP)
}

// keepLayers makes sure a step whose rows all skip logits still runs every
// layer when one of its sequences continues afterwards: an executor may stop
// a logits-free step at the last captured layer, which would leave such a
// sequence's cache incomplete. One continuing row then asks for its last
// token's logits (ignored). Only steps with a capture row get here.
func keepLayers(rows []engine.Row, owners []*seqState) {
	cont := -1
	for i, r := range rows {
		if r.Logits != engine.LogitsNone {
			return
		}
		if ss := owners[i]; cont < 0 && !(ss.req.PrefillOnly && ss.fed+len(r.Tokens) == len(ss.prompt)) {
			cont = i
		}
	}
	if cont >= 0 {
		rows[cont].Logits = engine.LogitsLast
	}
}

// nonFinite returns the index of the first NaN or infinity in v, or -1.
// It reads each value's exponent bits only: a vocabulary's row costs a few
// microseconds, next to the milliseconds of the step that made it.
func nonFinite(v []float32) int {
	for i, x := range v {
		if math.Float32bits(x)&0x7f800000 == 0x7f800000 {
			return i
		}
	}
	return -1
}

// nonFiniteErr is the error that ends ss when its logits row (the prompt
// token at position pos, or the next token when pos < 0) holds v at index i.
func nonFiniteErr(ss *seqState, pos, i int, v float32) error {
	what := fmt.Sprintf("after %d generated tokens", ss.gen)
	if pos >= 0 {
		what = fmt.Sprintf("at prompt position %d", pos)
	}
	return fmt.Errorf("%w: logit %d is %v %s (choice %d); the adapter or the weights are numerically broken", ErrNonFinite, i, v, what, ss.index)
}

// advance samples ss's next token from logits and emits it; logits holding
// a NaN or an infinity end the choice with ErrNonFinite instead.
func (s *Scheduler) advance(ss *seqState, logits []float32) {
	r := ss.req
	if i := nonFinite(logits); i >= 0 {
		err := nonFiniteErr(ss, -1, i, logits[i])
		s.log.Warn("non-finite logits", "err", err)
		s.finish(ss, "", err)
		return
	}
	ev := Event{Index: ss.index, HasToken: true}
	if ss.con != nil && !ss.con.Mask(logits) {
		s.finish(ss, "", errors.New("sched: the request's constraint allows no next token"))
		return
	}
	var lp []float32
	if r.Logprobs || r.TopLogprobs > 0 {
		lp = sample.LogSoftmax(logits)
	}
	tok := ss.sampler.Sample(logits)
	if ss.con != nil && math.IsInf(float64(logits[tok]), -1) {
		// Rounding in the sampler's draw can land on a zero-probability
		// token; a constrained choice takes the best allowed one instead.
		tok = sample.Argmax(logits)
	}
	ss.last = tok
	ss.gen++
	ev.Token = tok
	if lp != nil {
		ev.Logprob = lp[tok]
		if r.TopLogprobs > 0 {
			ev.Top = sample.Top(lp, r.TopLogprobs)
		}
	}
	ss.st.addCompletion(1)
	for _, e := range r.EOS {
		if tok == e {
			ss.last = -1
			s.finish(ss, FinishStop, nil)
			return
		}
	}
	var stopped bool
	if ss.dec != nil {
		ev.Text, stopped = ss.stop.Push(ss.dec.Add(tok))
	}
	if stopped {
		ev.Finish = FinishStop
		s.emitFinal(ss, ev)
		return
	}
	if ss.con != nil && ss.con.Accept(tok) {
		ev.Finish = FinishStop
		ev.Text += s.flushText(ss)
		s.emitFinal(ss, ev)
		return
	}
	if ss.gen >= ss.max || len(ss.prompt)+ss.gen >= s.opts.MaxContext {
		ev.Finish = FinishLength
		ev.Text += s.flushText(ss)
		s.emitFinal(ss, ev)
		return
	}
	ss.st.push(ev)
}

func (s *Scheduler) flushText(ss *seqState) string {
	if ss.dec == nil {
		return ""
	}
	out, stopped := ss.stop.Push(ss.dec.Flush())
	if !stopped {
		out += ss.stop.Flush()
	}
	return out
}

// finish ends ss with a final event that carries no token.
func (s *Scheduler) finish(ss *seqState, reason FinishReason, err error) {
	if ss.done {
		return
	}
	ev := Event{Index: ss.index, Token: -1, Finish: reason, Err: err}
	if err == nil {
		ev.Text = s.flushText(ss)
	}
	s.emitFinal(ss, ev)
}

func (s *Scheduler) emitFinal(ss *seqState, ev Event) {
	ss.done = true
	if ss.index == 0 && ss.st.captured != nil {
		ss.st.endCapture(ev.Err)
	}
	if ss.seq != nil {
		ss.seq.Release()
		ss.seq = nil
	}
	if ev.Err != nil && ev.Finish == "" {
		ev.Finish = FinishStop
	}
	ss.st.push(ev)
	ss.st.closeOne()
}

func (st *Stream) push(ev Event) {
	st.mu.Lock()
	ev.Elapsed = time.Since(st.start)
	st.events = append(st.events, ev)
	st.mu.Unlock()
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

// addActs appends a prefill chunk's captured activations; complete marks the
// prompt's last chunk.
func (st *Stream) addActs(acts map[engine.Point]engine.Tensor2D, complete bool) {
	st.mu.Lock()
	for p, t := range acts {
		if old, ok := st.acts[p]; ok {
			old.Rows += t.Rows
			old.Data = append(old.Data, t.Data...)
			t = old
		}
		st.acts[p] = t
	}
	st.mu.Unlock()
	if complete {
		st.endCapture(nil)
	}
}

// endCapture closes the capture; err explains a capture that never
// completed (nil on success or when it had completed).
func (st *Stream) endCapture(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	select {
	case <-st.captured:
		return
	default:
	}
	if err == nil && st.acts != nil && !st.capDone() {
		err = errors.New("sched: the request ended before its prompt was prefilled")
	}
	st.capErr = err
	close(st.captured)
}

// capDone reports whether every captured tensor covers the whole prompt (st.mu held).
func (st *Stream) capDone() bool {
	for _, t := range st.acts {
		if t.Rows != st.usage.PromptTokens {
			return false
		}
	}
	return len(st.acts) > 0
}

// Captured waits until the prompt's activations at Request.Capture's points
// are complete and returns them ([prompt tokens, hidden] per point). It
// fails when the request asked for no capture, ended before its prefill
// finished, or ctx ends first. The tensors are the caller's once returned.
func (st *Stream) Captured(ctx context.Context) (map[engine.Point]engine.Tensor2D, error) {
	if st.captured == nil {
		return nil, errors.New("sched: the request captured nothing")
	}
	select {
	case <-st.captured:
	case <-ctx.Done():
		return nil, fmt.Errorf("sched: captured: %w", ctx.Err())
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.capErr != nil {
		return nil, fmt.Errorf("sched: capture failed: %w", st.capErr)
	}
	return st.acts, nil
}

func (st *Stream) addCompletion(n int) {
	st.mu.Lock()
	st.usage.CompletionTokens += n
	st.mu.Unlock()
}

func (st *Stream) closeOne() {
	st.mu.Lock()
	st.open--
	if st.open == 0 && !st.released {
		st.released = true
		st.cancel()
	}
	st.mu.Unlock()
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

// Recv returns the next event, waiting for it; io.EOF once every choice has
// finished and its events were read. Ending ctx makes Recv return ctx's
// error (it does not cancel the request: cancel the ctx given to Submit).
func (st *Stream) Recv(ctx context.Context) (Event, error) {
	for {
		st.mu.Lock()
		if len(st.events) > 0 {
			ev := st.events[0]
			st.events[0] = Event{}
			st.events = st.events[1:]
			st.mu.Unlock()
			return ev, nil
		}
		open := st.open
		st.mu.Unlock()
		if open == 0 {
			return Event{}, io.EOF
		}
		select {
		case <-st.notify:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("sched: recv: %w", ctx.Err())
		}
	}
}

// Usage returns the prompt tokens and the tokens generated so far (over all
// choices; a choice's EOS token counts).
func (st *Stream) Usage() Usage {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.usage
}

// Cancel abandons the request: its sequences leave the batch at the next
// token boundary.
func (st *Stream) Cancel() { st.cancel() }
