package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/sample"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/engine/tokenizer"
)

// registerOpenAI adds the OpenAI-compatible routes under /v1.
func (s *Server) registerOpenAI(r fiber.Router) {
	r.Get("/models", s.listModels)
	r.Get("/models/+", s.getModel)
	r.Post("/chat/completions", s.chatCompletions)
	r.Post("/completions", s.completions)
}

type modelObject struct {
	ID      string  `json:"id"`
	Object  string  `json:"object"`
	Created int64   `json:"created"`
	OwnedBy string  `json:"owned_by"`
	Parent  *string `json:"parent"`
	Root    string  `json:"root"`
	MaxLen  int     `json:"max_model_len,omitempty"`
}

func toModelObject(m ModelInfo) modelObject {
	o := modelObject{ID: m.ID, Object: "model", Created: m.Created.Unix(), OwnedBy: "sooserve", Parent: nullable(m.Parent), Root: m.ID}
	if m.Parent != "" {
		o.Root = m.Parent
	}
	if m.Base != nil {
		o.MaxLen = m.Base.Context()
	}
	return o
}

func (s *Server) modelList(c *fiber.Ctx) ([]ModelInfo, error) {
	ms := s.models.Load()
	if ms == nil || !s.ready.Load() {
		return nil, Unavailable("model_loading", "the model is still loading")
	}
	return (*ms).List(c.UserContext()), nil
}

// listModels is GET /v1/models: the base model, then adapters.
func (s *Server) listModels(c *fiber.Ctx) error {
	list, err := s.modelList(c)
	if err != nil {
		return err
	}
	data := make([]modelObject, 0, len(list))
	for _, m := range list {
		data = append(data, toModelObject(m))
	}
	return c.JSON(fiber.Map{"object": "list", "data": data})
}

// getModel is GET /v1/models/{id}.
func (s *Server) getModel(c *fiber.Ctx) error {
	list, err := s.modelList(c)
	if err != nil {
		return err
	}
	id := c.Params("+")
	for _, m := range list {
		if m.ID == id {
			return c.JSON(toModelObject(m))
		}
	}
	return NotFound("model", "model_not_found", "the model %q does not exist", clip(id))
}

