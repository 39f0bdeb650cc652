package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/overlap"
)

// Overlap routes (DESIGN §3, §5):
//
//	POST /v1/overlap               {"model","self","other"|"swap","layers","sites","pooling"}
//	GET  /v1/overlap/requests      ?limit=N (default 100), newest first
//	GET  /v1/overlap/requests/{id}
//	GET  /v1/overlap/stream        server-sent events, one record per event
//
// "self" and "other" are each a prompt (a string, or a list of token ids) or
// a list of chat messages; messages are compared after the chat template is
// applied (with the generation prompt), and both must be of the same kind.
// "swap" builds "other" from "self" by word swap (overlap.Swap). Both prompts
// run through the scheduler as logits-free, capture-only prefills, in one
// step when the batch has room, through the adapter "model" names.
//
// A value computed from activations that are not finite (a numerically
// broken model or adapter) is written as null, and its layer entry gets
// "nonfinite": the reason (overlap.LayerResult), in the response, the
// "soo" object, the records and the event stream alike; the histograms skip
// it. Such a result is still a 200: the measurement ran, and says what it
// found.

// defaultOverlapLimit is the number of records GET /v1/overlap/requests
// returns without a limit.
const defaultOverlapLimit = 100

// sseKeepAlive is how often idle event streams send a comment, which also
// notices clients that went away.
var sseKeepAlive = 15 * time.Second

// sooState is the server's overlap and training state.
type sooState struct {
	store    overlap.Store
	recorder *overlap.Recorder
	// streams is the parent of every endless event stream; Shutdown cancels
	// it so that draining connections does not wait for them.
	streams    context.Context
	stopStream context.CancelFunc
	trainer    trainerRef
}

// initSOO sets up the overlap record store and histograms.
func (s *Server) initSOO() {
	st := s.opts.OverlapStore
	if st == nil {
		st = overlap.NewRing(s.opts.OverlapRing)
	}
	m, err := overlap.NewMetrics(s.metrics.Registry)
	if err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			m = nil // metrics shared with another server: its histograms already record
		}
		s.log.Warn("overlap metrics not registered", "err", err)
	}
	s.soo.store = st
	s.soo.recorder = &overlap.Recorder{Store: st, Metrics: m}
	s.soo.streams, s.soo.stopStream = context.WithCancel(context.Background())
}

// OverlapStore returns the store of per-request overlap records.
func (s *Server) OverlapStore() overlap.Store { return s.soo.store }

// registerOverlap adds the overlap routes under /v1.
func (s *Server) registerOverlap(r fiber.Router) {
	r.Post("/overlap", s.postOverlap)
	r.Get("/overlap/requests", s.listOverlap)
	r.Get("/overlap/requests/:id", s.getOverlap)
	r.Get("/overlap/stream", s.streamOverlap)
}

// overlapRequest is the body of POST /v1/overlap.
type overlapRequest struct {
	Model   string            `json:"model"`
	Self    json.RawMessage   `json:"self"`
	Other   json.RawMessage   `json:"other"`
	Swap    map[string]string `json:"swap"`
	Layers  []int             `json:"layers"`
	Sites   []string          `json:"sites"`
	Pooling string            `json:"pooling"`
}

// overlapResponse is POST /v1/overlap's answer: the result of DESIGN §5
// with the record's id.
type overlapResponse struct {
	ID     string `json:"id"`
	Object string `json:"object"`
	Model  string `json:"model"`
	*overlap.Result
}

