package main

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// soo load --hostile F is a soak: the clients send a mix of valid requests
// (chat and completions, streamed and not, Ollama chat) and, for a fraction
// F of the requests, hostile ones (a double-gzip bomb, a 1 MiB model name,
// an unknown method, conflicting Content-Length headers, a text/plain body,
// a foreign Origin, huge max_tokens, n beyond any limit, malformed JSON, a
// multipart type on a JSON body, a lowercase bearer scheme, a truncated
// body, a prompt far beyond the context). After a warm-up of the same mix it
// reads the server's RSS, soaks, reads it again, and checks /health. Every
// response must be the one the server is designed to give: the class's
// expected status or 429, never another 5xx, never a dropped connection
// where an answer is due, every error body the JSON envelope, and (when
// --rss-bound-mb is set) the RSS growth within that bound.
//
// The RSS comes from the server's /metrics (process_resident_memory_bytes),
// read without a forced GC: it counts garbage and freed pages the Go runtime
// has not yet returned, which with this mix reach hundreds of MB at 64
// clients. A warm-up as long as the soak's ramp makes the two readings
// comparable; a leak shows as growth over a long soak. The test reads VmRSS
// after runtime.GC and debug.FreeOSMemory instead (TestSoakHostile).

// soakClass is one kind of request the soak sends.
type soakClass struct {
	name    string
	hostile bool
	// expect lists the statuses that mean the server served or refused the
	// request as designed; 429 (queue full) is accepted for every class, 0
	// means the server closed the connection without an answer.
	expect []int
	send   func(ctx context.Context, s *soaker) soakResult
}

// soakResult is the outcome of one request.
type soakResult struct {
	status  int    // 0: the connection closed without a response
	code    string // for errors, the envelope's code, else its type[param] or type
	failure string // why the response breaks a rule ("" when it does not)
	kind    string // the failure's category (see soakReport)
}

// soakClassReport is one class's line of the report.
type soakClassReport struct {
	Class        string         `json:"class"`
	Hostile      bool           `json:"hostile"`
	Count        int            `json:"count"`
	Statuses     map[string]int `json:"statuses"`        // "closed": no response
	Codes        map[string]int `json:"codes,omitempty"` // of errors: code, else type[param] or type
	Failures     int            `json:"failures"`
	FirstFailure string         `json:"first_failure,omitempty"`
	MaxMs        float64        `json:"max_ms"`
}

// soakReport is what soo load --hostile measures.
type soakReport struct {
	Clients         int               `json:"clients"`
	Hostile         float64           `json:"hostile"`
	WarmupSeconds   float64           `json:"warmup_seconds"`
	SoakSeconds     float64           `json:"soak_seconds"`
	Requests        int               `json:"requests"` // warm-up included
	HostileRequests int               `json:"hostile_requests"`
	Classes         []soakClassReport `json:"classes"`
	// Failures by kind: a dropped connection or timeout where an answer was
	// due, a 5xx, another unexpected status, an error body outside the
	// envelope, a valid stream that did not end as it should.
	Transport        int    `json:"transport_errors"`
	Unexpected5xx    int    `json:"unexpected_5xx"`
	UnexpectedStatus int    `json:"unexpected_status"`
	NonEnvelope      int    `json:"non_envelope"`
	BadStream        int    `json:"bad_stream"`
	Failures         int    `json:"failures"`
	HealthAfter      int    `json:"health_after"` // status of GET /health after the soak (0: no answer)
	RSSSource        string `json:"rss_source,omitempty"`
	RSSStartBytes    int64  `json:"rss_start_bytes"` // before the warm-up; 0: not measured
	RSSWarmBytes     int64  `json:"rss_after_warmup_bytes"`
	RSSAfterBytes    int64  `json:"rss_after_soak_bytes"`
	RSSBoundBytes    int64  `json:"rss_bound_bytes"` // 0: none
	RSSError         string `json:"rss_error,omitempty"`
	OK               bool   `json:"ok"`
}

