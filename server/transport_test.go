package server

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/internal/demo"
)

// gzipBomb returns prefix + decoded bytes of fill + suffix, gzipped layers
// times (streamed: the decoded text is never held in memory).
func gzipBomb(t testing.TB, layers, decoded int, fill byte, prefix, suffix string) []byte {
	t.Helper()
	var out bytes.Buffer
	var w io.Writer = &out
	var closers []io.Closer
	for range layers {
		zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, zw)
		w = zw
	}
	io.WriteString(w, prefix)
	chunk := bytes.Repeat([]byte{fill}, 1<<20)
	for n := 0; n < decoded; n += len(chunk) {
		w.Write(chunk[:min(len(chunk), decoded-n)])
	}
	io.WriteString(w, suffix)
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i].Close()
	}
	return out.Bytes()
}

// rss returns the process's resident set in bytes (0 where /proc is absent).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// send posts body to path with the given headers (pairs) and returns the
// status, the response headers and the body.
func send(t *testing.T, method, url string, body []byte, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// ollamaPath reports whether url is an Ollama route, whose errors may take
// Ollama's {"error": "message"} form (DESIGN §8) instead of the envelope.
func ollamaPath(url string) bool { return strings.Contains(url, "/api/") }

// envelopeCode returns the envelope's code, failing the test when body is
// not the envelope of wantType.
func envelopeCode(t *testing.T, body []byte, wantType string) string {
	t.Helper()
	checkEnvelope(t, body, wantType, "")
	var env struct {
		Error struct{ Code *string }
	}
	json.Unmarshal(body, &env)
	if env.Error.Code == nil {
		return ""
	}
	return *env.Error.Code
}

// TestCompressedBodyBomb is issue 16's critical finding: a 385-byte request
// with Content-Encoding "gzip, gzip" inflated to 64 MB, tokenized for
// seconds and left gigabytes resident. Now the decoded size is capped at the
// body limit: a 413 in well under a second, and RSS grows by less than 50 MB.
func TestCompressedBodyBomb(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	body := gzipBomb(t, 2, 64<<20, 'a', `{"model":"soo-demo","prompt":"`, `","max_tokens":1}`)
	t.Logf("bomb: %d bytes", len(body))
	if len(body) > 1024 {
		t.Fatalf("the bomb is %d bytes", len(body))
	}
	for _, tc := range []struct{ url, ctype string }{
		{ts.URL + "/v1/completions", "application/json"},
		{ts.URL + "/api/generate", "application/json"},
		{as.URL + "/v1/adapters", "multipart/form-data; boundary=xyz"},
	} {
		runtime.GC()
		debug.FreeOSMemory()
		before := rss()
		t0 := time.Now()
		code, _, resp := send(t, http.MethodPost, tc.url, body, "Content-Type", tc.ctype, "Content-Encoding", "gzip, gzip")
		took := time.Since(t0)
		grew := rss() - before
		t.Logf("%s: %d in %v, RSS %+d MB", tc.url, code, took, grew>>20)
		if code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: status %d, want 413: %.300s", tc.url, code, resp)
			continue
		}
		if !ollamaPath(tc.url) {
			if c := envelopeCode(t, resp, TypeTooLarge); c != "body_too_large" {
				t.Errorf("code %q", c)
			}
		}
		if took > time.Second {
			t.Errorf("%s: the bomb took %v", tc.url, took)
		}
		if before > 0 && grew > 50<<20 {
			t.Errorf("%s: RSS grew by %d MB", tc.url, grew>>20)
		}
	}
}