// postOverlap is POST /v1/overlap: the overlap of a pair, no generation.
func (s *Server) postOverlap(c *fiber.Ctx) error {
	var req overlapRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	target, err := s.resolve(c.UserContext(), req.Model)
	if err != nil {
		return err
	}
	c.Locals(localModel, target.ID)
	spec, err := parseSpec("", target.Base, req.Layers, req.Sites, req.Pooling)
	if err != nil {
		return err
	}
	self, other, err := s.overlapPair(c.UserContext(), target.Base, &req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	sst, err := target.Base.Sched.Submit(ctx, sched.Request{Prompt: self, Adapter: target.Adapter, PrefillOnly: true, Capture: spec.Points()})
	if err != nil {
		return fmt.Errorf("overlap: submit self: %w", err)
	}
	ost, err := target.Base.Sched.Submit(ctx, sched.Request{Prompt: other, Adapter: target.Adapter, PrefillOnly: true, Capture: spec.Points()})
	if err != nil {
		return fmt.Errorf("overlap: submit other: %w", err)
	}
	res, err := computeOverlap(ctx, spec, sst, ost)
	if err != nil {
		return err
	}
	id := newID("ovl-")
	s.recordOverlap(id, target, res)
	return c.JSON(overlapResponse{ID: id, Object: "overlap", Model: target.ID, Result: res})
}

// computeOverlap waits for both prompts' captures and compares them.
func computeOverlap(ctx context.Context, spec overlap.Spec, self, other *sched.Stream) (*overlap.Result, error) {
	sa, err := self.Captured(ctx)
	if err != nil {
		return nil, fmt.Errorf("overlap: self prompt: %w", err)
	}
	oa, err := other.Captured(ctx)
	if err != nil {
		return nil, fmt.Errorf("overlap: other prompt: %w", err)
	}
	res, err := overlap.Compute(spec, sa, oa)
	if err != nil {
		return nil, fmt.Errorf("overlap: %w", err)
	}
	return res, nil
}

// recordOverlap stores a result and observes its histograms.
func (s *Server) recordOverlap(id string, t Target, res *overlap.Result) {
	adapter := ""
	if t.Adapter != nil {
		adapter = t.ID
	}
	if !res.Finite() {
		// The result still goes out: its JSON writes the values as null
		// with the reason (overlap.LayerResult), and the histograms skip them.
		s.log.Warn("overlap with non-finite values", "id", id, "model", t.ID, "reason", firstNonFinite(res))
	}
	rec := overlap.NewRecord(id, t.Base.ID, adapter, res, time.Now())
	if err := s.soo.recorder.Record(context.WithoutCancel(s.ctx), rec); err != nil {
		s.log.Warn("overlap record not stored", "id", id, "err", err)
	}
}

// firstNonFinite returns the reason of res's first entry that is not
// finite, with its layer and site.
func firstNonFinite(res *overlap.Result) string {
	for _, l := range res.Layers {
		if !l.Finite() {
			return fmt.Sprintf("layer %d %s: %s", l.Layer, l.Site, l.NonFinite)
		}
	}
	return ""
}

// parseSpec validates "layers", "sites" and "pooling" against b; prefix is
// put before the param of errors ("soo." for the extension).
func parseSpec(prefix string, b *Base, layers []int, sites []string, pooling string) (overlap.Spec, error) {
	spec, err := overlap.ParseSpec(layers, sites, pooling)
	if err == nil {
		spec, err = spec.Resolve(b.Config.Layers)
	}
	if err != nil {
		return overlap.Spec{}, overlapInvalid(prefix, err)
	}
	return spec, nil
}

// overlapInvalid turns an overlap.InputError into a 400 naming prefix+param.
func overlapInvalid(prefix string, err error) error {
	var ie *overlap.InputError
	if errors.As(err, &ie) {
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: prefix + ie.Param,
			Message: strings.TrimPrefix(ie.Message, "overlap: "), Err: err}
	}
	return err
}

// reparam renames the param of a 400 about the request's own prompt
// ("messages", "messages[2].content", "prompt") to field.
func reparam(err error, field string) error {
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		return err
	}
	c := *ae
	switch {
	case c.Param == "prompt" || c.Param == "messages" || c.Param == "":
		c.Param = field
	case strings.HasPrefix(c.Param, "messages"):
		c.Param = field + strings.TrimPrefix(c.Param, "messages")
	}
	return &c
}

// isMessages reports whether raw is a JSON list of objects (chat messages).
func isMessages(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '[' {
		return false
	}
	rest := bytes.TrimSpace(raw[1:])
	return len(rest) > 0 && rest[0] == '{'
}

// isTextPrompt reports whether raw is a string or a one-string list.
func isTextPrompt(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '[' {
		raw = bytes.TrimSpace(raw[1:])
	}
	return len(raw) > 0 && raw[0] == '"'
}

