package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/server"
)

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