// samplingFields are the request fields both OpenAI endpoints share.
type samplingFields struct {
	Model            string          `json:"model"`
	Stream           bool            `json:"stream"`
	StreamOptions    *streamOptions  `json:"stream_options"`
	MaxTokens        *int            `json:"max_tokens"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	TopK             *int            `json:"top_k"`
	Seed             *int64          `json:"seed"`
	Stop             json.RawMessage `json:"stop"`
	N                *int            `json:"n"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	ResponseFormat   *responseFormat `json:"response_format"`
	SOO              json.RawMessage `json:"soo"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type responseFormat struct {
	Type string `json:"type"`
}

// params validates the shared fields into a scheduler request (without
// prompt and max tokens).
func (s *Server) params(f *samplingFields, g *generation) error {
	lim := s.opts.Limits
	p := sample.Params{Temperature: 1, TopP: 1}
	if f.Temperature != nil {
		p.Temperature = *f.Temperature
	}
	if f.TopP != nil {
		p.TopP = *f.TopP
	}
	if f.TopK != nil {
		if *f.TopK == -1 { // vLLM's "off"
			*f.TopK = 0
		}
		p.TopK = *f.TopK
	}
	if f.PresencePenalty != nil {
		p.PresencePenalty = *f.PresencePenalty
	}
	if f.FrequencyPenalty != nil {
		p.FrequencyPenalty = *f.FrequencyPenalty
	}
	if f.Seed != nil {
		sd := uint64(*f.Seed)
		p.Seed = &sd
	}
	if err := p.Validate(); err != nil {
		param := strings.Fields(err.Error())[0]
		return Invalid(param, "%v", err)
	}
	g.req.Params = p
	n := 1
	if f.N != nil {
		n = *f.N
	}
	if n < 1 || n > lim.MaxN {
		return Invalid("n", "n must be between 1 and %d, got %d", lim.MaxN, n)
	}
	g.req.N = n
	stops, err := parseStop(f.Stop, lim)
	if err != nil {
		return err
	}
	g.req.Stop = stops
	if f.StreamOptions != nil && !f.Stream {
		return Invalid("stream_options", "stream_options is only allowed when stream is true")
	}
	if rf := f.ResponseFormat; rf != nil {
		switch rf.Type {
		case "", "text":
		case "json_object":
			g.jsonMode()
		case "json_schema":
			return Invalid("response_format", "response_format type \"json_schema\" is not supported; use \"json_object\"")
		default:
			return Invalid("response_format", "unknown response_format type %q (want text or json_object)", clip(rf.Type))
		}
	}
	return nil
}

// JSON mode (response_format {"type":"json_object"}) constrains sampling so
// that each choice's content is a JSON object: every step masks the tokens
// that would make the output an invalid JSON prefix (sample.JSONVocab), EOS is
// allowed only once the object is complete, and the choice ends with "stop"
// as soon as the object closes. A choice cut short by max_tokens ends with
// "length" and holds a valid prefix, as with OpenAI. The per-step cost is a
// probe of the vocabulary against the JSON automaton (well under a
// millisecond per 50k tokens for typical states), paid only by JSON requests.

// jsonMode constrains every choice of g to a JSON object (OpenAI's
// response_format json_object, Ollama's format "json").
func (g *generation) jsonMode() {
	jv := jsonVocab(g.target.Base.Tokenizer)
	g.req.Constraint = func() sample.Constraint { return jv.NewConstraint(jsonMaxSpace) }
}

// jsonMaxSpace bounds runs of whitespace outside strings in JSON mode, so a
// model cannot spend its tokens on whitespace alone.
const jsonMaxSpace = 64

// jsonVocabs caches each tokenizer's JSON vocabulary (built on first use;
// *tokenizer.Tokenizer -> func() *sample.JSONVocab).
var jsonVocabs sync.Map

// jsonVocab returns tok's token bytes prepared for JSON constraints, building
// them once per tokenizer.
func jsonVocab(tok *tokenizer.Tokenizer) *sample.JSONVocab {
	if f, ok := jsonVocabs.Load(tok); ok {
		return f.(func() *sample.JSONVocab)()
	}
	f, _ := jsonVocabs.LoadOrStore(tok, sync.OnceValue(func() *sample.JSONVocab { return buildJSONVocab(tok) }))
	return f.(func() *sample.JSONVocab)()
}

// buildJSONVocab decodes every token twice: alone (its text as a sequence's
// first output, where a tokenizer may drop a dummy-prefix space) and after a
// plain token (its text mid-sequence). Partial UTF-8 bytes decode to U+FFFD,
// which the JSON automaton treats like the real bytes (legal in strings only).
func buildJSONVocab(tok *tokenizer.Tokenizer) *sample.JSONVocab {
	n := tok.VocabSize()
	mid, first := make([]string, n), make([]string, n)
	var prime []int32
	if ids, err := tok.Encode("a", tokenizer.EncodeOptions{}); err == nil && len(ids) == 1 {
		prime = ids
	}
	primeText := ""
	if prime != nil {
		primeText = tok.Decode(prime)
	}
	same := true
	for i := range n {
		id := int32(i)
		first[i] = tok.Decode([]int32{id})
		if prime == nil || primeText == "" {
			mid[i] = first[i]
			continue
		}
		both := tok.Decode([]int32{prime[0], id})
		if t, ok := strings.CutPrefix(both, primeText); ok {
			mid[i] = t
		} // else: unknown mid-sequence text; the token stays disallowed
		same = same && mid[i] == first[i]
	}
	if same {
		first = nil
	}
	return sample.NewJSONVocab(mid, first, tok.EOS())
}

// parseStop accepts a string, a list of strings or null.
func parseStop(raw json.RawMessage, lim Limits) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var stops []string
	if raw[0] == '"' {
		var one string
		if err := json.Unmarshal(raw, &one); err != nil {
			return nil, Invalid("stop", "stop must be a string or a list of strings")
		}
		stops = []string{one}
	} else if err := json.Unmarshal(raw, &stops); err != nil {
		return nil, Invalid("stop", "stop must be a string or a list of strings")
	}
	if len(stops) > lim.MaxStop {
		return nil, Invalid("stop", "at most %d stop sequences are allowed, got %d", lim.MaxStop, len(stops))
	}
	for _, st := range stops {
		if len(st) > lim.MaxStopLen {
			return nil, Invalid("stop", "stop sequences may be at most %d bytes", lim.MaxStopLen)
		}
	}
	return stops, nil
}

// chatRequest is the body of POST /v1/chat/completions.
type chatRequest struct {
	samplingFields
	Messages            []chatMessage   `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	Tools               json.RawMessage `json:"tools"`
}

type chatMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCalls  []chat.ToolCall `json:"tool_calls"`
	ToolCallID string          `json:"tool_call_id"`
}

// messages validates and converts chat messages.
func (s *Server) messages(in []chatMessage) ([]chat.Message, error) {
	if len(in) == 0 {
		return nil, Invalid("messages", "messages must be a non-empty list")
	}
	if len(in) > s.opts.Limits.MaxMessages {
		return nil, Invalid("messages", "at most %d messages are allowed, got %d", s.opts.Limits.MaxMessages, len(in))
	}
	out := make([]chat.Message, len(in))
	for i, m := range in {
		param := fmt.Sprintf("messages[%d]", i)
		role := m.Role
		switch role {
		case "system", "user", "assistant", "tool":
		case "developer":
			role = "system"
		case "":
			return nil, Invalid(param+".role", "%s.role is required", param)
		default:
			return nil, Invalid(param+".role", "%s.role %q is not one of system, developer, user, assistant, tool", param, clip(m.Role))
		}
		text, err := messageContent(m.Content, param)
		if err != nil {
			return nil, err
		}
		if text == nil && !(role == "assistant" && len(m.ToolCalls) > 0) {
			return nil, Invalid(param+".content", "%s.content is required", param)
		}
		out[i] = chat.Message{Role: role, Name: m.Name, ToolCalls: m.ToolCalls, ToolCallID: m.ToolCallID}
		if text != nil {
			out[i].Content = *text
		}
	}
	return out, nil
}

// messageContent accepts a string, null, or a list of text parts.
func messageContent(raw json.RawMessage, param string) (*string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, Invalid(param+".content", "%s.content is not a valid string", param)
		}
		return &s, nil
	case '[':
		var parts []struct {
			Type string  `json:"type"`
			Text *string `json:"text"`
		}
		if err := json.Unmarshal(raw, &parts); err != nil {
			return nil, Invalid(param+".content", "%s.content must be a string or a list of content parts", param)
		}
		var b strings.Builder
		for j, p := range parts {
			if p.Type != "text" {
				return nil, Invalid(fmt.Sprintf("%s.content[%d].type", param, j), "content part type %q is not supported (text only)", clip(p.Type))
			}
			if p.Text == nil {
				return nil, Invalid(fmt.Sprintf("%s.content[%d].text", param, j), "text content part without text")
			}
			b.WriteString(*p.Text)
		}
		t := b.String()
		return &t, nil
	}
	return nil, Invalid(param+".content", "%s.content must be a string or a list of content parts", param)
}