// Sizes of the hostile bodies.
const (
	bombBytes      = 64 << 20 // decoded size of the double-gzip bomb
	bigStringBytes = 1 << 20  // the model name, the prompt, the multipart body
	soakMaxError   = 4 << 10  // an error body longer than this is not a bounded envelope
	soakReadLimit  = 4 << 20  // bytes read of any response
	soakTimeout    = time.Minute
)

// soaker holds what the soak's requests share.
type soaker struct {
	base, host, key, model string
	maxTokens              int
	temperature            float64
	client                 *http.Client
	bomb                   []byte // gzip(gzip(bombBytes of 'a'))
	longModel              []byte // a chat request naming a 1 MiB model
	longPrompt             []byte // a completion of a 1 MiB prompt
	bigJSON                []byte // a valid 1 MiB chat request (sent as multipart)
}

// newSoaker builds the request bodies once.
func newSoaker(base, host, key, model string, c loadConfig) (*soaker, error) {
	s := &soaker{base: base, host: host, key: key, model: model, maxTokens: c.MaxTokens, temperature: c.Temperature,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.Clients + 8, DisableCompression: true}}}
	var err error
	if s.bomb, err = gzipBomb(bombBytes); err != nil {
		return nil, err
	}
	big := strings.Repeat("a", bigStringBytes)
	s.longModel = mustJSON(map[string]any{"model": big, "messages": userMsg("hi"), "max_tokens": 1})
	s.longPrompt = mustJSON(map[string]any{"model": model, "prompt": big, "max_tokens": 1})
	s.bigJSON = mustJSON(map[string]any{"model": model, "messages": userMsg(big), "max_tokens": 1})
	return s, nil
}

// gzipBomb returns gzip(gzip(n bytes of 'a')): a few hundred bytes.
func gzipBomb(n int) ([]byte, error) {
	var outer bytes.Buffer
	ow := gzip.NewWriter(&outer)
	iw, err := gzip.NewWriterLevel(ow, gzip.BestCompression)
	if err != nil {
		return nil, fmt.Errorf("load: gzip bomb: %w", err)
	}
	chunk := bytes.Repeat([]byte("a"), 1<<16)
	for left := n; left > 0; left -= len(chunk) {
		if _, err := iw.Write(chunk[:min(left, len(chunk))]); err != nil {
			return nil, fmt.Errorf("load: gzip bomb: %w", err)
		}
	}
	if err := iw.Close(); err != nil {
		return nil, fmt.Errorf("load: gzip bomb: %w", err)
	}
	if err := ow.Close(); err != nil {
		return nil, fmt.Errorf("load: gzip bomb: %w", err)
	}
	return outer.Bytes(), nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are marshalled here
	}
	return b
}

func userMsg(text string) []map[string]string {
	return []map[string]string{{"role": "user", "content": text}}
}

