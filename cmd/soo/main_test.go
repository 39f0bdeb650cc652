package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestBenchTinyJSON(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--shape", "tiny", "--dtype", "bf16", "--batch", "2", "--tokens", "3", "--json", "--bw-mb", "4"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r map[string]any
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %q", err, out.String())
	}
	for _, k := range []string{"decode_tokens_per_s", "prefill_128_s", "batch", "dtype", "weight_bytes", "bandwidth_gb_s", "bandwidth_bound_tokens_per_s", "bound_ratio"} {
		if _, ok := r[k]; !ok {
			t.Errorf("missing %s in %s", k, out.String())
		}
	}
	if r["dtype"] != "bf16" || r["batch"] != 2.0 || r["bf16_inputs"] != "rounded" {
		t.Errorf("dtype/batch = %v/%v", r["dtype"], r["batch"])
	}
	// The speedup is the median of three pairs of adjacent runs.
	if sp, ok := r["batch_speedups"].([]any); !ok || len(sp) != 3 || r["batch_speedup"] != median([]float64{sp[0].(float64), sp[1].(float64), sp[2].(float64)}) {
		t.Errorf("batch_speedup %v, batch_speedups %v", r["batch_speedup"], r["batch_speedups"])
	}
}

// TestBenchPrefill checks --prefill: a longer prompt's prefill time in its
// own fields, and clear errors for a negative or too long prompt.
func TestBenchPrefill(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--shape", "tiny", "--prefill", "300", "--tokens", "1", "--json", "--bw-mb", "4"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r struct {
		Tokens int     `json:"prefill_tokens"`
		S      float64 `json:"prefill_s"`
		S128   float64 `json:"prefill_128_s"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %q", err, out.String())
	}
	if r.Tokens != 300 || r.S <= 0 || r.S128 <= 0 {
		t.Errorf("prefill fields %+v in %s", r, out.String())
	}
	for args, msg := range map[string]string{"-1": "--prefill must be", "100000": "--prefill 100000"} {
		errb.Reset()
		if code := run([]string{"bench", "--shape", "tiny", "--prefill", args, "--tokens", "1", "--bw-mb", "4"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), msg) {
			t.Errorf("--prefill %s: exit %d, %q; want %q", args, code, errb.String(), msg)
		}
	}
}

func TestBenchAdapters(t *testing.T) {
	var out, errb bytes.Buffer
	for _, dt := range []string{"f32", "bf16"} {
		out.Reset()
		if code := run([]string{"bench", "--shape", "tiny", "--batch", "4", "--adapters", "2", "--lora-rank", "4",
			"--lora-modules", "q_proj,down_proj", "--lora-dtype", dt, "--tokens", "1", "--json", "--bw-mb", "4"}, &out, &errb); code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		var r struct {
			Adapters int      `json:"adapters"`
			Rank     int      `json:"lora_rank"`
			Modules  []string `json:"lora_modules"`
			DType    string   `json:"lora_dtype"`
			Base     float64  `json:"lora_base_step_ms"`
			LoRAStep float64  `json:"lora_step_ms"`
		}
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("%v: %q", err, out.String())
		}
		if r.Adapters != 2 || r.Rank != 4 || strings.Join(r.Modules, ",") != "q_proj,down_proj" || r.DType != dt || r.Base <= 0 || r.LoRAStep <= 0 {
			t.Errorf("lora fields: %+v in %s", r, out.String())
		}
	}
	for _, args := range [][]string{{"bench", "--adapters", "1", "--lora-modules", "x_proj"}, {"bench", "--lora-rank", "0"}, {"bench", "--bf16-inputs", "fast"}, {"bench", "--lora-dtype", "f16"}} {
		if code := run(args, &out, &errb); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

func TestBenchHumanAndErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--shape", "tiny", "--vocab", "100", "--tokens", "2", "--bw-mb", "4"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "vocab 100") || !strings.Contains(out.String(), "decode") {
		t.Errorf("output: %s", out.String())
	}
	for _, args := range [][]string{{"nope"}, {"bench", "--shape", "nope"}, {"bench", "--dtype", "f8"}, {}} {
		if code := run(args, &out, &errb); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

func TestBenchXLABackend(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--shape", "tiny", "--backend", "simplego", "--tokens", "2", "--json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r map[string]any
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %q", err, out.String())
	}
	if r["backend"] != "simplego" || r["decode_tokens_per_s"].(float64) <= 0 {
		t.Errorf("result %s", out.String())
	}
	if _, ok := r["bound_ratio"]; ok {
		t.Errorf("a GoMLX run reports a CPU bandwidth bound: %s", out.String())
	}
	if code := run([]string{"bench", "--shape", "tiny", "--backend", "tpu"}, &out, &errb); code == 0 {
		t.Error("--backend tpu: exit 0")
	}
}