// chatCompletions is POST /v1/chat/completions.
func (s *Server) chatCompletions(c *fiber.Ctx) error {
	g := &generation{start: time.Now(), route: routeOf(c)}
	var req chatRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	target, err := s.resolve(c.UserContext(), req.Model)
	if err != nil {
		return err
	}
	c.Locals(localModel, target.ID)
	g.target = target
	if err := s.params(&req.samplingFields, g); err != nil {
		return err
	}
	if len(bytes.TrimSpace(req.Tools)) > 0 && string(bytes.TrimSpace(req.Tools)) != "null" && string(bytes.TrimSpace(req.Tools)) != "[]" {
		return Invalid("tools", "tools are not supported")
	}
	msgs, err := s.messages(req.Messages)
	if err != nil {
		return err
	}
	if rf := req.ResponseFormat; rf != nil && rf.Type == "json_object" {
		mentions := false
		for _, m := range msgs {
			mentions = mentions || strings.Contains(strings.ToLower(m.Content), "json")
		}
		if !mentions {
			return Invalid("messages", "'messages' must contain the word 'json' in some form to use 'response_format' of type 'json_object'")
		}
	}
	if req.Logprobs != nil && *req.Logprobs {
		g.req.Logprobs = true
	}
	if req.TopLogprobs != nil {
		if !g.req.Logprobs {
			return Invalid("top_logprobs", "top_logprobs requires logprobs to be true")
		}
		if *req.TopLogprobs < 0 || *req.TopLogprobs > s.opts.Limits.MaxTopLogprobs {
			return Invalid("top_logprobs", "top_logprobs must be between 0 and %d, got %d", s.opts.Limits.MaxTopLogprobs, *req.TopLogprobs)
		}
		g.req.TopLogprobs = *req.TopLogprobs
	}
	maxTok, param := req.MaxCompletionTokens, "max_completion_tokens"
	if maxTok == nil {
		maxTok, param = req.MaxTokens, "max_tokens"
	}
	soo, err := parseSOO(req.SOO, target.Base)
	if err != nil {
		return err
	}
	text, err := renderChat(c.UserContext(), target.Base, msgs)
	if err != nil {
		return err
	}
	prompt, err := encodePrompt(target.Base, text, false)
	if err != nil {
		return err
	}
	if g.req.MaxTokens, err = checkLength(target.Base, len(prompt), maxTok, param); err != nil {
		return err
	}
	if soo != nil {
		if err := soo.chatTwin(c.UserContext(), s, target.Base, msgs); err != nil {
			return err
		}
	}
	g.req.Prompt, g.req.Adapter, g.req.EOS = prompt, target.Adapter, target.Base.Tokenizer.EOS()
	soo.prepare(g)
	if err := s.submit(c, g); err != nil {
		return err
	}
	id, created := newID("chatcmpl-"), time.Now().Unix()
	if err := soo.start(s, g, id); err != nil {
		g.cancel()
		return err
	}
	if req.Stream {
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		s.streamBody(c, g, "text/event-stream", func(w *bufio.Writer) int {
			return s.streamChat(w, g, id, created, includeUsage, soo)
		})
		return nil
	}
	choices, err := s.collect(g)
	if err != nil {
		return err
	}
	out := make([]fiber.Map, len(choices))
	for i, ch := range choices {
		var lp any
		if g.req.Logprobs {
			lp = fiber.Map{"content": s.chatLogprobs(g, ch.events), "refusal": nil}
		}
		out[i] = fiber.Map{
			"index":         i,
			"message":       fiber.Map{"role": "assistant", "content": ch.text.String(), "refusal": nil},
			"logprobs":      lp,
			"finish_reason": ch.finish,
		}
	}
	resp := fiber.Map{
		"id": id, "object": "chat.completion", "created": created, "model": target.ID,
		"system_fingerprint": nil, "choices": out, "usage": usageObject(g.stream.Usage()),
	}
	if err := soo.attach(s.ctx, resp); err != nil {
		return err
	}
	return c.JSON(resp)
}

type chatTop struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

type chatLogprob struct {
	chatTop
	TopLogprobs []chatTop `json:"top_logprobs"`
}

func (s *Server) chatLogprobs(g *generation, evs []sched.Event) []chatLogprob {
	tok := g.target.Base.Tokenizer
	out := make([]chatLogprob, 0, len(evs))
	for _, ev := range evs {
		t := tokenText(tok, ev.Token)
		e := chatLogprob{chatTop: chatTop{Token: t, Logprob: finite(ev.Logprob), Bytes: bytesOf(t)}, TopLogprobs: []chatTop{}}
		for _, alt := range ev.Top {
			at := tokenText(tok, alt.Token)
			e.TopLogprobs = append(e.TopLogprobs, chatTop{Token: at, Logprob: finite(alt.Logprob), Bytes: bytesOf(at)})
		}
		out = append(out, e)
	}
	return out
}