// soakClasses returns the valid and the hostile classes.
func soakClasses() (valid, hostile []soakClass) {
	chat := func(s *soaker, stream bool, extra map[string]any) []byte {
		m := map[string]any{"model": s.model, "messages": userMsg("Tell me about the two rooms."),
			"max_tokens": s.maxTokens, "temperature": s.temperature, "stream": stream}
		if stream {
			m["stream_options"] = map[string]bool{"include_usage": true}
		}
		for k, v := range extra {
			m[k] = v
		}
		return mustJSON(m)
	}
	completion := func(s *soaker, stream bool, extra map[string]any) []byte {
		m := map[string]any{"model": s.model, "prompt": "Once upon a time", "max_tokens": s.maxTokens,
			"temperature": s.temperature, "stream": stream}
		for k, v := range extra {
			m[k] = v
		}
		return mustJSON(m)
	}
	ollama := func(s *soaker, stream bool) []byte {
		return mustJSON(map[string]any{"model": s.model, "messages": userMsg("Where is the key?"), "stream": stream,
			"options": map[string]any{"num_predict": s.maxTokens, "temperature": s.temperature}})
	}
	post := func(path string, body func(*soaker) []byte, check func(*http.Response) soakResult) func(context.Context, *soaker) soakResult {
		return func(ctx context.Context, s *soaker) soakResult {
			return s.do(ctx, http.MethodPost, path, body(s), jsonHeaders(s), check)
		}
	}
	ok := []int{200}
	valid = []soakClass{
		{name: "chat", expect: ok, send: post("/v1/chat/completions", func(s *soaker) []byte { return chat(s, false, nil) }, checkJSON)},
		{name: "chat_stream", expect: ok, send: post("/v1/chat/completions", func(s *soaker) []byte { return chat(s, true, nil) }, checkSSE)},
		{name: "completions", expect: ok, send: post("/v1/completions", func(s *soaker) []byte { return completion(s, false, nil) }, checkJSON)},
		{name: "completions_stream", expect: ok, send: post("/v1/completions", func(s *soaker) []byte { return completion(s, true, nil) }, checkSSE)},
		{name: "ollama_chat", expect: ok, send: post("/api/chat", func(s *soaker) []byte { return ollama(s, false) }, checkJSON)},
		{name: "ollama_chat_stream", expect: ok, send: post("/api/chat", func(s *soaker) []byte { return ollama(s, true) }, checkNDJSON)},
	}
	hostile = []soakClass{
		{name: "gzip_bomb", expect: []int{413}, send: func(ctx context.Context, s *soaker) soakResult {
			h := jsonHeaders(s)
			h["Content-Encoding"] = "gzip, gzip"
			return s.do(ctx, http.MethodPost, "/v1/chat/completions", s.bomb, h, checkJSON)
		}},
		{name: "long_model", expect: []int{404}, send: post("/v1/chat/completions", func(s *soaker) []byte { return s.longModel }, checkJSON)},
		{name: "unknown_method", expect: []int{400}, send: func(ctx context.Context, s *soaker) soakResult {
			return s.do(ctx, "BREW", "/v1/chat/completions", chat(s, false, nil), jsonHeaders(s), checkJSON)
		}},
		{name: "conflicting_length", expect: []int{400}, send: func(ctx context.Context, s *soaker) soakResult {
			body := chat(s, false, nil)
			// fasthttp keeps the last Content-Length, so the body matches it
			// and the request is complete either way.
			return s.raw(ctx, s.rawRequest("/v1/chat/completions", body,
				"Content-Length: "+strconv.Itoa(len(body)+7), "Content-Length: "+strconv.Itoa(len(body))), false)
		}},
		{name: "text_plain", expect: []int{415}, send: func(ctx context.Context, s *soaker) soakResult {
			h := jsonHeaders(s)
			h["Content-Type"] = "text/plain"
			return s.do(ctx, http.MethodPost, "/v1/chat/completions", chat(s, false, nil), h, checkJSON)
		}},
		{name: "foreign_origin", expect: []int{401, 403}, send: func(ctx context.Context, s *soaker) soakResult {
			// A page of another site cannot attach the API key (that needs
			// a preflight): with a key this is a 401, without one a 403.
			h := map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}
			return s.do(ctx, http.MethodPost, "/v1/chat/completions", chat(s, false, nil), h, checkJSON)
		}},
		{name: "huge_max_tokens", expect: []int{400}, send: post("/v1/chat/completions", func(s *soaker) []byte {
			return chat(s, false, map[string]any{"max_tokens": int64(1) << 31})
		}, checkJSON)},
		{name: "n_beyond_limit", expect: []int{400}, send: post("/v1/completions", func(s *soaker) []byte {
			return completion(s, false, map[string]any{"n": 1_000_000})
		}, checkJSON)},
		{name: "malformed_json", expect: []int{400}, send: post("/v1/chat/completions", func(s *soaker) []byte {
			b := chat(s, false, nil)
			return b[:len(b)-7]
		}, checkJSON)},
		{name: "multipart_json", expect: []int{415}, send: func(ctx context.Context, s *soaker) soakResult {
			h := jsonHeaders(s)
			h["Content-Type"] = "multipart/form-data; boundary=soak"
			return s.do(ctx, http.MethodPost, "/v1/chat/completions", s.bigJSON, h, checkJSON)
		}},
		{name: "lowercase_bearer", expect: ok, send: func(ctx context.Context, s *soaker) soakResult {
			h := jsonHeaders(s)
			h["Authorization"] = "bearer " + cmp.Or(s.key, "none")
			return s.do(ctx, http.MethodPost, "/v1/chat/completions", chat(s, false, nil), h, checkJSON)
		}},
		{name: "truncated_body", expect: []int{0, 400}, send: func(ctx context.Context, s *soaker) soakResult {
			// Content-Length promises twice the bytes sent, then the client
			// closes its side: the server may answer 400 or just close.
			body := chat(s, false, nil)
			return s.raw(ctx, s.rawRequest("/v1/chat/completions", body[:len(body)/2],
				"Content-Length: "+strconv.Itoa(len(body))), true)
		}},
		{name: "prompt_too_long", expect: []int{413}, send: post("/v1/completions", func(s *soaker) []byte { return s.longPrompt }, checkJSON)},
	}
	for i := range hostile {
		hostile[i].hostile = true
	}
	return valid, hostile
}

