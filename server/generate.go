package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/engine/tokenizer"
)

// generation is one validated request on its way to the scheduler.
type generation struct {
	target Target
	route  string
	start  time.Time
	req    sched.Request

	ctx    context.Context
	cancel context.CancelFunc
	stream *sched.Stream

	firstToken bool
	lastToken  []time.Time // per choice
}

// submit hands g to its base's scheduler. On success the caller owns
// g.cancel (call it when the response is done).
func (s *Server) submit(c *fiber.Ctx, g *generation) error {
	g.ctx, g.cancel = context.WithCancel(s.ctx)
	st, err := g.target.Base.Sched.Submit(g.ctx, g.req)
	if err != nil {
		g.cancel()
		return fmt.Errorf("submit generation: %w", err)
	}
	g.stream = st
	g.lastToken = make([]time.Time, max(g.req.N, 1))
	if conn := c.Context().Conn(); conn != nil {
		go watchClient(g.ctx, conn, g.cancel)
	}
	return nil
}

// drive reads g's events until every choice has finished, calling fn for
// each. A failed choice (ev.Err) ends the generation with that error; an
// error from fn cancels it.
func (s *Server) drive(g *generation, fn func(ev sched.Event) error) error {
	defer g.cancel()
	for {
		ev, err := g.stream.Recv(g.ctx)
		if errors.Is(err, io.EOF) {
			s.metrics.usage(g.target.Base.ID, g.stream.Usage())
			return nil
		}
		if err != nil {
			return fmt.Errorf("generation: %w", s.cutByShutdown(err))
		}
		if ev.Err != nil {
			g.stream.Cancel()
			return fmt.Errorf("generation: %w", ev.Err)
		}
		if ev.HasToken {
			now := time.Now()
			if !g.firstToken {
				g.firstToken = true
				s.metrics.ttft.WithLabelValues(g.route, g.target.ID).Observe(now.Sub(g.start).Seconds())
			}
			if last := g.lastToken[ev.Index]; !last.IsZero() {
				s.metrics.itl.WithLabelValues(g.target.ID).Observe(now.Sub(last).Seconds())
			}
			g.lastToken[ev.Index] = now
		}
		if err := fn(ev); err != nil {
			g.stream.Cancel()
			return err
		}
	}
}

// choice accumulates one choice of a non-streamed response.
type choice struct {
	text   strings.Builder
	events []sched.Event // token events, for logprobs
	finish sched.FinishReason
}

// collect runs g to the end and returns its choices.
func (s *Server) collect(g *generation) ([]*choice, error) {
	cs := make([]*choice, max(g.req.N, 1))
	for i := range cs {
		cs[i] = &choice{}
	}
	err := s.drive(g, func(ev sched.Event) error {
		c := cs[ev.Index]
		c.text.WriteString(ev.Text)
		if ev.HasToken && g.req.Logprobs {
			c.events = append(c.events, ev)
		}
		if ev.Finish != "" {
			c.finish = ev.Finish
		}
		return nil
	})
	return cs, err
}

// streamBody sets fn as c's streamed body: it runs after the handler
// returns, writing to w; the request is recorded in the metrics when it ends.
// fn's write errors mean the client went away, which cancels the generation.
func (s *Server) streamBody(c *fiber.Ctx, g *generation, contentType string, fn func(w *bufio.Writer) int) {
	c.Set(fiber.HeaderContentType, contentType)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no")
	c.Locals(localStreamed, true)
	route, model := g.route, g.target.ID
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer g.cancel()
		status := fn(w)
		s.record(route, model, status, time.Since(g.start))
	})
}

// writeSSE writes one server-sent event with a JSON payload and flushes.
func writeSSE(w *bufio.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sse: encode: %w", err)
	}
	w.WriteString("data: ")
	w.Write(b)
	w.WriteString("\n\n")
	if err := w.Flush(); err != nil {
		return fmt.Errorf("sse: client gone: %w", err)
	}
	return nil
}

// writeNDJSON writes one JSON line and flushes.
func writeNDJSON(w *bufio.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("ndjson: encode: %w", err)
	}
	w.Write(b)
	w.WriteByte('\n')
	if err := w.Flush(); err != nil {
		return fmt.Errorf("ndjson: client gone: %w", err)
	}
	return nil
}

// streamError reports an error that happened after the stream began,
// returning the status to record: an SSE error event in the envelope
// followed by "data: [DONE]", or an NDJSON line {"error": "message"} as
// Ollama writes it.
func (s *Server) streamError(w *bufio.Writer, err error, sse bool) int {
	err = s.cutByShutdown(err)
	ae := AsAPIError(err)
	if errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "client gone") {
		return 499 // the client closed the request
	}
	s.log.Warn("stream failed", "status", ae.Status, "err", err)
	if sse {
		if writeSSE(w, json.RawMessage(ae.Envelope())) == nil {
			w.WriteString("data: [DONE]\n\n")
			_ = w.Flush()
		}
	} else {
		_ = writeNDJSON(w, ollamaError{Error: ae.Message})
	}
	return ae.Status
}

