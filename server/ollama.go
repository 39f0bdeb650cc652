package server

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/ollama/ollama/api"
	ollamamodel "github.com/ollama/ollama/types/model"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/sample"
	"github.com/sooserve/sooserve/engine/sched"
)

// registerOllama adds the Ollama-compatible routes under /api.
func (s *Server) registerOllama(r fiber.Router) {
	r.Get("/version", s.ollamaVersion)
	r.Get("/tags", s.ollamaTags)
	r.Post("/show", s.ollamaShow)
	r.Post("/chat", s.ollamaChat)
	r.Post("/generate", s.ollamaGenerate)
}

func (s *Server) ollamaVersion(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"version": s.opts.Version})
}

func ollamaDetails(m ModelInfo) api.ModelDetails {
	d := api.ModelDetails{Format: "safetensors", ParentModel: m.Parent}
	if b := m.Base; b != nil {
		d.Family = b.Config.Arch
		d.Families = []string{b.Config.Arch}
		d.ParameterSize = paramSize(b.Bytes, b.DType)
		d.QuantizationLevel = strings.ToUpper(b.DType)
	}
	return d
}

// paramCount estimates the parameter count from the weight bytes.
func paramCount(bytes int64, dtype string) int64 {
	if dtype == "bf16" || dtype == "f16" {
		return bytes / 2
	}
	return bytes / 4
}

func paramSize(bytes int64, dtype string) string {
	n := float64(paramCount(bytes, dtype))
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", n/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", n/1e6)
	}
	return fmt.Sprintf("%.0fK", n/1e3)
}

// ollamaTags is GET /api/tags.
func (s *Server) ollamaTags(c *fiber.Ctx) error {
	list, err := s.modelList(c)
	if err != nil {
		return err
	}
	out := api.ListResponse{Models: []api.ListModelResponse{}}
	for _, m := range list {
		e := api.ListModelResponse{Name: m.ID, Model: m.ID, ModifiedAt: m.Created, Details: ollamaDetails(m)}
		if m.Base != nil {
			e.Size, e.Digest = m.Base.Bytes, m.Base.Digest
		}
		out.Models = append(out.Models, e)
	}
	return c.JSON(out)
}

// ollamaShow is POST /api/show.
func (s *Server) ollamaShow(c *fiber.Ctx) error {
	var req api.ShowRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	name := req.Model
	if name == "" {
		name = req.Name
	}
	t, err := s.resolve(c.UserContext(), name)
	if err != nil {
		return err
	}
	c.Locals(localModel, t.ID)
	b := t.Base
	info := ModelInfo{ID: t.ID, Created: b.Created, Base: b}
	if t.Adapter != nil {
		info.Parent = b.ID
	}
	arch := b.Config.Arch
	resp := api.ShowResponse{
		Details: ollamaDetails(info),
		ModelInfo: map[string]any{
			"general.architecture":                     arch,
			"general.parameter_count":                  paramCount(b.Bytes, b.DType),
			arch + ".context_length":                   b.Context(),
			arch + ".embedding_length":                 b.Config.Hidden,
			arch + ".block_count":                      b.Config.Layers,
			arch + ".feed_forward_length":              b.Config.Intermediate,
			arch + ".attention.head_count":             b.Config.Heads,
			arch + ".attention.head_count_kv":          b.Config.KVHeads,
			arch + ".vocab_size":                       b.Config.VocabSize,
			arch + ".rope.freq_base":                   b.Config.RopeTheta,
			arch + ".attention.layer_norm_rms_epsilon": b.Config.NormEps,
		},
		Capabilities: []ollamamodel.Capability{ollamamodel.CapabilityCompletion},
		ModifiedAt:   b.Created,
	}
	if b.Template != nil {
		resp.Template = b.Template.Source()
	}
	return c.JSON(resp)
}