// jsonHeaders are the headers of a well-formed JSON request.
func jsonHeaders(s *soaker) map[string]string {
	h := map[string]string{"Content-Type": "application/json"}
	if s.key != "" {
		h["Authorization"] = "Bearer " + s.key
	}
	return h
}

// do sends one request with net/http and judges the response: an error
// status by its envelope, a 200 by check.
func (s *soaker) do(ctx context.Context, method, path string, body []byte, h map[string]string, check func(*http.Response) soakResult) soakResult {
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, bytes.NewReader(body))
	if err != nil {
		return soakResult{failure: err.Error(), kind: "transport"}
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return soakResult{failure: err.Error(), kind: "transport"}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, soakReadLimit))
		return judgeError(resp.StatusCode, resp.Header.Get("Content-Type"), b, err)
	}
	r := check(resp)
	r.status = resp.StatusCode
	return r
}

// rawRequest is an HTTP/1.1 POST written by hand, with the given
// Content-Length (or other) header lines.
func (s *soaker) rawRequest(path string, body []byte, lines ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", path, s.host)
	if s.key != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", s.key)
	}
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// raw writes req on a new TCP connection (closing the write side after it
// when closeWrite) and judges the response; a connection closed without a
// response is status 0.
func (s *soaker) raw(ctx context.Context, req []byte, closeWrite bool) soakResult {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.host)
	if err != nil {
		return soakResult{failure: err.Error(), kind: "transport"}
	}
	defer conn.Close()
	deadline := time.Now().Add(soakTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	if _, err := conn.Write(req); err != nil {
		return soakResult{failure: err.Error(), kind: "transport"}
	}
	if tc, ok := conn.(*net.TCPConn); ok && closeWrite {
		tc.CloseWrite()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
			return soakResult{status: 0}
		}
		return soakResult{failure: err.Error(), kind: "transport"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, soakReadLimit))
	if resp.StatusCode >= 400 {
		return judgeError(resp.StatusCode, resp.Header.Get("Content-Type"), b, err)
	}
	return soakResult{status: resp.StatusCode}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && strings.Contains(oe.Err.Error(), "reset")
}