func absent(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// overlapPair tokenizes the request's self and other (or swapped) prompts.
func (s *Server) overlapPair(ctx context.Context, b *Base, req *overlapRequest) ([]int32, []int32, error) {
	if absent(req.Self) {
		return nil, nil, Invalid("self", "self is required: a prompt or a list of chat messages")
	}
	hasOther := !absent(req.Other)
	switch {
	case hasOther && req.Swap != nil:
		return nil, nil, Invalid("swap", "give either other or swap, not both")
	case !hasOther && req.Swap == nil:
		return nil, nil, Invalid("other", "other is required (the other-referencing prompt), or swap to build it from self")
	}
	var swap *overlap.Swap
	if req.Swap != nil {
		var err error
		if swap, err = overlap.NewSwap(req.Swap); err != nil {
			return nil, nil, overlapInvalid("", err)
		}
	}
	chatSelf := isMessages(req.Self)
	if hasOther && isMessages(req.Other) != chatSelf {
		return nil, nil, Invalid("other", "self and other must both be prompts or both be chat messages")
	}
	var self, other []int32
	var err error
	if chatSelf {
		msgs, err := s.chatInput(req.Self, "self")
		if err != nil {
			return nil, nil, err
		}
		if self, err = s.chatTokens(ctx, b, msgs, "self"); err != nil {
			return nil, nil, err
		}
		if hasOther {
			other, err = s.chatTwin(ctx, b, req.Other, "other")
		} else {
			other, err = s.swapChat(ctx, b, msgs, swap, "swap")
		}
	} else {
		var text string
		if self, text, err = s.completionPrompt(b, req.Self); err != nil {
			return nil, nil, reparam(err, "self")
		}
		if hasOther {
			other, err = s.promptTwin(b, req.Other, "other")
		} else {
			other, err = swapPrompt(b, req.Self, text, swap, "swap")
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if err := checkCapture(b, self, "self"); err != nil {
		return nil, nil, err
	}
	return self, other, checkCapture(b, other, "other")
}

// checkCapture rejects a capture-only prompt longer than the context.
func checkCapture(b *Base, ids []int32, param string) error {
	if n := b.Context(); len(ids) > n {
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Code: "context_length_exceeded",
			Message: fmt.Sprintf("%s is %d tokens; this model's context is %d tokens", param, len(ids), n)}
	}
	return nil
}

// chatInput decodes and validates a list of chat messages given in field.
func (s *Server) chatInput(raw json.RawMessage, field string) ([]chat.Message, error) {
	var in []chatMessage
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, Invalid(field, "%s must be a list of chat messages", field)
	}
	msgs, err := s.messages(in)
	if err != nil {
		return nil, reparam(err, field)
	}
	return msgs, nil
}

// chatTokens renders msgs with b's chat template and tokenizes the result.
func (s *Server) chatTokens(ctx context.Context, b *Base, msgs []chat.Message, field string) ([]int32, error) {
	text, err := renderChat(ctx, b, msgs)
	if err != nil {
		return nil, reparam(err, field)
	}
	ids, err := encodePrompt(b, text, false)
	if err != nil {
		return nil, reparam(err, field)
	}
	return ids, nil
}

// chatTwin tokenizes an "other" given as chat messages.
func (s *Server) chatTwin(ctx context.Context, b *Base, raw json.RawMessage, field string) ([]int32, error) {
	if !isMessages(raw) {
		return nil, Invalid(field, "%s must be a list of chat messages (the request's own input is chat messages)", field)
	}
	msgs, err := s.chatInput(raw, field)
	if err != nil {
		return nil, err
	}
	return s.chatTokens(ctx, b, msgs, field)
}

// swapChat applies swap to the text of every message and tokenizes the
// result with the chat template.
func (s *Server) swapChat(ctx context.Context, b *Base, msgs []chat.Message, swap *overlap.Swap, field string) ([]int32, error) {
	twin := make([]chat.Message, len(msgs))
	total := 0
	for i, m := range msgs {
		twin[i] = m
		var n int
		twin[i].Content, n = swap.Apply(m.Content)
		total += n
	}
	if total == 0 {
		return nil, Invalid(field, "the swap table matched no word of the messages, so the twin would equal the request")
	}
	return s.chatTokens(ctx, b, twin, field)
}

// promptTwin tokenizes an "other" given as a prompt (string or token ids).
func (s *Server) promptTwin(b *Base, raw json.RawMessage, field string) ([]int32, error) {
	if isMessages(raw) {
		return nil, Invalid(field, "%s must be a prompt (a string or token ids), like the request's own prompt", field)
	}
	ids, _, err := s.completionPrompt(b, raw)
	if err != nil {
		return nil, reparam(err, field)
	}
	return ids, nil
}

// swapPrompt builds the twin of a text prompt by word swap.
func swapPrompt(b *Base, raw json.RawMessage, text string, swap *overlap.Swap, field string) ([]int32, error) {
	if !isTextPrompt(raw) {
		return nil, Invalid(field, "swap needs a text prompt (the prompt is token ids); give the twin as other instead")
	}
	twin, n := swap.Apply(text)
	if n == 0 {
		return nil, Invalid(field, "the swap table matched no word of the prompt, so the twin would equal the request")
	}
	ids, err := encodePrompt(b, twin, true)
	if err != nil {
		return nil, reparam(err, field)
	}
	return ids, nil
}

// listOverlap is GET /v1/overlap/requests?limit=N.
func (s *Server) listOverlap(c *fiber.Ctx) error {
	limit := defaultOverlapLimit
	if q := c.Query("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 {
			return Invalid("limit", "limit must be a positive integer, got %q", q)
		}
		limit = n
	}
	recs, err := s.soo.store.Recent(c.UserContext(), limit)
	if err != nil {
		return fmt.Errorf("overlap: list records: %w", err)
	}
	if recs == nil {
		recs = []overlap.Record{}
	}
	return c.JSON(fiber.Map{"object": "list", "data": recs})
}