// ollamaParams turns Ollama's options into sampling parameters.
func (s *Server) ollamaParams(g *generation, opts map[string]any) (int, error) {
	o := api.DefaultOptions()
	if err := o.FromMap(opts); err != nil {
		return 0, Invalid("options", "%v", err)
	}
	p := sample.Params{
		Temperature: float64(o.Temperature), TopP: float64(o.TopP), TopK: o.TopK,
		PresencePenalty: float64(o.PresencePenalty), FrequencyPenalty: float64(o.FrequencyPenalty),
	}
	if o.Seed >= 0 {
		sd := uint64(o.Seed)
		p.Seed = &sd
	}
	if err := p.Validate(); err != nil {
		return 0, Invalid("options", "%v", err)
	}
	g.req.Params, g.req.N = p, 1
	stops, err := parseStopList(o.Stop, s.opts.Limits)
	if err != nil {
		return 0, err
	}
	g.req.Stop = stops
	return o.NumPredict, nil
}

func parseStopList(stops []string, lim Limits) ([]string, error) {
	if len(stops) > lim.MaxStop*4 {
		return nil, Invalid("options.stop", "at most %d stop sequences are allowed", lim.MaxStop*4)
	}
	for _, st := range stops {
		if len(st) > lim.MaxStopLen {
			return nil, Invalid("options.stop", "stop sequences may be at most %d bytes", lim.MaxStopLen)
		}
	}
	return stops, nil
}

// ollamaFormat applies Ollama's format field: "json" constrains the output
// to a JSON object, as OpenAI's json_object does; JSON schemas are rejected.
func (g *generation) ollamaFormat(format []byte) error {
	switch string(bytes.TrimSpace(format)) {
	case "", "null", `""`:
		return nil
	case `"json"`:
		g.jsonMode()
		return nil
	}
	return Invalid("format", "format must be \"json\"; JSON schemas are not supported")
}

// numPredict maps Ollama's num_predict (-1: unlimited, -2: fill the context)
// to max tokens.
func numPredict(b *Base, prompt, n int) (int, error) {
	if n < 0 {
		return checkLength(b, prompt, nil, "options.num_predict")
	}
	if n == 0 {
		n = 1
	}
	n = min(n, b.Context()-prompt)
	return checkLength(b, prompt, &n, "options.num_predict")
}