// judgeError checks an error response: a JSON envelope
// {"error":{"message","type","param","code"}} with a message and a type,
// param and code strings or null, and no more than soakMaxError bytes.
func judgeError(status int, ctype string, body []byte, readErr error) soakResult {
	r := soakResult{status: status}
	fail := func(format string, args ...any) soakResult {
		r.failure, r.kind = fmt.Sprintf("%d: ", status)+fmt.Sprintf(format, args...), "envelope"
		return r
	}
	if readErr != nil {
		r.failure, r.kind = fmt.Sprintf("%d: reading the body: %v", status, readErr), "transport"
		return r
	}
	if mt, _, _ := strings.Cut(ctype, ";"); strings.TrimSpace(mt) != "application/json" {
		return fail("Content-Type %q, not application/json: %.120q", ctype, body)
	}
	if len(body) > soakMaxError {
		return fail("error body of %d bytes", len(body))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || len(top) != 1 || top["error"] == nil {
		return fail("not the envelope: %.200q", body)
	}
	var inner map[string]json.RawMessage
	if err := json.Unmarshal(top["error"], &inner); err != nil || len(inner) != 4 {
		return fail("not the envelope: %.200q", body)
	}
	var e struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
	if err := json.Unmarshal(top["error"], &e); err != nil || e.Message == "" || e.Type == "" {
		return fail("not the envelope: %.200q", body)
	}
	for _, k := range []string{"param", "code"} {
		if v := inner[k]; v == nil || (string(v) != "null" && v[0] != '"') {
			return fail("%s is neither a string nor null: %.200q", k, body)
		}
	}
	switch {
	case e.Code != nil:
		r.code = *e.Code
	case e.Param != nil:
		r.code = e.Type + "[" + *e.Param + "]"
	default:
		r.code = e.Type
	}
	return r
}

// checkJSON reads a 200 whose body must be one JSON value.
func checkJSON(resp *http.Response) soakResult {
	b, err := io.ReadAll(io.LimitReader(resp.Body, soakReadLimit))
	switch {
	case err != nil:
		return soakResult{failure: "reading the body: " + err.Error(), kind: "transport"}
	case !json.Valid(b):
		return soakResult{failure: fmt.Sprintf("a 200 whose body is not JSON: %.120q", b), kind: "stream"}
	}
	return soakResult{}
}

// checkSSE reads an OpenAI stream: JSON events, no error event, and
// "data: [DONE]" at the end.
func checkSSE(resp *http.Response) soakResult {
	sc := bufio.NewScanner(io.LimitReader(resp.Body, soakReadLimit))
	sc.Buffer(make([]byte, 64<<10), soakReadLimit)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			return soakResult{}
		}
		var ev struct {
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return soakResult{failure: fmt.Sprintf("an event that is not JSON: %.120q", data), kind: "stream"}
		}
		if ev.Error != nil {
			return soakResult{failure: fmt.Sprintf("an error event: %.200s", ev.Error), kind: "stream"}
		}
	}
	if err := sc.Err(); err != nil {
		return soakResult{failure: "reading the stream: " + err.Error(), kind: "transport"}
	}
	return soakResult{failure: "the stream ended without [DONE]", kind: "stream"}
}

// checkNDJSON reads an Ollama stream: JSON lines, no error line, the last
// with "done": true.
func checkNDJSON(resp *http.Response) soakResult {
	sc := bufio.NewScanner(io.LimitReader(resp.Body, soakReadLimit))
	sc.Buffer(make([]byte, 64<<10), soakReadLimit)
	done := false
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var line struct {
			Done  bool    `json:"done"`
			Error *string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return soakResult{failure: fmt.Sprintf("a line that is not JSON: %.120q", sc.Text()), kind: "stream"}
		}
		if line.Error != nil {
			return soakResult{failure: "an error line: " + clipText(*line.Error, 200), kind: "stream"}
		}
		done = line.Done
	}
	if err := sc.Err(); err != nil {
		return soakResult{failure: "reading the stream: " + err.Error(), kind: "transport"}
	}
	if !done {
		return soakResult{failure: `the stream ended without "done": true`, kind: "stream"}
	}
	return soakResult{}
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// soakTally accumulates the results of both phases.
type soakTally struct {
	mu      sync.Mutex
	classes map[string]*soakClassReport
	rep     *soakReport
}

// add records one result of class c that took d.
func (t *soakTally) add(c soakClass, r soakResult, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cr := t.classes[c.name]
	cr.Count++
	t.rep.Requests++
	if c.hostile {
		t.rep.HostileRequests++
	}
	cr.MaxMs = max(cr.MaxMs, d.Seconds()*1000)
	if r.kind == "transport" && r.status == 0 {
		t.failure(cr, "transport", r.failure)
		return
	}
	st := "closed"
	if r.status != 0 {
		st = strconv.Itoa(r.status)
	}
	cr.Statuses[st]++
	if r.code != "" {
		if cr.Codes == nil {
			cr.Codes = map[string]int{}
		}
		cr.Codes[r.code]++
	}
	switch {
	case r.failure != "":
		t.failure(cr, r.kind, r.failure)
	case r.status == http.StatusTooManyRequests || slices.Contains(c.expect, r.status):
	case r.status >= 500:
		t.failure(cr, "5xx", fmt.Sprintf("%d %s", r.status, r.code))
	case r.status == 0:
		t.failure(cr, "transport", "the server closed the connection without a response")
	default:
		t.failure(cr, "status", fmt.Sprintf("status %d (code %q), expected %v", r.status, r.code, c.expect))
	}
}