// TestContentEncodings: gzip, x-gzip and deflate (zlib or raw) bodies
// decode; more than two layers, unknown codings (br included) are 415;
// corrupt data is 400; the limit holds on the decoded size of every layer.
func TestContentEncodings(t *testing.T) {
	ts := start(t, Options{Limits: Limits{MaxBodyBytes: 64 << 10}}, LoadOptions{Context: 256})
	plain := []byte(`{"model":"soo-demo","prompt":"The quick brown fox","max_tokens":2,"temperature":0}`)
	gz := func(b []byte) []byte {
		var o bytes.Buffer
		w := gzip.NewWriter(&o)
		w.Write(b)
		w.Close()
		return o.Bytes()
	}
	zl := func(b []byte) []byte {
		var o bytes.Buffer
		w := zlib.NewWriter(&o)
		w.Write(b)
		w.Close()
		return o.Bytes()
	}
	raw := func(b []byte) []byte {
		var o bytes.Buffer
		w, _ := flate.NewWriter(&o, 5)
		w.Write(b)
		w.Close()
		return o.Bytes()
	}
	big := fmt.Appendf(nil, `{"model":"soo-demo","prompt":"%s"}`, strings.Repeat("b", 70<<10))
	cases := []struct {
		name, enc string
		body      []byte
		status    int
		code      string
	}{
		{"gzip", "gzip", gz(plain), 200, ""},
		{"x-gzip", "x-gzip", gz(plain), 200, ""},
		{"gzip twice", "gzip, gzip", gz(gz(plain)), 200, ""},
		{"deflate zlib", "deflate", zl(plain), 200, ""},
		{"deflate raw", "deflate", raw(plain), 200, ""},
		{"identity", "identity", plain, 200, ""},
		{"deflate then gzip", "deflate, gzip", gz(zl(plain)), 200, ""},
		{"Gzip mixed case", " GZip ", gz(plain), 200, ""},
		{"three layers", "gzip, gzip, gzip", gz(gz(gz(plain))), 415, "too_many_encodings"},
		{"br", "br", plain, 415, "unsupported_encoding"},
		{"zstd", "zstd", plain, 415, "unsupported_encoding"},
		{"corrupt gzip", "gzip", []byte("not gzip at all"), 400, "invalid_encoding"},
		{"truncated gzip", "gzip", gz(plain)[:20], 400, "invalid_encoding"},
		{"over the limit decoded", "gzip", gz(big), 413, "body_too_large"},
	}
	for _, tc := range cases {
		code, _, body := send(t, http.MethodPost, ts.URL+"/v1/completions", tc.body, "Content-Type", "application/json", "Content-Encoding", tc.enc)
		if code != tc.status {
			t.Errorf("%s: %d, want %d: %s", tc.name, code, tc.status, body)
			continue
		}
		if tc.status != 200 {
			typ := map[int]string{400: TypeInvalidRequest, 413: TypeTooLarge, 415: TypeUnsupported}[tc.status]
			if c := envelopeCode(t, body, typ); c != tc.code {
				t.Errorf("%s: code %q, want %q", tc.name, c, tc.code)
			}
		}
	}
	// An intermediate layer is capped too: a gzip of a gzip whose inner
	// (compressed) stream alone passes the limit.
	noise := make([]byte, 100<<10)
	for i := range noise {
		noise[i] = byte(i*7919 + i/13)
	}
	code, _, body := send(t, http.MethodPost, ts.URL+"/v1/completions", gz(gz(noise)), "Content-Type", "application/json", "Content-Encoding", "gzip, gzip")
	if code != 413 {
		t.Errorf("inner layer over the limit: %d %s", code, body)
	}
}

// TestPromptTooLongBeforeTokenizing: a large prompt whose byte length
// proves it cannot fit the context is a 413 (prompt_too_long) before
// tokenization; shorter prompts that do not fit keep the 400
// (context_length_exceeded) of the token count.
func TestPromptTooLongBeforeTokenizing(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{Context: 256})
	mb := ts.base.Tokenizer.MaxTokenBytes()
	if mb <= 0 {
		t.Fatalf("the demo tokenizer has no byte bound (MaxTokenBytes %d)", mb)
	}
	long := strings.Repeat("x", max(256*mb+1, earlyPromptBytes))
	for _, tc := range []struct{ path, body string }{
		{"/v1/completions", fmt.Sprintf(`{"model":"soo-demo","prompt":%q}`, long)},
		{"/v1/chat/completions", fmt.Sprintf(`{"model":"soo-demo","messages":[{"role":"user","content":%q}]}`, long)},
		{"/api/generate", fmt.Sprintf(`{"model":"soo-demo","prompt":%q,"stream":false}`, long)},
		{"/api/chat", fmt.Sprintf(`{"model":"soo-demo","messages":[{"role":"user","content":%q}],"stream":false}`, long)},
	} {
		code, body := ts.post(t, tc.path, tc.body)
		if code != 413 {
			t.Errorf("%s: %d %s", tc.path, code, body)
			continue
		}
		if !ollamaPath(tc.path) {
			if c := envelopeCode(t, body, TypeTooLarge); c != "prompt_too_long" {
				t.Errorf("%s: code %q", tc.path, c)
			}
		}
	}
	// 300 tokens in fewer bytes than the bound: counted, then refused as before.
	code, body := ts.post(t, "/v1/completions", fmt.Sprintf(`{"model":"soo-demo","prompt":%q}`, strings.Repeat("x ", 300)))
	if code != 400 || !bytes.Contains(body, []byte("context_length_exceeded")) {
		t.Errorf("short but too many tokens: %d %s", code, body)
	}
}