// ollamaChat is POST /api/chat.
func (s *Server) ollamaChat(c *fiber.Ctx) error {
	g := &generation{start: time.Now(), route: routeOf(c)}
	var req api.ChatRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	t, err := s.resolve(c.UserContext(), req.Model)
	if err != nil {
		return err
	}
	c.Locals(localModel, t.ID)
	g.target = t
	if err := g.ollamaFormat(req.Format); err != nil {
		return err
	}
	if len(req.Tools) > 0 {
		return Invalid("tools", "tools are not supported")
	}
	np, err := s.ollamaParams(g, req.Options)
	if err != nil {
		return err
	}
	if len(req.Messages) == 0 {
		// Ollama loads the model and answers at once.
		return c.JSON(api.ChatResponse{Model: t.ID, CreatedAt: time.Now().UTC(), Message: api.Message{Role: "assistant"}, Done: true, DoneReason: "load"})
	}
	if len(req.Messages) > s.opts.Limits.MaxMessages {
		return Invalid("messages", "at most %d messages are allowed, got %d", s.opts.Limits.MaxMessages, len(req.Messages))
	}
	msgs := make([]chat.Message, len(req.Messages))
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user", "assistant", "tool":
		default:
			return Invalid(fmt.Sprintf("messages[%d].role", i), "messages[%d].role %q is not one of system, user, assistant, tool", i, clip(m.Role))
		}
		if len(m.Images) > 0 {
			return Invalid(fmt.Sprintf("messages[%d].images", i), "images are not supported")
		}
		msgs[i] = chat.Message{Role: m.Role, Content: m.Content}
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > s.opts.Limits.MaxTopLogprobs {
		return Invalid("top_logprobs", "top_logprobs must be between 0 and %d", s.opts.Limits.MaxTopLogprobs)
	}
	g.req.Logprobs, g.req.TopLogprobs = req.Logprobs, req.TopLogprobs
	text, err := renderChat(c.UserContext(), t.Base, msgs)
	if err != nil {
		return err
	}
	prompt, err := encodePrompt(t.Base, text, false)
	if err != nil {
		return err
	}
	if g.req.MaxTokens, err = numPredict(t.Base, len(prompt), np); err != nil {
		return err
	}
	g.req.Prompt, g.req.Adapter, g.req.EOS = prompt, t.Adapter, t.Base.Tokenizer.EOS()
	if err := s.submit(c, g); err != nil {
		return err
	}
	resp := func(content string) api.ChatResponse {
		return api.ChatResponse{Model: t.ID, CreatedAt: time.Now().UTC(), Message: api.Message{Role: "assistant", Content: content}}
	}
	final := func(r api.ChatResponse, fin sched.FinishReason) api.ChatResponse {
		r.Done, r.DoneReason, r.Metrics = true, string(fin), s.ollamaMetrics(g)
		return r
	}
	if req.Stream == nil || *req.Stream {
		s.streamBody(c, g, "application/x-ndjson", func(w *bufio.Writer) int {
			err := s.drive(g, func(ev sched.Event) error {
				r := resp(ev.Text)
				if ev.HasToken && g.req.Logprobs {
					r.Logprobs = s.ollamaLogprobs(g, []sched.Event{ev})
				}
				if ev.Finish != "" {
					r = final(r, ev.Finish)
				} else if ev.Text == "" && r.Logprobs == nil {
					return nil
				}
				return writeNDJSON(w, r)
			})
			if err != nil {
				return s.streamError(w, err, false)
			}
			return fiber.StatusOK
		})
		return nil
	}
	choices, err := s.collect(g)
	if err != nil {
		return err
	}
	r := final(resp(choices[0].text.String()), choices[0].finish)
	if g.req.Logprobs {
		r.Logprobs = s.ollamaLogprobs(g, choices[0].events)
	}
	return c.JSON(r)
}