func (t *soakTally) failure(cr *soakClassReport, kind, msg string) {
	cr.Failures++
	t.rep.Failures++
	if cr.FirstFailure == "" {
		cr.FirstFailure = clipText(msg, 300)
	}
	switch kind {
	case "transport":
		t.rep.Transport++
	case "5xx":
		t.rep.Unexpected5xx++
	case "envelope":
		t.rep.NonEnvelope++
	case "stream":
		t.rep.BadStream++
	default:
		t.rep.UnexpectedStatus++
	}
}

// soakTest runs soo load --hostile: a warm-up and a soak of the mix, the
// server's RSS after each, and /health at the end.
func soakTest(ctx context.Context, c loadConfig) (*soakReport, error) {
	u, err := checkLoopback(c.URL)
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(u.String(), "/")
	if u.Scheme != "http" {
		return nil, fmt.Errorf("--hostile writes raw HTTP/1.1 requests: use an http:// URL")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	client := &http.Client{Timeout: soakTimeout}
	if c.Model == "" {
		if c.Model, err = firstModel(ctx, client, base, c.APIKey); err != nil {
			return nil, err
		}
	}
	s, err := newSoaker(base, host, c.APIKey, c.Model, c)
	if err != nil {
		return nil, err
	}
	defer s.client.CloseIdleConnections()
	rss := c.rss
	if rss == nil {
		rss = func(ctx context.Context) (int64, error) { return metricsRSS(ctx, client, base, c.APIKey) }
		c.rssSource = "process_resident_memory_bytes of the server's /metrics (no forced GC)"
	}
	valid, hostile := soakClasses()
	rep := &soakReport{Clients: c.Clients, Hostile: c.Hostile, RSSBoundBytes: int64(c.RSSBoundMB) << 20, RSSSource: c.rssSource}
	tally := &soakTally{classes: map[string]*soakClassReport{}, rep: rep}
	for _, cl := range slices.Concat(valid, hostile) {
		tally.classes[cl.name] = &soakClassReport{Class: cl.name, Hostile: cl.hostile, Statuses: map[string]int{}}
	}
	var (
		mu                    sync.Mutex
		seq, nv, nh, soakSent int
		warmEnd               = time.Now().Add(c.Warmup)
		soakEnd               time.Time
	)
	// next picks the class of the next request (false when the phase is
	// over, by time or, in the soak, by --max-requests):
	// request i is hostile when floor((i+1)F) > floor(iF), and each list is
	// taken in turn, so every class is sent about equally often.
	next := func(soaking bool) (soakClass, bool) {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return soakClass{}, false
		}
		if soaking {
			if soakSent >= c.MaxRequests || time.Now().After(soakEnd) {
				return soakClass{}, false
			}
			soakSent++
		} else if time.Now().After(warmEnd) {
			return soakClass{}, false
		}
		i := seq
		seq++
		if int(float64(i+1)*c.Hostile) > int(float64(i)*c.Hostile) {
			nh++
			return hostile[(nh-1)%len(hostile)], true
		}
		nv++
		return valid[(nv-1)%len(valid)], true
	}
	phase := func(soaking bool) {
		var wg sync.WaitGroup
		for range c.Clients {
			wg.Go(func() {
				for {
					cl, ok := next(soaking)
					if !ok {
						return
					}
					rctx, cancel := context.WithTimeout(ctx, soakTimeout)
					t0 := time.Now()
					r := cl.send(rctx, s)
					d := time.Since(t0)
					cancel()
					if ctx.Err() != nil {
						return // interrupted: not the server's doing
					}
					tally.add(cl, r, d)
				}
			})
		}
		wg.Wait()
	}
	if rep.RSSStartBytes, err = rss(ctx); err != nil {
		rep.RSSError = err.Error()
	}
	t0 := time.Now()
	if c.Warmup > 0 {
		phase(false)
	}
	rep.WarmupSeconds = time.Since(t0).Seconds()
	if rep.RSSError == "" {
		if rep.RSSWarmBytes, err = rss(ctx); err != nil {
			rep.RSSError = err.Error()
		}
	}
	t0 = time.Now()
	soakEnd = t0.Add(c.Duration)
	phase(true)
	rep.SoakSeconds = time.Since(t0).Seconds()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load: soak interrupted: %w", err)
	}
	if rep.RSSError == "" {
		if rep.RSSAfterBytes, err = rss(ctx); err != nil {
			rep.RSSError = err.Error()
		}
	}
	rep.HealthAfter = healthStatus(ctx, client, base)
	for _, cl := range slices.Concat(valid, hostile) {
		rep.Classes = append(rep.Classes, *tally.classes[cl.name])
	}
	rssOK := rep.RSSError != "" || rep.RSSBoundBytes == 0 || rep.RSSAfterBytes-rep.RSSWarmBytes <= rep.RSSBoundBytes
	rep.OK = rep.Failures == 0 && rep.HealthAfter == http.StatusOK && rssOK
	return rep, nil
}

