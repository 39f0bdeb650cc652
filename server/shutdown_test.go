package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/internal/demo"
)

// startSlow serves the demo model on an executor that sleeps 20 ms a step,
// so a long generation outlives any grace period of a test. The caller
// shuts the server down.
func startSlow(t *testing.T) (*Server, string, *Base) {
	t.Helper()
	b0, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	b0.Sched.Close(context.Background())
	ex := slowExecutor{Executor: b0.Sched.Executor(), delay: 20 * time.Millisecond}
	b, err := NewBase(demo.Name, demoModel(t), ex, b0.Tokenizer, b0.Template, LoadOptions{MaxBatch: 8}, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{})
	s.SetModels(Single{Base: b})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { b.Close(context.Background()) })
	return s, "http://" + ln.Addr().String(), b
}

// openStream posts body to path and returns a reader of the response once
// its first line has arrived.
func openStream(t *testing.T, url, path, body string) (*bufio.Reader, io.Closer) {
	t.Helper()
	resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	r := bufio.NewReader(resp.Body)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatalf("%s: no first line: %v", path, err)
	}
	return r, resp.Body
}

// lastLines reads r to its end and returns its non-empty lines.
func lastLines(r *bufio.Reader) []string {
	rest, _ := io.ReadAll(r)
	var out []string
	for _, l := range strings.Split(string(rest), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestShutdownCutsStreamsWithErrorEvent: streams still running when the
// grace period ends get a final error event (OpenAI: the envelope with code
// shutting_down, then [DONE]; Ollama: an {"error": ...} line), a collected
// response gets 503 shutting_down, a request that arrives on an open
// connection while draining gets 503 shutting_down with Connection: close,
// and Shutdown returns nil. Before the fix streams ended with no event and
// Shutdown returned "context deadline exceeded".
func TestShutdownCutsStreamsWithErrorEvent(t *testing.T) {
	s, url, _ := startSlow(t)
	long := `"max_tokens":2000,"temperature":0`
	chat, c1 := openStream(t, url, "/v1/chat/completions", `{"model":"soo-demo","stream":true,`+long+`,"messages":[{"role":"user","content":"Once upon a time"}]}`)
	defer c1.Close()
	comp, c2 := openStream(t, url, "/v1/completions", `{"model":"soo-demo","stream":true,`+long+`,"prompt":"Once upon a time"}`)
	defer c2.Close()
	gen, c3 := openStream(t, url, "/api/generate", `{"model":"soo-demo","prompt":"Once upon a time","options":{"temperature":0,"num_predict":2000}}`)
	defer c3.Close()
	collected := make(chan string, 1)
	go func() {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"model":"soo-demo",`+long+`,"prompt":"Once upon a time"}`))
		if err != nil {
			collected <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		collected <- resp.Status + " " + string(b)
	}()
	// A connection that is open, with a request under way, when the
	// shutdown begins.
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /v1/models HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the collected request reaches the scheduler

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	for !s.health.draining.Load() {
		time.Sleep(time.Millisecond)
	}
	if _, err := io.WriteString(conn, "Host: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request while draining: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || errCode(body) != "shutting_down" || !resp.Close {
		t.Errorf("request while draining: %d close=%v %s", resp.StatusCode, resp.Close, body)
	}

	for name, r := range map[string]*bufio.Reader{"chat": chat, "completions": comp} {
		lines := lastLines(r)
		if len(lines) < 2 || lines[len(lines)-1] != "data: [DONE]" {
			t.Errorf("%s: the stream does not end with [DONE]: %q", name, tail(lines))
			continue
		}
		ev := strings.TrimPrefix(lines[len(lines)-2], "data: ")
		if errCode([]byte(ev)) != "shutting_down" {
			t.Errorf("%s: no shutting_down error event before [DONE]: %q", name, ev)
		}
	}
	lines := lastLines(gen)
	var last struct {
		Error string `json:"error"`
	}
	if len(lines) == 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &last) != nil || !strings.Contains(last.Error, "shutting down") {
		t.Errorf("/api/generate: the stream does not end with an error line: %q", tail(lines))
	}
	if got := <-collected; !strings.HasPrefix(got, "503") || !strings.Contains(got, `"shutting_down"`) {
		t.Errorf("collected response: %s", got)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not return")
	}
}

func tail(lines []string) []string {
	return lines[max(0, len(lines)-3):]
}