// newID returns a response id with prefix.
func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// encodePrompt tokenizes text for b; the chat template's output carries its
// own special tokens, so it is encoded without adding BOS again. A large
// text that certainly holds more tokens than b's context is refused (413,
// prompt_too_long) before it is tokenized (see promptBound).
func encodePrompt(b *Base, text string, addSpecial bool) ([]int32, error) {
	if lower, ctxLen := promptBound(b, text), b.Context(); lower > ctxLen {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeTooLarge, Code: "prompt_too_long",
			Message: fmt.Sprintf("the prompt is %d bytes, so at least %d tokens; this model's context is %d tokens", len(text), lower, ctxLen)}
	}
	ids, err := b.Tokenizer.Encode(text, tokenizer.EncodeOptions{AddSpecial: addSpecial, ParseSpecial: true})
	if err != nil {
		return nil, Invalid("", "cannot tokenize the prompt: %v", err)
	}
	if len(ids) == 0 {
		return nil, Invalid("prompt", "the prompt is empty")
	}
	return ids, nil
}

// earlyPromptBytes is the prompt size from which promptBound applies: below
// it tokenizing costs little (about 10 ms), and a prompt that does not fit
// gets the OpenAI-compatible 400 context_length_exceeded once counted.
const earlyPromptBytes = 64 << 10

// promptBound returns a lower bound on the tokens of a text of at least
// earlyPromptBytes for b: ceil(len(text) / b.Tokenizer.MaxTokenBytes()),
// the bound computed once per base; 0 for shorter texts, or when the
// tokenizer has no bound (a normaliser may shrink the text).
func promptBound(b *Base, text string) int {
	if len(text) < earlyPromptBytes || b.Tokenizer == nil || b.Sched == nil || len(text) <= b.Context() {
		return 0
	}
	mb := b.tokBytes.Load() - 1
	if mb < 0 {
		mb = int64(b.Tokenizer.MaxTokenBytes())
		b.tokBytes.Store(mb + 1)
	}
	if mb <= 0 {
		return 0
	}
	return int((int64(len(text)) + mb - 1) / mb)
}

// renderChat applies b's chat template.
func renderChat(ctx context.Context, b *Base, msgs []chat.Message) (string, error) {
	if b.Template == nil {
		return "", Invalid("messages", "model %q has no chat template; use the completions endpoint", b.ID)
	}
	text, err := b.Template.Render(ctx, msgs, chat.RenderOptions{AddGenerationPrompt: true})
	var te *chat.TemplateError
	if errors.As(err, &te) {
		return "", Invalid("messages", "the chat template rejected the conversation: %s", clipTo(te.Message, maxMessage/2))
	}
	if err != nil {
		return "", fmt.Errorf("render chat template: %w", err)
	}
	return text, nil
}

// checkLength validates the prompt and max tokens against the context and
// returns the max tokens to use (0: up to the context).
func checkLength(b *Base, prompt int, maxTokens *int, param string) (int, error) {
	ctxLen := b.Context()
	if prompt >= ctxLen {
		return 0, &Error{Status: 400, Type: TypeInvalidRequest, Param: "messages", Code: "context_length_exceeded",
			Message: fmt.Sprintf("the prompt is %d tokens; this model's context is %d tokens, including the completion", prompt, ctxLen)}
	}
	if maxTokens == nil {
		return 0, nil
	}
	mt := *maxTokens
	switch {
	case mt < 1:
		return 0, Invalid(param, "%s must be at least 1, got %d", param, mt)
	case mt > ctxLen:
		return 0, Invalid(param, "%s is %d; this model's context is %d tokens", param, mt, ctxLen)
	case prompt+mt > ctxLen:
		return 0, &Error{Status: 400, Type: TypeInvalidRequest, Param: param, Code: "context_length_exceeded",
			Message: fmt.Sprintf("the prompt (%d tokens) plus %s (%d) exceeds this model's context of %d tokens", prompt, param, mt, ctxLen)}
	}
	return mt, nil
}

// tokenText is the text of one token for logprobs.
func tokenText(t *tokenizer.Tokenizer, id int32) string {
	return t.Decode([]int32{id})
}

func bytesOf(s string) []int {
	out := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		out[i] = int(s[i])
	}
	return out
}

// finite replaces -Inf log-probabilities (which JSON cannot carry) with a
// very negative number.
func finite(lp float32) float64 {
	if math.IsInf(float64(lp), -1) || math.IsNaN(float64(lp)) {
		return -9999
	}
	return float64(lp)
}
