package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// td returns the repository's testdata directory (tests run in cmd/soo).
func td(parts ...string) string {
	return filepath.Join(append([]string{"..", "..", "testdata"}, parts...)...)
}

func TestOverlapProbe(t *testing.T) {
	dir := t.TempDir()
	svg := filepath.Join(dir, "probe.svg")
	var out, errb bytes.Buffer
	args := []string{"overlap", "--model", td("models", "tiny-llama"), "--tokenizer", td("overlap", "tokenizer"),
		"--adapter", td("adapters", "tiny-llama-lora"), "--adapter", "qv=" + td("adapters", "tiny-llama-lora-qv"),
		"--site", "mlp_out", "--out", svg}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := out.String()
	for _, want := range []string{"52 probe pairs, site mlp_out, pooling mean", "base", "tiny-llama-lora", "qv", "mean", "wrote " + svg} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if lines := strings.Split(strings.TrimSpace(s), "\n"); len(lines) != 7 { // title, header, 3 layers, mean, wrote
		t.Errorf("%d lines:\n%s", len(lines), s)
	}
	b, err := os.ReadFile(svg)
	if err != nil || !bytes.Contains(b, []byte("<svg")) || !bytes.Contains(b, []byte("tiny-llama-lora")) {
		t.Errorf("svg: %v, %d bytes", err, len(b))
	}

	png := filepath.Join(dir, "probe.png")
	out.Reset()
	args = []string{"overlap", "--model", td("models", "tiny-llama"), "--tokenizer", td("overlap", "tokenizer"),
		"--pooling", "last", "--json", "--out", png}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var runs []struct {
		Name   string
		Result struct {
			Site    string
			Pooling string
			Pairs   int
			Layers  []float64
			Mean    float64
		}
	}
	if err := json.Unmarshal(out.Bytes(), &runs); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(runs) != 1 || runs[0].Name != "base" || runs[0].Result.Pairs != 52 || runs[0].Result.Pooling != "last" ||
		runs[0].Result.Site != "attn_out" || len(runs[0].Result.Layers) != 3 || runs[0].Result.Mean <= 0 {
		t.Errorf("json: %s", out.String())
	}
	if b, err := os.ReadFile(png); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("png: %v", err)
	}
}

func TestOverlapErrors(t *testing.T) {
	model, tok := td("models", "tiny-llama"), td("overlap", "tokenizer")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"overlap"}, "--model is required"},
		{[]string{"overlap", "--model", model, "--site", "attn"}, "unknown site"},
		{[]string{"overlap", "--model", model, "--pooling", "max"}, "unknown pooling"},
		{[]string{"overlap", "--model", model, "--out", "x.pdf"}, "want a .svg or .png"},
		{[]string{"overlap", "--model", model, "--bf16-inputs", "fast"}, "want rounded or exact"},
		{[]string{"overlap", "--model", model}, "give --tokenizer DIR"},
		{[]string{"overlap", "--model", model, "--tokenizer", tok, "--adapter", "base=x"}, `"base"`},
		{[]string{"overlap", "--model", model, "--tokenizer", tok, "--adapter", td("adapters", "tiny-qwen2-lora")}, "load adapter tiny-qwen2-lora"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code == 0 || !strings.Contains(errb.String(), tc.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tc.args, code, errb.String(), tc.msg)
		}
	}
}

// TestOverlapBF16Inputs checks that --bf16-inputs reaches the executor: on a
// bf16 model, rounded and exact inputs give close but different overlaps.
func TestOverlapBF16Inputs(t *testing.T) {
	mean := func(mode string) float64 {
		var out, errb bytes.Buffer
		args := []string{"overlap", "--model", td("models", "tiny-llama-bf16"), "--tokenizer", td("overlap", "tokenizer"),
			"--json", "--bf16-inputs", mode}
		if code := run(args, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d: %s", mode, code, errb.String())
		}
		var runs []struct{ Result struct{ Mean float64 } }
		if err := json.Unmarshal(out.Bytes(), &runs); err != nil || len(runs) != 1 {
			t.Fatalf("%s: %v: %s", mode, err, out.String())
		}
		return runs[0].Result.Mean
	}
	rounded, exact := mean("rounded"), mean("exact")
	if rounded <= 0 || exact <= 0 || rounded == exact || math.Abs(rounded-exact) > 0.05*exact {
		t.Errorf("mean overlap MSE: rounded %g, exact %g; want both positive, different and within 5%%", rounded, exact)
	}
}