// healthStatus returns the status of GET /health (0 when there is none).
func healthStatus(ctx context.Context, client *http.Client, base string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health", nil)
	if err != nil {
		return 0
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, soakReadLimit))
	return resp.StatusCode
}

// metricsRSS reads process_resident_memory_bytes from the server's
// /metrics.
func metricsRSS(ctx context.Context, client *http.Client, base, key string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return 0, fmt.Errorf("load: metrics: %w", err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("load: metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("load: metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_resident_memory_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("load: metrics: process_resident_memory_bytes %q: %w", v, err)
			}
			return int64(f), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("load: metrics: %w", err)
	}
	return 0, errors.New("load: metrics: the server reports no process_resident_memory_bytes")
}

// printSoak writes the report for people.
func printSoak(w io.Writer, rep *soakReport) {
	fmt.Fprintf(w, "soak          %d requests (%d hostile) from %d clients: %.1fs warm-up, %.1fs soak\n",
		rep.Requests, rep.HostileRequests, rep.Clients, rep.WarmupSeconds, rep.SoakSeconds)
	fmt.Fprintf(w, "%-20s %7s %8s  %-28s %s\n", "class", "count", "max ms", "statuses", "codes")
	for _, cr := range rep.Classes {
		name := cr.Class
		if cr.Hostile {
			name += " *"
		}
		fmt.Fprintf(w, "%-20s %7d %8.0f  %-28s %s\n", name, cr.Count, cr.MaxMs, countsText(cr.Statuses), countsText(cr.Codes))
		if cr.Failures > 0 {
			fmt.Fprintf(w, "%20s %d failures, first: %s\n", "", cr.Failures, cr.FirstFailure)
		}
	}
	fmt.Fprintf(w, "(* hostile)\n")
	fmt.Fprintf(w, "failures      %d: %d transport, %d 5xx, %d unexpected status, %d outside the envelope, %d bad streams\n",
		rep.Failures, rep.Transport, rep.Unexpected5xx, rep.UnexpectedStatus, rep.NonEnvelope, rep.BadStream)
	fmt.Fprintf(w, "health after  %d\n", rep.HealthAfter)
	if rep.RSSError != "" {
		fmt.Fprintf(w, "RSS           not measured: %s\n", rep.RSSError)
	} else {
		growth := rep.RSSAfterBytes - rep.RSSWarmBytes
		bound := "no bound"
		if rep.RSSBoundBytes > 0 {
			bound = fmt.Sprintf("bound %+.0f MB", mb(rep.RSSBoundBytes))
		}
		fmt.Fprintf(w, "RSS           %.1f MB before, %.1f MB after warm-up, %.1f MB after the soak: %+.1f MB since the warm-up (%s)\n",
			mb(rep.RSSStartBytes), mb(rep.RSSWarmBytes), mb(rep.RSSAfterBytes), mb(growth), bound)
		fmt.Fprintf(w, "              from %s\n", rep.RSSSource)
	}
	verdict := "ok"
	if !rep.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "verdict       %s\n", verdict)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// countsText writes {"200": 3, "429": 1} as "200:3 429:1", keys sorted.
func countsText(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
