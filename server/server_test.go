package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/internal/demo"
)

var (
	demoOnce sync.Once
	demoDir  string
	demoErr  error
)

func demoModel(t *testing.T) string {
	t.Helper()
	demoOnce.Do(func() {
		demoDir, demoErr = os.MkdirTemp("", "server-demo")
		if demoErr == nil {
			demoErr = demo.Write(demoDir)
		}
	})
	if demoErr != nil {
		t.Fatal(demoErr)
	}
	return demoDir
}

type testServer struct {
	*Server
	URL  string
	base *Base
}

// start serves the demo model on a loopback port.
func start(t *testing.T, opts Options, lo LoadOptions) *testServer {
	t.Helper()
	s := New(opts)
	lo.ID = demo.Name
	lo.Metrics = s.Metrics()
	if lo.Threads == 0 {
		lo.Threads = 2
	}
	b, err := LoadBase(demoModel(t), lo)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, s, b)
}

// serve runs s with base b on a loopback port until the test ends.
func serve(t *testing.T, s *Server, b *Base) *testServer {
	t.Helper()
	s.SetModels(Single{Base: b})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		// fasthttp (v1.51) does not count a keep-alive connection as idle
		// after some streamed responses, so shutdown would wait for it until
		// the deadline: the clients close their idle connections first.
		http.DefaultClient.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			t.Errorf("shutdown: %v", err)
		}
		b.Close(ctx)
	})
	return &testServer{Server: s, URL: "http://" + ln.Addr().String(), base: b}
}

func (ts *testServer) openai(key string) openai.Client {
	if key == "" {
		key = "unused"
	}
	return openai.NewClient(option.WithBaseURL(ts.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0),
		option.WithHTTPClient(http.DefaultClient))
}

func (ts *testServer) post(t *testing.T, path, body string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (ts *testServer) get(t *testing.T, path string, header ...string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// checkEnvelope asserts body is exactly the error envelope with the given type.
func checkEnvelope(t *testing.T, body []byte, wantType, wantParam string) {
	t.Helper()
	var env map[string]map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&env); err != nil || len(env) != 1 || env["error"] == nil {
		t.Fatalf("not an error envelope: %s", body)
	}
	e := env["error"]
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e[k]; !ok {
			t.Errorf("envelope lacks %q: %s", k, body)
		}
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("empty message: %s", body)
	}
	if e["type"] != wantType {
		t.Errorf("type %v, want %s: %s", e["type"], wantType, body)
	}
	if wantParam != "" && e["param"] != wantParam {
		t.Errorf("param %v, want %s: %s", e["param"], wantParam, body)
	}
	if c := e["code"]; c != nil {
		if _, ok := c.(string); !ok {
			t.Errorf("code is neither a string nor null: %s", body)
		}
	}
}

func greedy(prompt string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:       demo.Name,
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You are terse."), openai.UserMessage(prompt)},
		MaxTokens:   openai.Int(maxTokens),
		Temperature: openai.Float(0),
	}
}