// ollamaGenerate is POST /api/generate.
func (s *Server) ollamaGenerate(c *fiber.Ctx) error {
	g := &generation{start: time.Now(), route: routeOf(c)}
	var req api.GenerateRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	t, err := s.resolve(c.UserContext(), req.Model)
	if err != nil {
		return err
	}
	c.Locals(localModel, t.ID)
	g.target = t
	if err := g.ollamaFormat(req.Format); err != nil {
		return err
	}
	switch {
	case req.Template != "":
		return Invalid("template", "custom templates are not supported")
	case req.Suffix != "":
		return Invalid("suffix", "suffix is not supported")
	case len(req.Images) > 0:
		return Invalid("images", "images are not supported")
	}
	np, err := s.ollamaParams(g, req.Options)
	if err != nil {
		return err
	}
	if req.Prompt == "" && len(req.Context) == 0 {
		return c.JSON(api.GenerateResponse{Model: t.ID, CreatedAt: time.Now().UTC(), Done: true, DoneReason: "load"})
	}
	if req.TopLogprobs < 0 || req.TopLogprobs > s.opts.Limits.MaxTopLogprobs {
		return Invalid("top_logprobs", "top_logprobs must be between 0 and %d", s.opts.Limits.MaxTopLogprobs)
	}
	g.req.Logprobs, g.req.TopLogprobs = req.Logprobs, req.TopLogprobs
	var prompt []int32
	vocab := t.Base.Config.VocabSize
	for _, id := range req.Context {
		if id < 0 || id >= vocab {
			return Invalid("context", "token id %d is outside the vocabulary of %d", id, vocab)
		}
		prompt = append(prompt, int32(id))
	}
	if req.Prompt != "" {
		var ids []int32
		if req.Raw || t.Base.Template == nil {
			ids, err = encodePrompt(t.Base, req.Prompt, len(prompt) == 0)
		} else {
			var msgs []chat.Message
			if req.System != "" {
				msgs = append(msgs, chat.Message{Role: "system", Content: req.System})
			}
			msgs = append(msgs, chat.Message{Role: "user", Content: req.Prompt})
			var text string
			if text, err = renderChat(c.UserContext(), t.Base, msgs); err == nil {
				ids, err = encodePrompt(t.Base, text, false)
			}
		}
		if err != nil {
			return err
		}
		prompt = append(prompt, ids...)
	}
	if g.req.MaxTokens, err = numPredict(t.Base, len(prompt), np); err != nil {
		return err
	}
	g.req.Prompt, g.req.Adapter, g.req.EOS = prompt, t.Adapter, t.Base.Tokenizer.EOS()
	if err := s.submit(c, g); err != nil {
		return err
	}
	generated := []int{}
	resp := func(text string) api.GenerateResponse {
		return api.GenerateResponse{Model: t.ID, CreatedAt: time.Now().UTC(), Response: text}
	}
	final := func(r api.GenerateResponse, fin sched.FinishReason) api.GenerateResponse {
		r.Done, r.DoneReason, r.Metrics = true, string(fin), s.ollamaMetrics(g)
		if !req.Raw {
			ctx := make([]int, 0, len(prompt)+len(generated))
			for _, id := range prompt {
				ctx = append(ctx, int(id))
			}
			r.Context = append(ctx, generated...)
		}
		return r
	}
	track := func(ev sched.Event) {
		if ev.HasToken {
			generated = append(generated, int(ev.Token))
		}
	}
	if req.Stream == nil || *req.Stream {
		s.streamBody(c, g, "application/x-ndjson", func(w *bufio.Writer) int {
			err := s.drive(g, func(ev sched.Event) error {
				track(ev)
				r := resp(ev.Text)
				if ev.HasToken && g.req.Logprobs {
					r.Logprobs = s.ollamaLogprobs(g, []sched.Event{ev})
				}
				if ev.Finish != "" {
					r = final(r, ev.Finish)
				} else if ev.Text == "" && r.Logprobs == nil {
					return nil
				}
				return writeNDJSON(w, r)
			})
			if err != nil {
				return s.streamError(w, err, false)
			}
			return fiber.StatusOK
		})
		return nil
	}
	var text strings.Builder
	var evs []sched.Event
	var fin sched.FinishReason
	err = s.drive(g, func(ev sched.Event) error {
		track(ev)
		text.WriteString(ev.Text)
		if ev.HasToken && g.req.Logprobs {
			evs = append(evs, ev)
		}
		if ev.Finish != "" {
			fin = ev.Finish
		}
		return nil
	})
	if err != nil {
		return err
	}
	r := final(resp(text.String()), fin)
	if g.req.Logprobs {
		r.Logprobs = s.ollamaLogprobs(g, evs)
	}
	return c.JSON(r)
}

func (s *Server) ollamaMetrics(g *generation) api.Metrics {
	u := g.stream.Usage()
	total := time.Since(g.start)
	return api.Metrics{TotalDuration: total, PromptEvalCount: u.PromptTokens, EvalCount: u.CompletionTokens, EvalDuration: total}
}

func (s *Server) ollamaLogprobs(g *generation, evs []sched.Event) []api.Logprob {
	tok := g.target.Base.Tokenizer
	out := make([]api.Logprob, 0, len(evs))
	for _, ev := range evs {
		t := tokenText(tok, ev.Token)
		lp := api.Logprob{TokenLogprob: api.TokenLogprob{Token: t, Logprob: finite(ev.Logprob), Bytes: bytesOf(t)}}
		for _, alt := range ev.Top {
			at := tokenText(tok, alt.Token)
			lp.TopLogprobs = append(lp.TopLogprobs, api.TokenLogprob{Token: at, Logprob: finite(alt.Logprob), Bytes: bytesOf(at)})
		}
		out = append(out, lp)
	}
	return out
}
