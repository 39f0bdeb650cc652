package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/internal/demo"
)

// memConn is a net.Conn over an in-memory request: reads come from r,
// writes go to w.
type memConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *memConn) Close() error                       { return nil }
func (c *memConn) LocalAddr() net.Addr                { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080} }
func (c *memConn) RemoteAddr() net.Addr               { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// fuzzBodyLimit is the fuzz server's body limit (decoded).
const fuzzBodyLimit = 1 << 20

// fuzzAllocBudget bounds the bytes one fuzzed request may allocate: a few
// times the body limit, whatever its encoding says.
const fuzzAllocBudget = 48 << 20

// newFuzzServer returns the demo model (context 64) with an adapter
// registry, ready to serve connections handed to it.
func newFuzzServer(f *testing.F) *Server {
	s := New(Options{Limits: Limits{MaxBodyBytes: fuzzBodyLimit}})
	s.MountAdapters()
	b, err := LoadBase(fuzzDemoModel(f), LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 1, Context: 64})
	if err != nil {
		f.Fatal(err)
	}
	store, err := adapters.OpenDisk(f.TempDir(), nil)
	if err != nil {
		f.Fatal(err)
	}
	reg, err := adapters.Open(context.Background(), adapters.Options{Base: b.Config, BaseID: b.ID, Store: store,
		MaxResident: 2, Registerer: s.Registry()})
	if err != nil {
		f.Fatal(err)
	}
	s.SetModels(&AdapterModels{Base: b, Registry: reg})
	s.app.Handler() // builds the routing tree, as Serve does
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		b.Close(ctx)
		reg.Close()
	})
	return s
}

// fuzzDemoModel is demoModel for a fuzz target.
func fuzzDemoModel(f *testing.F) string {
	demoOnce.Do(func() {
		if demoDir, demoErr = os.MkdirTemp("", "server-demo"); demoErr == nil {
			demoErr = demo.Write(demoDir)
		}
	})
	if demoErr != nil {
		f.Fatal(demoErr)
	}
	return demoDir
}

