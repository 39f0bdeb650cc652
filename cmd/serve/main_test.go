package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/server"
)

// TestMain runs the command's main instead of the tests when
// SOO_SERVE_TEST_MAIN is set, so a test can run the real process and see
// its exit status (see TestSIGTERMCutsStreamsExitsZero).
func TestMain(m *testing.M) {
	if os.Getenv("SOO_SERVE_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParse(t *testing.T) {
	c, err := parse([]string{"--max-batch", "4"}, envOf(map[string]string{"SOO_ADDR": "127.0.0.1:9", "SOO_MAX_BATCH": "2", "SOO_DTYPE": "bf16"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9" || c.MaxBatch != 4 || c.DType != "bf16" || c.Data != "./soo-data" || c.Backend != "cpu" || c.MaxAdapters != 16 {
		t.Errorf("config %+v", c)
	}
	for _, ok := range []string{"cpu", "xla:cpu", "xla:cuda"} {
		if c, err := parse([]string{"--backend", ok}, envOf(nil), io.Discard); err != nil || c.Backend != ok {
			t.Errorf("--backend %s: %v", ok, err)
		}
	}
	if c.BF16Inputs != "rounded" {
		t.Errorf("default --bf16-inputs %q", c.BF16Inputs)
	}
	if c, err := parse(nil, envOf(map[string]string{"SOO_BF16_INPUTS": "exact"}), io.Discard); err != nil || c.BF16Inputs != "exact" {
		t.Errorf("SOO_BF16_INPUTS=exact: %v", err)
	}
	for _, bad := range [][]string{{"--backend", "tpu"}, {"--dtype", "int4"}, {"--max-batch", "0"}, {"stray"}, {"--bf16-inputs", "fast"}} {
		if _, err := parse(bad, envOf(nil), io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if _, err := parse(nil, envOf(map[string]string{"SOO_CTX": "lots"}), io.Discard); err == nil {
		t.Error("bad SOO_CTX accepted")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRun runs the binary's run on the demo model in a fresh data
// directory and returns its base URL, its log and its result channel.
func startRun(ctx context.Context, t *testing.T) (string, *syncBuf, chan error) {
	t.Helper()
	addrs := make(chan string, 1)
	logs := &syncBuf{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir()}, envOf(nil), logs, addrs)
	}()
	select {
	case a := <-addrs:
		return "http://" + a, logs, done
	case err := <-done:
		t.Fatal(err)
	}
	return "", nil, nil
}

// TestRunDemoAndShutdown starts the binary's run on the demo model, makes a
// request, and shuts down through ctx as SIGTERM would.
func TestRunDemoAndShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, logs, done := startRun(ctx, t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"model":"soo-demo","prompt":"Hi","max_tokens":3,"temperature":0}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"text_completion"`)) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no shutdown")
	}
	for _, want := range []string{"demo model", "random weights", "stopped"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestLoadFromFakeHub loads --model hf:ORG/NAME from a hub on loopback.
func TestLoadFromFakeHub(t *testing.T) {
	src := t.TempDir()
	if err := demo.Write(src); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/models/org/demo/revision/main", func(w http.ResponseWriter, r *http.Request) {
		var sib []map[string]string
		for _, f := range demo.Files {
			sib = append(sib, map[string]string{"rfilename": f})
		}
		json.NewEncoder(w).Encode(map[string]any{"siblings": sib})
	})
	mux.Handle("/org/demo/resolve/main/", http.StripPrefix("/org/demo/resolve/main/", http.FileServer(http.Dir(src))))
	hubSrv := httptest.NewServer(mux)
	defer hubSrv.Close()

	data := t.TempDir()
	c, err := parse([]string{"--model", "hf:org/demo", "--data", data}, envOf(map[string]string{"SOO_HF_ENDPOINT": hubSrv.URL}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{})
	base, err := load(context.Background(), c, srv, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close(context.Background())
	if base.ID != "demo" || base.Config.Arch != "llama" || !strings.HasPrefix(base.Dir, filepath.Join(data, "models", "hf")) {
		t.Errorf("base %s %s %s", base.ID, base.Config.Arch, base.Dir)
	}
	if _, err := parse([]string{"--model", "hf:bad"}, envOf(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
	c.Model = "hf:bad"
	if _, err := load(context.Background(), c, srv, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("hf:bad accepted")
	}
}

// TestSIGTERMCutsStreamsExitsZero runs serve as a process with --grace
// 300ms, opens streams that outlast it, and sends SIGTERM: every stream
// still open at the deadline ends with a shutting_down error event and
// [DONE], and the process exits 0 (before the fix: streams cut with no
// event, exit 1 with "context deadline exceeded").
func TestSIGTERMCutsStreamsExitsZero(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the server process")
	}
	cmd := exec.Command(os.Args[0], "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--grace", "300ms", "--max-batch", "2")
	cmd.Env = append(os.Environ(), "SOO_SERVE_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := &syncBuf{}
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		listening := regexp.MustCompile(`msg=listening addr=(\S+)`)
		for sc.Scan() {
			fmt.Fprintln(logs, sc.Text())
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- m[1]
			}
		}
	}()
	var url string
	select {
	case a := <-addrs:
		url = "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatalf("no listening address:\n%s", logs.String())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	const streams = 12
	type outcome struct{ cut, done bool }
	outcomes := make(chan outcome, streams)
	started := make(chan struct{}, streams)
	for i := range streams {
		go func() {
			// A chat stream's first event (the role) is written at once,
			// even while the request waits for a batch slot.
			body := fmt.Sprintf(`{"model":"soo-demo","stream":true,"max_tokens":2000,"temperature":0,"messages":[{"role":"user","content":"Once upon a time %d"}]}`, i)
			resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				started <- struct{}{}
				outcomes <- outcome{}
				return
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			_, err = r.ReadString('\n')
			started <- struct{}{}
			var lines []string
			for err == nil {
				var l string
				l, err = r.ReadString('\n')
				if l = strings.TrimSpace(l); l != "" {
					lines = append(lines, l)
				}
			}
			n := len(lines)
			switch {
			case n >= 2 && lines[n-1] == "data: [DONE]" && strings.Contains(lines[n-2], `"code":"shutting_down"`):
				outcomes <- outcome{cut: true}
			case n >= 1 && lines[n-1] == "data: [DONE]" && !strings.Contains(lines[max(n-2, 0)], `"error"`):
				outcomes <- outcome{done: true}
			default:
				t.Errorf("stream %d ended without a final event: %q (%v)", i, lines[max(n-3, 0):], err)
				outcomes <- outcome{}
			}
		}()
	}
	for range streams {
		<-started
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cut := 0
	for range streams {
		if o := <-outcomes; o.cut {
			cut++
		}
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Errorf("serve exited %d after SIGTERM:\n%s", ee.ExitCode(), logs.String())
		} else if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not exit:\n%s", logs.String())
	}
	t.Logf("%d of %d streams cut at the deadline", cut, streams)
	if cut == 0 {
		t.Errorf("no stream outlasted the grace period; the test proves nothing:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "deadline exceeded") {
		t.Errorf("shutdown reported a deadline:\n%s", logs.String())
	}
}

// TestHealthReportsRedis: with --redis, /health lists Redis as a dependency
// and answers 200 "degraded" naming it, within 2 s, once Redis is stopped;
// the overlap records kept in Redis then answer 503 dependency_unavailable.
func TestHealthReportsRedis(t *testing.T) {
	rs := adapterstest.StartRedisServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	logs := &syncBuf{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--redis", rs.URL, "--grace", "2s"}, envOf(nil), logs, addrs)
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("no shutdown")
		}
	}()
	var url string
	select {
	case a := <-addrs:
		url = "http://" + a
	case err := <-done:
		t.Fatalf("%v\n%s", err, logs.String())
	}
	health := func() (int, string) {
		resp, err := http.Get(url + "/health")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := health()
		if code == 200 {
			if body != `{"dependencies":{"redis":"ok"},"status":"ok"}` {
				t.Fatalf("health with redis up: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy: %d %s\n%s", code, body, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rs.Stop()
	start := time.Now()
	code, body := health()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("health took %v with redis down", took)
	}
	var h struct {
		Status       string
		Dependencies map[string]string
	}
	json.Unmarshal([]byte(body), &h)
	if code != 200 || h.Status != "degraded" || !strings.Contains(h.Dependencies["redis"], "redis is unavailable") {
		t.Errorf("health with redis down: %d %s", code, body)
	}
	resp, err := http.Get(url + "/v1/overlap/requests")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), `"code":"dependency_unavailable"`) || !strings.Contains(string(b), "redis is unavailable") {
		t.Errorf("overlap records with redis down: %d %s", resp.StatusCode, b)
	}
}