func usageObject(u sched.Usage) fiber.Map {
	return fiber.Map{"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens}
}

// streamChat writes a chat completion as server-sent events.
// With the "soo" extension the overlap goes on the final chunk: the usage
// chunk, or without one the chunk that finishes the last choice.
func (s *Server) streamChat(w *bufio.Writer, g *generation, id string, created int64, includeUsage bool, soo *sooExt) int {
	chunk := func(choices []fiber.Map) fiber.Map {
		m := fiber.Map{"id": id, "object": "chat.completion.chunk", "created": created, "model": g.target.ID, "system_fingerprint": nil, "choices": choices}
		if includeUsage {
			m["usage"] = nil
		}
		return m
	}
	for i := range g.req.N {
		if err := writeSSE(w, chunk([]fiber.Map{{"index": i, "delta": fiber.Map{"role": "assistant", "content": ""}, "logprobs": nil, "finish_reason": nil}})); err != nil {
			g.cancel()
			return 499
		}
	}
	finished := 0
	err := s.drive(g, func(ev sched.Event) error {
		if ev.Text == "" && ev.Finish == "" && !(ev.HasToken && g.req.Logprobs) {
			return nil
		}
		delta := fiber.Map{}
		if ev.Text != "" {
			delta["content"] = ev.Text
		}
		var lp any
		if ev.HasToken && g.req.Logprobs {
			lp = fiber.Map{"content": s.chatLogprobs(g, []sched.Event{ev}), "refusal": nil}
		}
		var fin any
		if ev.Finish != "" {
			fin = ev.Finish
			finished++
		}
		m := chunk([]fiber.Map{{"index": ev.Index, "delta": delta, "logprobs": lp, "finish_reason": fin}})
		if !includeUsage && finished == g.req.N && ev.Finish != "" {
			if err := soo.attach(s.ctx, m); err != nil {
				return err
			}
		}
		return writeSSE(w, m)
	})
	return s.endStream(w, g, err, includeUsage, chunk, soo)
}

// endStream writes what follows a stream's choice events: the error that
// ended it, or the usage-only chunk (carrying "soo") when the client asked
// for usage; then [DONE]. It returns the status to log.
func (s *Server) endStream(w *bufio.Writer, g *generation, err error, includeUsage bool, chunk func([]fiber.Map) fiber.Map, soo *sooExt) int {
	if err != nil {
		return s.streamError(w, err, true)
	}
	if includeUsage {
		m := chunk([]fiber.Map{})
		m["usage"] = usageObject(g.stream.Usage())
		if err := soo.attach(s.ctx, m); err != nil {
			return s.streamError(w, err, true)
		}
		if err := writeSSE(w, m); err != nil {
			return 499
		}
	}
	w.WriteString("data: [DONE]\n\n")
	if w.Flush() != nil {
		return 499
	}
	return fiber.StatusOK
}

// completionRequest is the body of POST /v1/completions.
type completionRequest struct {
	samplingFields
	Prompt   json.RawMessage `json:"prompt"`
	Logprobs *int            `json:"logprobs"`
	Echo     bool            `json:"echo"`
	Suffix   *string         `json:"suffix"`
	BestOf   *int            `json:"best_of"`
}

// completionPrompt accepts a string, a list of token ids, or a one-element
// list of either.
func (s *Server) completionPrompt(b *Base, raw json.RawMessage) ([]int32, string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, "", Invalid("prompt", "prompt is required")
	}
	if raw[0] == '"' {
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return nil, "", Invalid("prompt", "prompt is not a valid string")
		}
		ids, err := encodePrompt(b, text, true)
		return ids, text, err
	}
	if raw[0] != '[' {
		return nil, "", Invalid("prompt", "prompt must be a string, a list of token ids, or a list of one of those")
	}
	var ids []int32
	if err := json.Unmarshal(raw, &ids); err == nil {
		if len(ids) == 0 {
			return nil, "", Invalid("prompt", "the prompt is empty")
		}
		vocab := b.Config.VocabSize
		for _, id := range ids {
			if id < 0 || int(id) >= vocab {
				return nil, "", Invalid("prompt", "token id %d is outside the vocabulary of %d", id, vocab)
			}
		}
		return ids, b.Tokenizer.Decode(ids), nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, "", Invalid("prompt", "prompt must be a string, a list of token ids, or a list of one of those")
	}
	if len(list) != 1 {
		return nil, "", Invalid("prompt", "only one prompt per request is supported, got %d", len(list))
	}
	if t := bytes.TrimSpace(list[0]); len(t) > 0 && (t[0] == '[' || t[0] == '"') {
		return s.completionPrompt(b, list[0])
	}
	return nil, "", Invalid("prompt", "prompt must be a string, a list of token ids, or a list of one of those")
}

