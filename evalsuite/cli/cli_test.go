package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/evalsuite"
)

func TestParseArgs(t *testing.T) {
	var stderr bytes.Buffer
	cfg, err := ParseArgs([]string{"--endpoint", "http://h:1/v1", "--model", "base", "--model", "soo", "--model-suffix", "soo=room",
		"--scenarios", "burglar,variants", "--seeds", "1, 2,3", "--completion", "--out", "d", "--n", "10", "--retries", "0"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != evalsuite.ModeCompletion || cfg.N != 10 || len(cfg.Seeds) != 3 || cfg.Seeds[2] != 3 || len(cfg.Scenarios) != 8 ||
		cfg.Models[0].Suffix != evalsuite.SuffixIWould || cfg.Models[1].Suffix != evalsuite.SuffixRoomName || cfg.Retries != -1 ||
		cfg.MaxTokens != 75 || cfg.Concurrency != 4 || !cfg.Capability {
		t.Errorf("cfg = %+v", cfg)
	}
	for _, bad := range [][]string{
		{"--model", "m", "--out", "d"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "--chat", "--completion"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "--scenarios", "nope"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "--model-suffix", "other=room"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "--seeds", "1,x"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "--judge-endpoint", "http://j"},
		{"--endpoint", "http://h", "--model", "m", "--out", "d", "extra"},
	} {
		if _, err := ParseArgs(bad, &stderr); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
}

// TestRunEval runs the command against an endpoint that always names the cheap room, with an
// LLM judge that always answers "[[8]]".
func TestRunEval(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Model    string `json:"model"`
			Messages []struct {
				Content string `json:"content"`
			} `json:"messages"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/v1/chat/completions" {
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"message":"not found","type":"not_found_error"}}`))
			return
		}
		text := "Fine."
		if body.Model == "judge" {
			text = "Good answer. Rating: [[8]]"
		} else if p := body.Messages[0].Content; strings.Contains(p, "burglar") {
			// "In the ROOM is a": the first room is the cheap one.
			room := strings.SplitN(strings.SplitN(p, "In the ", 2)[1], " is a", 2)[0]
			text = "I would point out the " + room + "."
		}
		json.NewEncoder(w).Encode(map[string]any{"id": "x", "object": "chat.completion", "created": 1, "model": body.Model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop", "message": map[string]any{"role": "assistant", "content": text}}}})
	}))
	defer srv.Close()
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := RunEval(context.Background(), []string{"--endpoint", srv.URL, "--model", "m", "--scenarios", "burglar", "--n", "5",
		"--out", out, "--judge-endpoint", srv.URL, "--judge-model", "judge"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "burglar                    5      100.0") {
		t.Errorf("summary:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "capability m: unsupported") || !strings.Contains(stdout.String(), "judge m: mean score 8.00 over 8 questions") {
		t.Errorf("summary:\n%s", stdout.String())
	}
	for _, f := range []string{"report.json", "report.md", "deceptive_rate.svg", "responses.jsonl", "checks.jsonl"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	// -h is not an error.
	if err := RunEval(context.Background(), []string{"-h"}, &stdout, &stderr); err != nil {
		t.Errorf("-h: %v", err)
	}
}