// TestMetricsModelLabelBounded: the model label is a served model or
// "unknown", whatever string a handler stored before validating it, and
// distinct bogus names do not add series.
func TestMetricsModelLabelBounded(t *testing.T) {
	s := New(Options{})
	// A handler that, like training's did, labels a request with the
	// client's model before validating it.
	s.app.Post("/test/early-label", func(c *fiber.Ctx) error {
		var req struct{ Model string }
		json.Unmarshal(c.Body(), &req)
		c.Locals(localModel, req.Model)
		return Invalid("model", "no")
	})
	b, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	ts := serve(t, s, b)
	series := func() (int, map[string]bool) {
		code, body := ts.get(t, "/metrics")
		if code != 200 {
			t.Fatalf("metrics: %d", code)
		}
		models := map[string]bool{}
		n := 0
		re := regexp.MustCompile(`model="([^"]*)"`)
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "soo_") {
				n++
				if m := re.FindStringSubmatch(line); m != nil {
					models[m[1]] = true
				}
			}
		}
		return n, models
	}
	for i := range 3 { // warm every route and status once
		ts.post(t, "/test/early-label", fmt.Sprintf(`{"model":"warm-%d"}`, i))
		ts.post(t, "/v1/chat/completions", fmt.Sprintf(`{"model":"warm-%d","messages":[{"role":"user","content":"hi"}]}`, i))
	}
	series() // the first GET /metrics adds its own series
	n0, _ := series()
	for i := range 200 {
		name := fmt.Sprintf("bogus-%d-%s", i, strings.Repeat("z", i))
		ts.post(t, "/test/early-label", fmt.Sprintf(`{"model":%q}`, name))
		ts.post(t, "/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, name))
	}
	n1, models := series()
	if n1 != n0 {
		t.Errorf("200 bogus model names grew the soo_ series from %d to %d", n0, n1)
	}
	for m := range models {
		if m != "" && m != demo.Name && m != unknownModel {
			t.Errorf("model label %q", m)
		}
	}
	if !models[unknownModel] {
		t.Error("no request labelled unknown")
	}
}

// TestErrorMessagesClipped: a 1 MB model name is not echoed back whole; no
// envelope message passes 512 bytes.
func TestErrorMessagesClipped(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	huge := strings.Repeat("m", 1<<20)
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, huge)},
		{"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"hi"}`, huge)},
		{"/api/generate", fmt.Sprintf(`{"model":%q,"prompt":"hi"}`, huge)},
		{"/v1/chat/completions", fmt.Sprintf(`{"model":"soo-demo","messages":[{"role":%q,"content":"hi"}]}`, huge)},
		{"/v1/chat/completions", fmt.Sprintf(`{"model":"soo-demo","messages":[{"role":"user","content":"hi"}],"response_format":{"type":%q}}`, huge)},
	} {
		code, body := ts.post(t, tc.path, tc.body)
		if code < 400 || len(body) > 1024 {
			t.Errorf("%s: %d, %d-byte body: %.200s", tc.path, code, len(body), body)
		}
	}
	if got := clip(strings.Repeat("é", 100)); len(got) > maxEcho || !strings.HasSuffix(got, "…") || !utf8Valid(got) {
		t.Errorf("clip: %q", got)
	}
	e := Invalid("", "%s", huge)
	if b := e.Envelope(); len(b) > maxMessage+200 {
		t.Errorf("envelope of a 1 MB message is %d bytes", len(b))
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\x00") == s }

// rawHTTP writes req on a new connection and returns what the server sends
// back until it closes the connection or 5 s pass.
func rawHTTP(t *testing.T, url, req string) (string, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(conn)
	closed := err == nil // EOF: the server closed the connection
	return string(out), closed
}

// parseRaw parses the first response of raw.
func parseRaw(t *testing.T, raw string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), nil)
	if err != nil {
		t.Fatalf("no response (%v): %q", err, raw)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestUnknownMethodEnvelope: an unknown method gets the JSON envelope, not
// fiber's text/plain "Invalid http method".
func TestUnknownMethodEnvelope(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	for _, m := range []string{"FOO", "get", "PROPFIND"} {
		code, h, body := send(t, m, ts.URL+"/v1/models", nil)
		if code != 400 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Errorf("%s: %d %s %s", m, code, h.Get("Content-Type"), body)
			continue
		}
		if c := envelopeCode(t, body, TypeInvalidRequest); c != "unknown_method" {
			t.Errorf("%s: code %q", m, c)
		}
	}
}