// getOverlap is GET /v1/overlap/requests/{id}.
func (s *Server) getOverlap(c *fiber.Ctx) error {
	id := c.Params("id")
	rec, err := s.soo.store.Get(c.UserContext(), id)
	if errors.Is(err, overlap.ErrNotFound) {
		return NotFound("id", "overlap_record_not_found", "no overlap record %q (unknown, or evicted from the last %d)", id, s.ringCap())
	}
	if err != nil {
		return fmt.Errorf("overlap: get record: %w", err)
	}
	return c.JSON(rec)
}

func (s *Server) ringCap() int {
	if r, ok := s.soo.store.(*overlap.Ring); ok {
		return r.Cap()
	}
	return 0
}

// streamOverlap is GET /v1/overlap/stream: every record as it is added, as
// server-sent events, until the client leaves or the server shuts down.
func (s *Server) streamOverlap(c *fiber.Ctx) error {
	ctx, cancel := context.WithCancel(s.soo.streams)
	ch, err := s.soo.store.Subscribe(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("overlap: subscribe: %w", err)
	}
	s.sse(c, func(w *bufio.Writer) int {
		defer cancel()
		tick := time.NewTicker(sseKeepAlive)
		defer tick.Stop()
		for {
			select {
			case rec, ok := <-ch:
				if !ok {
					return http.StatusOK
				}
				if writeSSE(w, rec) != nil {
					return 499
				}
			case <-tick.C:
				if writeComment(w, "keep-alive") != nil {
					return 499
				}
			}
		}
	})
	return nil
}

// sse makes fn the streamed body of an event stream that is not a
// generation; it sends a first comment at once (so clients see the headers)
// and records the request's metrics when fn returns.
func (s *Server) sse(c *fiber.Ctx, fn func(w *bufio.Writer) int) {
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no")
	c.Locals(localStreamed, true)
	route, start := routeOf(c), time.Now()
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		status := 499
		if writeComment(w, "ok") == nil {
			status = fn(w)
		}
		s.record(route, "", status, time.Since(start))
	})
}

// writeComment writes an SSE comment line and flushes.
func writeComment(w *bufio.Writer, text string) error {
	w.WriteString(": " + text + "\n\n")
	if err := w.Flush(); err != nil {
		return fmt.Errorf("sse: client gone: %w", err)
	}
	return nil
}

// sooExt is a parsed "soo" extension of a completion request.
type sooExt struct {
	spec overlap.Spec
	req  sooRequest
	swap *overlap.Swap
	twin []int32
	run  *sooRun
}

// sooRequest is the "soo" object of /v1/chat/completions and /v1/completions.
type sooRequest struct {
	Other   json.RawMessage   `json:"other"`
	Swap    map[string]string `json:"swap"`
	Layers  []int             `json:"layers"`
	Sites   []string          `json:"sites"`
	Pooling string            `json:"pooling"`
}