// rawRequest assembles an HTTP/1.1 request: headers are "Key: value"
// lines; Host and Content-Length are added unless given (or
// Transfer-Encoding is).
func rawRequest(method, target, headers string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	host, length := false, false
	for _, line := range strings.Split(headers, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			continue
		}
		lower := strings.ToLower(line)
		host = host || strings.HasPrefix(lower, "host:")
		length = length || strings.HasPrefix(lower, "content-length:") || strings.HasPrefix(lower, "transfer-encoding:")
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	if !host {
		b.WriteString("Host: 127.0.0.1:8080\r\n")
	}
	if !length {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// endless matches the routes whose event stream never ends by itself.
var endless = regexp.MustCompile(`(?i)^/v1/overlap/stream/*(\?|$)`)

// FuzzHTTP sends whole HTTP requests (method, target, headers including
// Content-Encoding and Content-Length, body) to an in-process server and
// checks that it does not panic, that one request allocates a bounded
// amount whatever it claims, and that every error status carries the error
// envelope. The seeds are issue 16's findings.
func FuzzHTTP(f *testing.F) {
	chat := `{"model":"soo-demo","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	ctJSON := "Content-Type: application/json"
	bomb := gzipBomb(f, 2, 64<<20, 'a', `{"model":"soo-demo","prompt":"`, `","max_tokens":1}`)
	seeds := []struct {
		method, target, headers string
		body                    []byte
	}{
		{"POST", "/v1/completions", ctJSON + "\nContent-Encoding: gzip, gzip", bomb},
		{"POST", "/v1/adapters", "Content-Type: multipart/form-data; boundary=x\nContent-Encoding: gzip, gzip", bomb},
		{"POST", "/v1/completions", ctJSON + "\nContent-Encoding: gzip, gzip, gzip", bomb},
		{"POST", "/v1/completions", ctJSON + "\nContent-Encoding: br", []byte(chat)},
		{"POST", "/v1/completions", ctJSON + "\nContent-Encoding: deflate", []byte("x\x9c\x03\x00\x00\x00\x00\x01")},
		{"FOO", "/v1/models", "", nil},
		{"get", "/health", "", nil},
		{"POST", "/v1/chat/completions", ctJSON + "\nContent-Length: 5\nContent-Length: 80", []byte(chat)},
		{"POST", "/v1/chat/completions", ctJSON + "\nContent-Length: 3\nTransfer-Encoding: chunked", []byte(fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(chat), chat))},
		{"POST", "/v1/chat/completions", "Content-Type: multipart/form-data; boundary=xyz", bytes.Repeat([]byte("a"), 64<<10)},
		{"POST", "/v1/adapters", "Content-Type: multipart/form-data; boundary=xyz", bytes.Repeat([]byte("a"), 64<<10)},
		{"GET", "/v1/models", "Authorization: bearer KEY", nil},
		{"POST", "/v1/chat/completions", "Content-Type: text/plain", []byte(chat)},
		{"POST", "/v1/adapters", "Content-Type: multipart/form-data; boundary=x\nOrigin: http://evil.example", []byte("--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nevil\r\n--x--\r\n")},
		{"POST", "/v1/chat/completions", ctJSON, []byte(`{"model":"` + strings.Repeat("m", 64<<10) + `","messages":[{"role":"user","content":"hi"}]}`)},
		{"POST", "/v1/chat/completions", ctJSON, []byte(`{"model":"soo-demo","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}`)},
		{"POST", "/v1/completions", ctJSON, []byte(`{"model":"soo-demo","prompt":"` + strings.Repeat("long ", 14000) + `"}`)},
		{"POST", "/api/generate", ctJSON, []byte(`{"model":"soo-demo","prompt":"hi","options":{"num_predict":2}}`)},
		{"POST", "/api/chat", ctJSON, []byte(`{"model":"soo-demo","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":2}}`)},
		{"POST", "/v1/overlap", ctJSON, []byte(`{"model":"soo-demo","self":"you","other":"Bob"}`)},
		{"POST", "/v1/soo/jobs", ctJSON, []byte(`{"model":"` + strings.Repeat("x", 4096) + `"}`)},
		{"DELETE", "/v1/adapters/x", "Origin: http://evil.example", nil},
		{"GET", "/metrics", "", nil},
		{"HEAD", "/v1/models", "", nil},
		{"POST", "/v1/chat/completions", ctJSON + "\nExpect: 100-continue", []byte(chat)},
	}
	for _, sd := range seeds {
		f.Add(sd.method, sd.target, sd.headers, sd.body)
	}
	s := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte) {
		if endless.MatchString(target) {
			t.Skip("an endless event stream")
		}
		conn := &memConn{r: bytes.NewReader(rawRequest(method, target, headers, body))}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := s.app.Server().ServeConn(conn); err != nil {
			t.Logf("serve: %v", err)
		}
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > fuzzAllocBudget {
			t.Errorf("one request allocated %d MB", n>>20)
		}
		checkFuzzResponse(t, conn.w.Bytes(), method, target)
	})
}

// checkFuzzResponse checks the first final response in out: an error status
// must carry the envelope ({"error":{"message","type",...}}; Ollama's
// {"error":"..."} is allowed on /api/).
func checkFuzzResponse(t *testing.T, out []byte, method, target string) {
	if len(out) == 0 {
		return // the connection closed without a response (unreadable request)
	}
	br := bufio.NewReader(bytes.NewReader(out))
	req := &http.Request{Method: method}
	var resp *http.Response
	for {
		var err error
		if resp, err = http.ReadResponse(br, req); err != nil {
			t.Fatalf("unparseable response (%v): %.300q", err, out)
		}
		if resp.StatusCode >= 200 {
			break
		}
		resp.Body.Close() // 100 Continue
	}
	defer resp.Body.Close()
	t.Logf("%.20q %.60q: %d", method, target, resp.StatusCode)
	if resp.StatusCode < 400 || method == http.MethodHead {
		return
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%d: reading the body: %v", resp.StatusCode, err)
	}
	var env struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Error == nil {
		t.Fatalf("%d without the envelope (%s %.80q): %.300q", resp.StatusCode, method, target, b)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("%d envelope as %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var msg string
	if json.Unmarshal(env.Error, &msg) == nil && strings.HasPrefix(target, "/api/") && msg != "" {
		return
	}
	var e struct{ Message, Type *string }
	if json.Unmarshal(env.Error, &e) != nil || e.Message == nil || *e.Message == "" || e.Type == nil || *e.Type == "" {
		t.Fatalf("%d: malformed envelope %.300q", resp.StatusCode, b)
	}
	if len(*e.Message) > maxMessage {
		t.Errorf("%d: a %d-byte message", resp.StatusCode, len(*e.Message))
	}
}