func TestOpenAIChat(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	client := ts.openai("")
	ctx := context.Background()

	resp, err := client.Chat.Completions.New(ctx, greedy("Where is the expensive item?", 12))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Model != demo.Name || len(resp.Choices) != 1 || resp.Object != "chat.completion" {
		t.Fatalf("response %+v", resp)
	}
	ch := resp.Choices[0]
	if ch.Message.Role != "assistant" || (ch.FinishReason != "length" && ch.FinishReason != "stop") {
		t.Errorf("choice %+v", ch)
	}
	if resp.Usage.PromptTokens == 0 || resp.Usage.CompletionTokens == 0 || resp.Usage.CompletionTokens > 12 ||
		resp.Usage.TotalTokens != resp.Usage.PromptTokens+resp.Usage.CompletionTokens {
		t.Errorf("usage %+v", resp.Usage)
	}
	again, err := client.Chat.Completions.New(ctx, greedy("Where is the expensive item?", 12))
	if err != nil {
		t.Fatal(err)
	}
	if again.Choices[0].Message.Content != ch.Message.Content {
		t.Errorf("greedy not deterministic: %q then %q", ch.Message.Content, again.Choices[0].Message.Content)
	}

	// Streaming with usage gives the same text.
	p := greedy("Where is the expensive item?", 12)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(ctx, p)
	var text strings.Builder
	var last openai.ChatCompletionChunk
	var finish string
	chunks := 0
	for stream.Next() {
		last = stream.Current()
		chunks++
		for _, c := range last.Choices {
			text.WriteString(c.Delta.Content)
			if c.FinishReason != "" {
				finish = c.FinishReason
			}
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != ch.Message.Content || finish != string(ch.FinishReason) {
		t.Errorf("stream %q %s, non-stream %q %s", text.String(), finish, ch.Message.Content, ch.FinishReason)
	}
	if len(last.Choices) != 0 || last.Usage.CompletionTokens != resp.Usage.CompletionTokens || last.Usage.PromptTokens != resp.Usage.PromptTokens {
		t.Errorf("final chunk %+v, want no choices and usage %+v", last, resp.Usage)
	}
	if chunks < 3 {
		t.Errorf("%d chunks", chunks)
	}

	// n and logprobs.
	p = greedy("Hello", 4)
	p.N = openai.Int(2)
	p.Logprobs = openai.Bool(true)
	p.TopLogprobs = openai.Int(3)
	p.Temperature = openai.Float(0.8)
	p.Seed = openai.Int(42)
	resp, err = client.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 2 {
		t.Fatalf("%d choices", len(resp.Choices))
	}
	for _, c := range resp.Choices {
		if len(c.Logprobs.Content) == 0 {
			t.Errorf("choice %d has no logprobs", c.Index)
		}
		for _, lp := range c.Logprobs.Content {
			if lp.Logprob > 0 || len(lp.TopLogprobs) != 3 || lp.TopLogprobs[0].Logprob < lp.Logprob {
				t.Errorf("logprob entry %+v", lp)
			}
		}
	}
}

func TestOpenAICompletionsAndModels(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	client := ts.openai("")
	ctx := context.Background()

	models, err := client.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != demo.Name {
		t.Fatalf("models %+v", models.Data)
	}

	resp, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model:       demo.Name,
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("The quick brown fox")},
		MaxTokens:   openai.Int(6),
		Temperature: openai.Float(0),
		Logprobs:    openai.Int(2),
		Echo:        openai.Bool(true),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.Choices[0]
	if !strings.HasPrefix(c.Text, "The quick brown fox") {
		t.Errorf("echo missing: %q", c.Text)
	}
	// With echo, the prompt's tokens come first (the first with a null
	// logprob), then the generated ones starting at the prompt's length.
	lp := c.Logprobs
	n := len(lp.Tokens)
	np := int(resp.Usage.PromptTokens)
	if n != np+int(resp.Usage.CompletionTokens) || len(lp.TokenLogprobs) != n || len(lp.TopLogprobs) != n || len(lp.TextOffset) != n {
		t.Fatalf("logprobs for %d prompt + %d completion tokens: %+v", np, resp.Usage.CompletionTokens, lp)
	}
	if !strings.Contains(lp.RawJSON(), `"token_logprobs":[null,`) || lp.TextOffset[0] != 0 {
		t.Errorf("first echoed token: %s", lp.RawJSON())
	}
	if lp.TextOffset[np] != int64(len("The quick brown fox")) {
		t.Errorf("first generated text_offset %d", lp.TextOffset[np])
	}
	for i := 1; i < n; i++ {
		if len(lp.TopLogprobs[i]) == 0 || len(lp.TopLogprobs[i]) > 2 || lp.TokenLogprobs[i] > 0 {
			t.Errorf("token %d: %v %v", i, lp.TokenLogprobs[i], lp.TopLogprobs[i])
		}
		if lp.TextOffset[i] < lp.TextOffset[i-1] {
			t.Errorf("text_offset decreases at %d", i)
		}
	}

	// Stop strings end the completion early.
	plain, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model: demo.Name, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hello")},
		MaxTokens: openai.Int(8), Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if txt := plain.Choices[0].Text; len(txt) > 2 {
		stop := txt[1:2]
		stopped, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model: demo.Name, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hello")},
			MaxTokens: openai.Int(8), Temperature: openai.Float(0),
			Stop: openai.CompletionNewParamsStopUnion{OfString: openai.String(stop)},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := stopped.Choices[0]; got.Text != txt[:strings.Index(txt, stop)] || got.FinishReason != "stop" {
			t.Errorf("stop %q on %q: got %q %s", stop, txt, got.Text, got.FinishReason)
		}
	}

	// Streaming completions.
	stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model: demo.Name, Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Hello")},
		MaxTokens: openai.Int(8), Temperature: openai.Float(0),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var sb strings.Builder
	var usage openai.CompletionUsage
	for stream.Next() {
		ch := stream.Current()
		for _, c := range ch.Choices {
			sb.WriteString(c.Text)
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if sb.String() != plain.Choices[0].Text || usage.CompletionTokens != plain.Usage.CompletionTokens {
		t.Errorf("stream %q %+v, plain %q %+v", sb.String(), usage, plain.Choices[0].Text, plain.Usage)
	}
}

func TestUnknownModel(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	client := ts.openai("")
	p := greedy("hi", 2)
	p.Model = "no-such-model"
	_, err := client.Chat.Completions.New(context.Background(), p)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Type != TypeNotFound || apiErr.Param != "model" {
		t.Fatalf("err %v", err)
	}
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate", "/api/show"} {
		code, body := ts.post(t, path, `{"model":"nope","prompt":"x","messages":[{"role":"user","content":"x"}]}`)
		if code != 404 {
			t.Errorf("%s: status %d %s", path, code, body)
		}
		checkEnvelope(t, body, TypeNotFound, "model")
	}
	code, body := ts.get(t, "/v1/nothing-here")
	if code != 404 {
		t.Errorf("unknown route: %d", code)
	}
	checkEnvelope(t, body, TypeNotFound, "")
}

func TestBadRequests(t *testing.T) {
	ts := start(t, Options{Limits: Limits{MaxBodyBytes: 64 << 10}}, LoadOptions{Context: 256})
	long := strings.Repeat("overlap ", 400)
	msg := func(extra string) string {
		return `{"model":"soo-demo","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	cases := []struct {
		name, path, body string
		status           int
		typ, param       string
	}{
		{"empty body", "/v1/chat/completions", ``, 400, TypeInvalidRequest, ""},
		{"not json", "/v1/chat/completions", `{"model":`, 400, TypeInvalidRequest, ""},
		{"array body", "/v1/chat/completions", `[1,2]`, 400, TypeInvalidRequest, ""},
		{"no model", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, TypeInvalidRequest, "model"},
		{"model wrong type", "/v1/chat/completions", `{"model":5,"messages":[]}`, 400, TypeInvalidRequest, "model"},
		{"no messages", "/v1/chat/completions", `{"model":"soo-demo","messages":[]}`, 400, TypeInvalidRequest, "messages"},
		{"messages wrong type", "/v1/chat/completions", `{"model":"soo-demo","messages":"hi"}`, 400, TypeInvalidRequest, "messages"},
		{"unknown role", "/v1/chat/completions", `{"model":"soo-demo","messages":[{"role":"wizard","content":"hi"}]}`, 400, TypeInvalidRequest, "messages[0].role"},
		{"missing content", "/v1/chat/completions", `{"model":"soo-demo","messages":[{"role":"user"}]}`, 400, TypeInvalidRequest, "messages[0].content"},
		{"image part", "/v1/chat/completions", `{"model":"soo-demo","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, TypeInvalidRequest, "messages[0].content[0].type"},
		{"temperature high", "/v1/chat/completions", msg(`,"temperature":3`), 400, TypeInvalidRequest, "temperature"},
		{"temperature string", "/v1/chat/completions", msg(`,"temperature":"hot"`), 400, TypeInvalidRequest, "temperature"},
		{"top_p", "/v1/chat/completions", msg(`,"top_p":1.5`), 400, TypeInvalidRequest, "top_p"},
		{"top_k negative", "/v1/chat/completions", msg(`,"top_k":-5`), 400, TypeInvalidRequest, "top_k"},
		{"presence", "/v1/chat/completions", msg(`,"presence_penalty":9`), 400, TypeInvalidRequest, "presence_penalty"},
		{"n zero", "/v1/chat/completions", msg(`,"n":0`), 400, TypeInvalidRequest, "n"},
		{"n huge", "/v1/chat/completions", msg(`,"n":1000`), 400, TypeInvalidRequest, "n"},
		{"max_tokens zero", "/v1/chat/completions", msg(`,"max_tokens":0`), 400, TypeInvalidRequest, "max_tokens"},
		{"max_tokens beyond context", "/v1/chat/completions", msg(`,"max_tokens":100000`), 400, TypeInvalidRequest, "max_tokens"},
		{"max_completion_tokens", "/v1/chat/completions", msg(`,"max_completion_tokens":-1`), 400, TypeInvalidRequest, "max_completion_tokens"},
		{"stop wrong type", "/v1/chat/completions", msg(`,"stop":7`), 400, TypeInvalidRequest, "stop"},
		{"too many stops", "/v1/chat/completions", msg(`,"stop":["a","b","c","d","e"]`), 400, TypeInvalidRequest, "stop"},
		{"top_logprobs without logprobs", "/v1/chat/completions", msg(`,"top_logprobs":2`), 400, TypeInvalidRequest, "top_logprobs"},
		{"top_logprobs too many", "/v1/chat/completions", msg(`,"logprobs":true,"top_logprobs":50`), 400, TypeInvalidRequest, "top_logprobs"},
		{"stream_options without stream", "/v1/chat/completions", msg(`,"stream_options":{"include_usage":true}`), 400, TypeInvalidRequest, "stream_options"},
		{"json_object without json", "/v1/chat/completions", msg(`,"response_format":{"type":"json_object"}`), 400, TypeInvalidRequest, "messages"},
		{"json_schema", "/v1/chat/completions", msg(`,"response_format":{"type":"json_schema"}`), 400, TypeInvalidRequest, "response_format"},
		{"oversized prompt", "/v1/chat/completions", msg(``)[:len(msg(``))-len(`"hi"}]}`)] + `"` + long + `"}]}`, 400, TypeInvalidRequest, "messages"},
		{"completions no prompt", "/v1/completions", `{"model":"soo-demo"}`, 400, TypeInvalidRequest, "prompt"},
		{"completions prompt object", "/v1/completions", `{"model":"soo-demo","prompt":{"a":1}}`, 400, TypeInvalidRequest, "prompt"},
		{"completions two prompts", "/v1/completions", `{"model":"soo-demo","prompt":["a","b"]}`, 400, TypeInvalidRequest, "prompt"},
		{"completions bad token", "/v1/completions", `{"model":"soo-demo","prompt":[1,2,999999]}`, 400, TypeInvalidRequest, "prompt"},
		{"completions logprobs", "/v1/completions", `{"model":"soo-demo","prompt":"a","logprobs":99}`, 400, TypeInvalidRequest, "logprobs"},
		{"completions oversized", "/v1/completions", `{"model":"soo-demo","prompt":"` + long + `"}`, 400, TypeInvalidRequest, ""},
		{"ollama unknown role", "/api/chat", `{"model":"soo-demo","messages":[{"role":"wizard","content":"x"}]}`, 400, TypeInvalidRequest, "messages[0].role"},
		{"ollama bad option", "/api/generate", `{"model":"soo-demo","prompt":"x","options":{"temperature":"hot"}}`, 400, TypeInvalidRequest, "options"},
		{"ollama schema format", "/api/generate", `{"model":"soo-demo","prompt":"x","format":{"type":"object"}}`, 400, TypeInvalidRequest, "format"},
		{"ollama wrong type", "/api/chat", `{"model":"soo-demo","messages":{}}`, 400, TypeInvalidRequest, "messages"},
	}
	t.Run("body too large", func(t *testing.T) {
		// Announce a body over the limit without sending it: the server
		// answers from the headers (a client still writing could see EPIPE).
		conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 70<<10)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 413 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		checkEnvelope(t, body, TypeTooLarge, "")
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := ts.post(t, tc.path, tc.body)
			if code != tc.status {
				t.Fatalf("status %d, want %d: %s", code, tc.status, body)
			}
			checkEnvelope(t, body, tc.typ, tc.param)
		})
	}
}

func TestAuthHealthMetrics(t *testing.T) {
	s := New(Options{APIKey: "sekret"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	ts := &testServer{Server: s, URL: "http://" + ln.Addr().String()}
	code, body := ts.get(t, "/health")
	if code != 503 {
		t.Errorf("health while loading: %d %s", code, body)
	}
	checkEnvelope(t, body, TypeUnavailable, "")
	code, _ = ts.get(t, "/v1/models", "Authorization", "Bearer sekret")
	if code != 503 {
		t.Errorf("models while loading: %d", code)
	}

	b, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.SetModels(Single{Base: b})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		b.Sched.Close(ctx)
	})
	if code, body := ts.get(t, "/health"); code != 200 || !bytes.Contains(body, []byte(`"status":"ok"`)) {
		t.Errorf("health: %d %s", code, body)
	}
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "sekret"}} {
		for _, path := range []string{"/v1/models", "/api/tags", "/metrics"} {
			code, body := ts.get(t, path, hdr...)
			if code != 401 {
				t.Errorf("%s with %v: %d", path, hdr, code)
				continue
			}
			checkEnvelope(t, body, TypeAuthentication, "")
		}
	}
	client := ts.openai("wrong")
	if _, err := client.Models.List(context.Background()); err == nil {
		t.Error("wrong key accepted")
	}
	client = ts.openai("sekret")
	if _, err := client.Chat.Completions.New(context.Background(), greedy("hi", 3)); err != nil {
		t.Fatal(err)
	}
	code, body = ts.get(t, "/metrics", "Authorization", "Bearer sekret")
	if code != 200 {
		t.Fatalf("metrics: %d %s", code, body)
	}
	for _, want := range []string{
		`soo_http_requests_total{code="200",model="soo-demo",route="/v1/chat/completions"} 1`,
		`soo_http_requests_total{code="401",model="",route="/v1/models"}`,
		`soo_tokens_total{direction="in",model="soo-demo"}`,
		`soo_time_to_first_token_seconds_count{model="soo-demo",route="/v1/chat/completions"} 1`,
		`soo_batch_occupancy_bucket`, `soo_queue_depth{model="soo-demo"}`,
		`soo_http_request_duration_seconds_bucket`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestOllama(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	client := api.NewClient(mustURL(t, ts.URL), http.DefaultClient)
	ctx := context.Background()

	v, err := client.Version(ctx)
	if err != nil || v == "" {
		t.Fatalf("version %q %v", v, err)
	}
	tags, err := client.List(ctx)
	if err != nil || len(tags.Models) != 1 || tags.Models[0].Name != demo.Name || tags.Models[0].Details.Family != "llama" {
		t.Fatalf("tags %+v %v", tags, err)
	}
	show, err := client.Show(ctx, &api.ShowRequest{Model: demo.Name})
	if err != nil || !strings.Contains(show.Template, "im_start") || show.ModelInfo["general.architecture"] != "llama" {
		t.Fatalf("show %+v %v", show, err)
	}

	opts := map[string]any{"temperature": 0, "num_predict": 8}
	msgs := []api.Message{{Role: "user", Content: "Where is the treasure?"}}
	no := false
	var whole api.ChatResponse
	if err := client.Chat(ctx, &api.ChatRequest{Model: demo.Name, Messages: msgs, Options: opts, Stream: &no}, func(r api.ChatResponse) error {
		whole = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !whole.Done || whole.EvalCount == 0 || whole.PromptEvalCount == 0 || whole.Message.Role != "assistant" {
		t.Fatalf("chat %+v", whole)
	}
	var sb strings.Builder
	parts := 0
	var final api.ChatResponse
	if err := client.Chat(ctx, &api.ChatRequest{Model: demo.Name, Messages: msgs, Options: opts}, func(r api.ChatResponse) error {
		sb.WriteString(r.Message.Content)
		parts++
		final = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if sb.String() != whole.Message.Content || !final.Done || final.DoneReason != whole.DoneReason || parts < 2 {
		t.Errorf("streamed %q (%d parts, %+v), whole %q", sb.String(), parts, final, whole.Message.Content)
	}

	// Generate, then continue from the returned context.
	var gen api.GenerateResponse
	if err := client.Generate(ctx, &api.GenerateRequest{Model: demo.Name, Prompt: "Hello", Options: opts, Stream: &no}, func(r api.GenerateResponse) error {
		gen = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !gen.Done || len(gen.Context) != gen.PromptEvalCount+gen.EvalCount || gen.DoneReason == "" {
		t.Fatalf("generate %+v", gen)
	}
	var sg strings.Builder
	if err := client.Generate(ctx, &api.GenerateRequest{Model: demo.Name, Prompt: "Hello", Options: opts}, func(r api.GenerateResponse) error {
		sg.WriteString(r.Response)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if sg.String() != gen.Response {
		t.Errorf("streamed generate %q, whole %q", sg.String(), gen.Response)
	}
	if err := client.Generate(ctx, &api.GenerateRequest{Model: demo.Name, Prompt: "again", Context: gen.Context, Options: opts, Stream: &no}, func(r api.GenerateResponse) error {
		if r.PromptEvalCount <= len(gen.Context) {
			t.Errorf("context not used: prompt %d tokens", r.PromptEvalCount)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	err = client.Chat(ctx, &api.ChatRequest{Model: "missing", Messages: msgs}, func(api.ChatResponse) error { return nil })
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != 404 {
		t.Errorf("unknown model: %v", err)
	}
}

// TestConcurrentGreedyMatchesSequential checks batch independence end to end:
// 16 concurrent greedy requests return exactly what they return one at a time.
func TestConcurrentGreedyMatchesSequential(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{MaxBatch: 8})
	client := ts.openai("")
	ctx := context.Background()
	var params []openai.ChatCompletionNewParams
	for i := range 16 {
		params = append(params, greedy(fmt.Sprintf("Question %d: %s", i, strings.Repeat("where is the item? ", i%4+1)), int64(6+i%5)))
	}
	want := make([]string, len(params))
	for i, p := range params {
		r, err := client.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = r.Choices[0].Message.Content + "|" + string(r.Choices[0].FinishReason) + fmt.Sprint(r.Usage.CompletionTokens)
	}
	got := make([]string, len(params))
	errs := make([]error, len(params))
	var wg sync.WaitGroup
	for i, p := range params {
		wg.Go(func() {
			if i%2 == 1 { // half of them streamed
				stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
					Model: p.Model, Messages: p.Messages, MaxTokens: p.MaxTokens, Temperature: p.Temperature,
					StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
				})
				var sb strings.Builder
				fin, n := "", int64(0)
				for stream.Next() {
					c := stream.Current()
					for _, ch := range c.Choices {
						sb.WriteString(ch.Delta.Content)
						if ch.FinishReason != "" {
							fin = ch.FinishReason
						}
					}
					n = max(n, c.Usage.CompletionTokens)
				}
				errs[i] = stream.Err()
				got[i] = sb.String() + "|" + fin + fmt.Sprint(n)
				return
			}
			r, err := client.Chat.Completions.New(ctx, p)
			if err != nil {
				errs[i] = err
				return
			}
			got[i] = r.Choices[0].Message.Content + "|" + string(r.Choices[0].FinishReason) + fmt.Sprint(r.Usage.CompletionTokens)
		})
	}
	wg.Wait()
	for i := range params {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if got[i] != want[i] {
			t.Errorf("request %d: concurrent %q, sequential %q", i, got[i], want[i])
		}
	}
}

func mustURL(t *testing.T, s string) *urlType {
	t.Helper()
	u, err := parseURL(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

type urlType = url.URL

var parseURL = url.Parse

// TestQueueFullAndDisconnect: with one batch slot and one queue place, a
// third request gets 429; a streaming client that disconnects frees its slot
// so the queued request runs.
func TestQueueFullAndDisconnect(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{MaxBatch: 1, MaxQueue: 1, Context: 2048})
	long := `{"model":"soo-demo","prompt":"Once upon a time","max_tokens":2000,"temperature":0,"stream":true,"stop":["\u0000never"]}`
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/completions", strings.NewReader(long))
	req.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("stream status %d", resp.StatusCode)
	}
	buf := make([]byte, 256)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	queued := make(chan int, 1)
	go func() {
		code, body := ts.post(t, "/v1/completions", `{"model":"soo-demo","prompt":"Hi","max_tokens":3,"temperature":0}`)
		if code != 200 {
			t.Errorf("queued request: %d %s", code, body)
		}
		queued <- code
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, waiting := ts.base.Sched.Stats(); waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("second request never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, body := ts.post(t, "/v1/chat/completions", `{"model":"soo-demo","messages":[{"role":"user","content":"x"}],"max_tokens":2}`)
	if code != 429 {
		t.Fatalf("third request: %d %s", code, body)
	}
	checkEnvelope(t, body, TypeRateLimit, "")

	// Disconnect the stream: the queued request must now finish well before
	// the 2000 tokens of the first would have.
	resp.Body.Close()
	tr.CloseIdleConnections()
	select {
	case <-queued:
	case <-time.After(20 * time.Second):
		t.Fatal("queued request did not run after the streaming client left")
	}
	if running, _ := ts.base.Sched.Stats(); running > 1 {
		t.Errorf("%d running", running)
	}
	// The abandoned stream is recorded as closed by the client (499).
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, m := ts.get(t, "/metrics")
		if bytes.Contains(m, []byte(`soo_http_requests_total{code="499",model="soo-demo",route="/v1/completions"} 1`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 499 recorded for the abandoned stream:\n%s", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// slowExecutor delays every forward step, so a long generation takes far
// longer than any reasonable wait in a test.
type slowExecutor struct {
	engine.Executor
	delay time.Duration
}

func (e slowExecutor) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	time.Sleep(e.delay)
	return e.Executor.Forward(ctx, rows)
}

// TestNonStreamingDisconnectFreesSlot: a client that gives up on a
// non-streaming request frees its batch slot at once, so a request queued
// behind it runs long before the abandoned one would have finished (2000
// tokens at 20 ms a step: 40 s).
func TestNonStreamingDisconnectFreesSlot(t *testing.T) {
	b0, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	b0.Sched.Close(context.Background())
	ex := slowExecutor{Executor: b0.Sched.Executor(), delay: 20 * time.Millisecond}
	b, err := NewBase(demo.Name, demoModel(t), ex, b0.Tokenizer, b0.Template, LoadOptions{MaxBatch: 1, MaxQueue: 4}, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ts := serve(t, New(Options{}), b)

	long := `{"model":"soo-demo","prompt":"Once upon a time","max_tokens":2000,"temperature":0,"stop":["\u0000never"]}`
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/completions", strings.NewReader(long))
	req.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("the abandoned request completed: %d %.200s", resp.StatusCode, b)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if running, _ := ts.base.Sched.Stats(); running == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the long request never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel() // the client disconnects
	<-done
	start := time.Now()
	code, body := ts.post(t, "/v1/completions", `{"model":"soo-demo","prompt":"Hi","max_tokens":3,"temperature":0}`)
	if code != 200 {
		t.Fatalf("next request: %d %s", code, body)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the next request waited %v: the abandoned one kept its slot", took)
	}
}