// parseSOO validates a request's "soo" field against b; nil when absent.
func parseSOO(raw json.RawMessage, b *Base) (*sooExt, error) {
	if absent(raw) {
		return nil, nil
	}
	if t := bytes.TrimSpace(raw); t[0] != '{' {
		return nil, Invalid("soo", "soo must be an object: {\"other\": ..., \"layers\", \"sites\", \"pooling\"} or {\"swap\": {...}}")
	}
	x := &sooExt{}
	if err := decodeJSON(raw, &x.req); err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			c := *ae
			c.Param = strings.TrimSuffix("soo."+c.Param, ".")
			return nil, &c
		}
		return nil, err
	}
	hasOther := !absent(x.req.Other)
	switch {
	case hasOther && x.req.Swap != nil:
		return nil, Invalid("soo.swap", "give either soo.other or soo.swap, not both")
	case !hasOther && x.req.Swap == nil:
		return nil, Invalid("soo.other", "soo needs other (the other-referencing twin of the request) or swap (a word-swap table that builds it)")
	}
	if x.req.Swap != nil {
		var err error
		if x.swap, err = overlap.NewSwap(x.req.Swap); err != nil {
			return nil, overlapInvalid("soo.", err)
		}
	}
	var err error
	if x.spec, err = parseSpec("soo.", b, x.req.Layers, x.req.Sites, x.req.Pooling); err != nil {
		return nil, err
	}
	return x, nil
}

// chatTwin tokenizes the twin of a chat request whose messages are msgs.
func (x *sooExt) chatTwin(ctx context.Context, s *Server, b *Base, msgs []chat.Message) error {
	var err error
	if x.swap != nil {
		x.twin, err = s.swapChat(ctx, b, msgs, x.swap, "soo.swap")
	} else {
		x.twin, err = s.chatTwin(ctx, b, x.req.Other, "soo.other")
	}
	if err != nil {
		return err
	}
	return checkCapture(b, x.twin, "soo.other")
}

// promptTwin tokenizes the twin of a completion request.
func (x *sooExt) promptTwin(s *Server, b *Base, raw json.RawMessage, text string) error {
	var err error
	if x.swap != nil {
		x.twin, err = swapPrompt(b, raw, text, x.swap, "soo.swap")
	} else {
		x.twin, err = s.promptTwin(b, x.req.Other, "soo.other")
	}
	if err != nil {
		return err
	}
	return checkCapture(b, x.twin, "soo.other")
}

// sooRun is a twin measurement in flight.
type sooRun struct {
	done chan struct{}
	res  *overlap.Result
	err  error
}

// prepare makes g's prefill capture the spec's points; call before submit.
func (x *sooExt) prepare(g *generation) {
	if x != nil {
		g.req.Capture = x.spec.Points()
	}
}

// start submits the twin (one capture-only prefill through the request's
// adapter) and measures the overlap in the background once both prefills
// are done, recording it under id. On error the caller cancels g. The twin
// outlives g's context, so a short generation still gets its result; it is
// cancelled if g ends before its own prefill.
func (x *sooExt) start(s *Server, g *generation, id string) error {
	if x == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	twin, err := g.target.Base.Sched.Submit(ctx, sched.Request{Prompt: x.twin, Adapter: g.target.Adapter, PrefillOnly: true, Capture: x.spec.Points()})
	if err != nil {
		cancel()
		return fmt.Errorf("soo: submit twin: %w", err)
	}
	run := &sooRun{done: make(chan struct{})}
	x.run = run
	self, target := g.stream, g.target
	go func() {
		defer close(run.done)
		defer cancel()
		run.res, run.err = computeOverlap(ctx, x.spec, self, twin)
		if run.err == nil {
			s.recordOverlap(id, target, run.res)
		}
	}()
	return nil
}

// result waits for the overlap of a started extension.
func (x *sooExt) result(ctx context.Context) (*overlap.Result, error) {
	select {
	case <-x.run.done:
		if x.run.err != nil {
			return nil, fmt.Errorf("soo: %w", x.run.err)
		}
		return x.run.res, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("soo: %w", ctx.Err())
	}
}

// attach adds the "soo" object to a response or chunk m (no-op without
// the extension).
func (x *sooExt) attach(ctx context.Context, m fiber.Map) error {
	if x == nil {
		return nil
	}
	res, err := x.result(ctx)
	if err != nil {
		return err
	}
	m["soo"] = res
	return nil
}