// TestConflictingContentLength: two Content-Length headers that differ, or
// Content-Length with Transfer-Encoding, are refused with 400 and the
// connection is closed (fasthttp used the last one).
func TestConflictingContentLength(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{Context: 256})
	body := `{"model":"soo-demo","prompt":"hi","max_tokens":1}`
	for name, req := range map[string]string{
		"two lengths":        fmt.Sprintf("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: %d\r\n\r\n%s", len(body), body),
		"length and chunked": fmt.Sprintf("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body),
		"chunked and length": fmt.Sprintf("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body),
	} {
		out, closed := rawHTTP(t, ts.URL, req)
		code, _, b := parseRaw(t, out)
		if code != 400 {
			t.Errorf("%s: %d %s", name, code, b)
			continue
		}
		if c := envelopeCode(t, b, TypeInvalidRequest); c != "bad_framing" {
			t.Errorf("%s: code %q", name, c)
		}
		if !closed {
			t.Errorf("%s: connection left open", name)
		}
	}
	// Identical repeated lengths are one length (RFC 9110 §8.6).
	out, _ := rawHTTP(t, ts.URL, fmt.Sprintf("POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n%s", len(body), len(body), body))
	if code, _, b := parseRaw(t, out); code != 200 {
		t.Errorf("repeated equal lengths: %d %s", code, b)
	}
}

// TestMultipartTypeOnLargeBody: a multipart Content-Type on a large body
// that is not multipart used to reset the connection (fasthttp parsed the
// form while reading); now it is an envelope: 415 on JSON routes, 400 on the
// upload route.
func TestMultipartTypeOnLargeBody(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	body := bytes.Repeat([]byte("a"), 4<<20)
	ct := "multipart/form-data; boundary=xyz"
	code, _, b := send(t, http.MethodPost, ts.URL+"/v1/chat/completions", body, "Content-Type", ct)
	if code != 415 {
		t.Errorf("chat: %d %s", code, b)
	} else {
		envelopeCode(t, b, TypeUnsupported)
	}
	code, _, b = send(t, http.MethodPost, as.URL+"/v1/adapters", body, "Content-Type", ct)
	if code != 400 {
		t.Errorf("upload: %d %s", code, b)
	} else {
		envelopeCode(t, b, TypeInvalidRequest)
	}
}

// TestBearerSchemeCaseInsensitive: "bearer KEY" and "BEARER KEY" are the
// same credentials as "Bearer KEY" (RFC 9110 §11.1).
func TestBearerSchemeCaseInsensitive(t *testing.T) {
	ts := start(t, Options{APIKey: "sekret"}, LoadOptions{})
	for hdr, want := range map[string]int{
		"Bearer sekret": 200, "bearer sekret": 200, "BEARER sekret": 200, "Bearer  sekret": 200,
		"Basic sekret": 401, "sekret": 401, "bearer wrong": 401, "bearersekret": 401,
	} {
		if code, body := ts.get(t, "/v1/models", "Authorization", hdr); code != want {
			t.Errorf("%q: %d, want %d: %s", hdr, code, want, body)
		}
	}
}

// TestJSONContentTypeRequired: JSON routes refuse bodies that are not
// application/json (a browser sends text/plain and forms across origins
// without a preflight) with 415; charset parameters are fine.
func TestJSONContentTypeRequired(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{Context: 256})
	body := []byte(`{"model":"soo-demo","prompt":"hi","max_tokens":1}`)
	for ct, want := range map[string]int{
		"application/json": 200, "application/json; charset=utf-8": 200, "Application/JSON": 200,
		"text/plain": 415, "text/plain; charset=utf-8": 415, "application/x-www-form-urlencoded": 415,
		"multipart/form-data; boundary=x": 415, "": 415, "application/jsonx": 415,
	} {
		hdr := []string{"Content-Type", ct}
		if ct == "" {
			hdr = nil
		}
		code, _, b := send(t, http.MethodPost, ts.URL+"/v1/completions", body, hdr...)
		if code != want {
			t.Errorf("%q: %d, want %d: %s", ct, code, want, b)
		} else if want == 415 {
			if c := envelopeCode(t, b, TypeUnsupported); c != "unsupported_content_type" {
				t.Errorf("%q: code %q", ct, c)
			}
		}
	}
	for _, path := range []string{"/v1/chat/completions", "/api/chat", "/api/generate", "/api/show", "/v1/overlap", "/v1/soo/jobs", "/v1/evals"} {
		if code, _, b := send(t, http.MethodPost, ts.URL+path, []byte(`{}`), "Content-Type", "text/plain"); code != 415 {
			t.Errorf("%s text/plain: %d %s", path, code, b)
		}
	}
}