// completions is POST /v1/completions.
func (s *Server) completions(c *fiber.Ctx) error {
	g := &generation{start: time.Now(), route: routeOf(c)}
	var req completionRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return err
	}
	target, err := s.resolve(c.UserContext(), req.Model)
	if err != nil {
		return err
	}
	c.Locals(localModel, target.ID)
	g.target = target
	if err := s.params(&req.samplingFields, g); err != nil {
		return err
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return Invalid("suffix", "suffix is not supported")
	}
	if req.BestOf != nil && *req.BestOf != g.req.N {
		return Invalid("best_of", "best_of is not supported (it must equal n)")
	}
	if req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > s.opts.Limits.MaxTopLogprobs {
			return Invalid("logprobs", "logprobs must be between 0 and %d, got %d", s.opts.Limits.MaxTopLogprobs, *req.Logprobs)
		}
		g.req.Logprobs, g.req.TopLogprobs = true, *req.Logprobs
	}
	if req.ResponseFormat != nil && req.ResponseFormat.Type == "json_object" && !strings.Contains(strings.ToLower(string(req.Prompt)), "json") {
		return Invalid("prompt", "the prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'")
	}
	soo, err := parseSOO(req.SOO, target.Base)
	if err != nil {
		return err
	}
	prompt, promptText, err := s.completionPrompt(target.Base, req.Prompt)
	if err != nil {
		return err
	}
	maxTok := req.MaxTokens
	if maxTok == nil {
		sixteen := min(16, target.Base.Context()-len(prompt)) // OpenAI's default
		maxTok = &sixteen
	}
	if g.req.MaxTokens, err = checkLength(target.Base, len(prompt), maxTok, "max_tokens"); err != nil {
		return err
	}
	if soo != nil {
		if err := soo.promptTwin(s, target.Base, req.Prompt, promptText); err != nil {
			return err
		}
	}
	g.req.Prompt, g.req.Adapter, g.req.EOS = prompt, target.Adapter, target.Base.Tokenizer.EOS()
	// echo with logprobs scores the prompt too (legacy OpenAI semantics: the
	// first prompt token's entry is null). Streamed responses echo the text only.
	g.req.PromptLogprobs = req.Echo && g.req.Logprobs && !req.Stream
	soo.prepare(g)
	if err := s.submit(c, g); err != nil {
		return err
	}
	echo := ""
	if req.Echo {
		echo = promptText
	}
	id, created := newID("cmpl-"), time.Now().Unix()
	if err := soo.start(s, g, id); err != nil {
		g.cancel()
		return err
	}
	if req.Stream {
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		s.streamBody(c, g, "text/event-stream", func(w *bufio.Writer) int {
			return s.streamCompletion(w, g, id, created, echo, includeUsage, soo)
		})
		return nil
	}
	choices, err := s.collect(g)
	if err != nil {
		return err
	}
	out := make([]fiber.Map, len(choices))
	for i, ch := range choices {
		var lp any
		if g.req.Logprobs {
			var prompt []sched.PromptLogprob
			if g.req.PromptLogprobs {
				prompt = g.stream.PromptLogprobs()
			}
			lp = s.completionLogprobs(g, prompt, ch.events, len(echo))
		}
		out[i] = fiber.Map{"index": i, "text": echo + ch.text.String(), "logprobs": lp, "finish_reason": ch.finish}
	}
	resp := fiber.Map{
		"id": id, "object": "text_completion", "created": created, "model": target.ID,
		"system_fingerprint": nil, "choices": out, "usage": usageObject(g.stream.Usage()),
	}
	if err := soo.attach(s.ctx, resp); err != nil {
		return err
	}
	return c.JSON(resp)
}

type completionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []*float64           `json:"token_logprobs"` // null for the first echoed prompt token
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// completionLogprobs builds the legacy logprobs object: the echoed prompt's
// tokens first (when prompt is non-nil), then the generated ones. Offsets
// count bytes from the start of the choice's text; generated tokens start at
// offset (the echoed prompt's length).
func (s *Server) completionLogprobs(g *generation, prompt []sched.PromptLogprob, evs []sched.Event, offset int) *completionLogprobs {
	tok := g.target.Base.Tokenizer
	out := &completionLogprobs{Tokens: []string{}, TokenLogprobs: []*float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	add := func(token int32, lp float32, alts []sample.TokenLogprob, null bool, at int) int {
		t := tokenText(tok, token)
		out.Tokens = append(out.Tokens, t)
		out.TextOffset = append(out.TextOffset, at)
		if null {
			// null, as OpenAI and vLLM answer; the alternatives are an empty
			// object rather than null, which typed clients (openai-go) reject.
			out.TokenLogprobs = append(out.TokenLogprobs, nil)
			out.TopLogprobs = append(out.TopLogprobs, map[string]float64{})
			return len(t)
		}
		v := finite(lp)
		out.TokenLogprobs = append(out.TokenLogprobs, &v)
		top := make(map[string]float64, len(alts))
		for _, alt := range alts {
			at := tokenText(tok, alt.Token)
			if old, ok := top[at]; !ok || old < float64(alt.Logprob) {
				top[at] = math.Max(finite(alt.Logprob), -9999)
			}
		}
		out.TopLogprobs = append(out.TopLogprobs, top)
		return len(t)
	}
	at := 0
	for _, p := range prompt {
		at += add(p.Token, p.Logprob, p.Top, p.First, at)
	}
	for _, ev := range evs {
		offset += add(ev.Token, ev.Logprob, ev.Top, false, offset)
	}
	return out
}

// streamCompletion writes a text completion as server-sent events.
// The "soo" overlap goes on the final chunk, as in streamChat.
func (s *Server) streamCompletion(w *bufio.Writer, g *generation, id string, created int64, echo string, includeUsage bool, soo *sooExt) int {
	chunk := func(choices []fiber.Map) fiber.Map {
		m := fiber.Map{"id": id, "object": "text_completion", "created": created, "model": g.target.ID, "system_fingerprint": nil, "choices": choices}
		if includeUsage {
			m["usage"] = nil
		}
		return m
	}
	offsets := make([]int, g.req.N)
	if echo != "" {
		for i := range g.req.N {
			if err := writeSSE(w, chunk([]fiber.Map{{"index": i, "text": echo, "logprobs": nil, "finish_reason": nil}})); err != nil {
				g.cancel()
				return 499
			}
			offsets[i] = len(echo)
		}
	}
	finished := 0
	err := s.drive(g, func(ev sched.Event) error {
		if ev.Text == "" && ev.Finish == "" && !(ev.HasToken && g.req.Logprobs) {
			return nil
		}
		var lp any
		if ev.HasToken && g.req.Logprobs {
			l := s.completionLogprobs(g, nil, []sched.Event{ev}, offsets[ev.Index])
			offsets[ev.Index] += len(l.Tokens[0])
			lp = l
		}
		var fin any
		if ev.Finish != "" {
			fin = ev.Finish
			finished++
		}
		m := chunk([]fiber.Map{{"index": ev.Index, "text": ev.Text, "logprobs": lp, "finish_reason": fin}})
		if !includeUsage && finished == g.req.N && ev.Finish != "" {
			if err := soo.attach(s.ctx, m); err != nil {
				return err
			}
		}
		return writeSSE(w, m)
	})
	return s.endStream(w, g, err, includeUsage, chunk, soo)
}