// TestOriginCheck: without an API key, a state-changing request from a page
// of another origin is refused with 403; same-origin and loopback pages,
// clients without Origin, and GETs pass; with a key the key decides.
func TestOriginCheck(t *testing.T) {
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(as.URL, "http://"))
	chat := []byte(`{"model":"soo-demo","prompt":"hi","max_tokens":1}`)
	for _, tc := range []struct {
		origin string
		want   int
	}{
		{"", 200}, {as.URL, 200}, {"http://localhost:" + port, 200}, {"http://[::1]:" + port, 200},
		{"http://evil.example", 403}, {"http://evil.example:" + port, 403}, {"null", 403},
		{"http://localhost:1", 403}, {"https://127.0.0.1:" + port + ".evil.example", 403},
	} {
		hdr := []string{"Content-Type", "application/json"}
		if tc.origin != "" {
			hdr = append(hdr, "Origin", tc.origin)
		}
		code, _, b := send(t, http.MethodPost, as.URL+"/v1/completions", chat, hdr...)
		if code != tc.want {
			t.Errorf("Origin %q: %d, want %d: %s", tc.origin, code, tc.want, b)
		} else if tc.want == 403 {
			if c := envelopeCode(t, b, TypePermission); c != "cross_origin" {
				t.Errorf("code %q", c)
			}
		}
	}
	// A browser form post to the upload route and a DELETE from another site.
	form := []byte("--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nevil\r\n--x--\r\n")
	if code, _, b := send(t, http.MethodPost, as.URL+"/v1/adapters", form, "Content-Type", "multipart/form-data; boundary=x", "Origin", "http://evil.example"); code != 403 {
		t.Errorf("cross-origin upload: %d %s", code, b)
	}
	if code, _, b := send(t, http.MethodDelete, as.URL+"/v1/adapters/x", nil, "Origin", "http://evil.example"); code != 403 {
		t.Errorf("cross-origin delete: %d %s", code, b)
	}
	if code, _, b := send(t, http.MethodGet, as.URL+"/v1/models", nil, "Origin", "http://evil.example"); code != 200 {
		t.Errorf("cross-origin GET: %d %s", code, b)
	}

	keyed := start(t, Options{APIKey: "k"}, LoadOptions{Context: 256})
	if code, _, b := send(t, http.MethodPost, keyed.URL+"/v1/completions", chat, "Content-Type", "application/json", "Origin", "http://evil.example", "Authorization", "Bearer k"); code != 200 {
		t.Errorf("with a key, Origin is not checked: %d %s", code, b)
	}
	if sameOrigin("http://example.com", "example.com") != true || sameOrigin("https://example.com", "example.com") != true ||
		sameOrigin("http://example.com:8080", "example.com") || sameOrigin("http://a.example", "b.example") {
		t.Error("sameOrigin")
	}
}

// TestCompressedDecodesBounded: at most maxDecodes compressed bodies decode
// at once (each may grow to the body limit); a request finding every turn
// taken waits for one instead of adding another decoder's memory.
func TestCompressedDecodesBounded(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{Context: 256})
	var o bytes.Buffer
	w := gzip.NewWriter(&o)
	w.Write([]byte(`{"model":"soo-demo","prompt":"hi","max_tokens":1,"temperature":0}`))
	w.Close()
	for range maxDecodes {
		ts.decodes <- struct{}{} // every turn taken
	}
	released := make(chan time.Time, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		released <- time.Now()
		<-ts.decodes
	}()
	status, _, body := send(t, "POST", ts.URL+"/v1/completions", o.Bytes(),
		"Content-Type", "application/json", "Content-Encoding", "gzip")
	done := time.Now()
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if at := <-released; done.Before(at) {
		t.Fatalf("the request decoded while every decoding turn was taken")
	}
}
