package adapters_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// overflowFiles returns the PEFT files of a rank-4 q_proj adapter for base
// with small weights (std 0.05) and lora_alpha alpha (left out of the
// configuration when NaN), after mutate has changed its weights.
func overflowFiles(t *testing.T, base *model.Config, alpha float64, mutate func(a *lora.Adapter)) adapters.Files {
	t.Helper()
	const r = 4
	out, in := base.Shape(model.Q)
	a := &lora.Adapter{Rank: r, Alpha: 8, Modules: []model.Module{model.Q}, Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	for l := range a.Layers {
		p := &lora.Pair{R: r, In: in, Out: out, Scale: 1, A: make([]float32, r*in), B: make([]float32, out*r)}
		for i := range p.A {
			p.A[i] = float32(0.05 * math.Sin(float64(i+l)))
		}
		for i := range p.B {
			p.B[i] = float32(0.05 * math.Cos(float64(i+l)))
		}
		a.Layers[l][model.Q] = p
	}
	if mutate != nil {
		mutate(a)
	}
	var w bytes.Buffer
	if err := safetensors.Write(&w, adapters.Tensors(a), map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{"peft_type": "LORA", "r": r, "target_modules": []string{"q_proj"}, "bias": "none", "task_type": "CAUSAL_LM"}
	if !math.IsNaN(alpha) {
		cfg["lora_alpha"] = alpha
	}
	cj, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return adapters.Files{Config: cj, Weights: w.Bytes()}
}

// overflowCases are adapters whose scale or weights overflow float32
// activations, with what the error must name.
func overflowCases(t *testing.T, base *model.Config) []struct {
	name  string
	f     adapters.Files
	wants []string
} {
	fill := func(v []float32, x float32) {
		for i := range v {
			v[i] = x
		}
	}
	keyA := adapters.Key(1, "self_attn.q_proj", "A")
	keyB := adapters.Key(0, "self_attn.q_proj", "B")
	return []struct {
		name  string
		f     adapters.Files
		wants []string
	}{
		{"alpha 1e308", overflowFiles(t, base, 1e308, nil), []string{"lora_alpha", "1e+308"}},
		{"alpha above MaxAlpha", overflowFiles(t, base, 1e6, nil), []string{"lora_alpha", "1e+06"}},
		{"alpha zero", overflowFiles(t, base, 0, nil), []string{"lora_alpha", "got 0"}},
		{"alpha negative", overflowFiles(t, base, -8, nil), []string{"lora_alpha", "got -8"}},
		{"one weight of 1e30 in lora_A", overflowFiles(t, base, 8, func(a *lora.Adapter) { a.Layers[1][model.Q].A[7] = 1e30 }),
			[]string{keyA, "Frobenius norm 1e+30"}},
		{"one weight of 1e30 in lora_B", overflowFiles(t, base, 8, func(a *lora.Adapter) { a.Layers[0][model.Q].B[3] = -1e30 }),
			[]string{keyB, "Frobenius norm 1e+30"}},
		{"lora_A of 1e30, lora_B zero", overflowFiles(t, base, 8, func(a *lora.Adapter) {
			fill(a.Layers[1][model.Q].A, 1e30)
			fill(a.Layers[1][model.Q].B, 0)
		}), []string{keyA, "Frobenius norm"}},
		{"every factor moderate, the product huge", overflowFiles(t, base, 8, func(a *lora.Adapter) {
			p := a.Layers[1][model.Q]
			// ‖A‖_F = ‖B‖_F = 5e3 (under MaxFactorNorm): scale 2 · 2.5e7 = 5e7.
			fill(p.A, float32(5e3/math.Sqrt(float64(len(p.A)))))
			fill(p.B, float32(5e3/math.Sqrt(float64(len(p.B)))))
		}), []string{"layer 1 q_proj", "scale·‖B‖_F·‖A‖_F is 5e+07", keyA, adapters.Key(1, "self_attn.q_proj", "B")}},
	}
}

func checkOverflowErr(t *testing.T, what string, err error, wants []string) {
	t.Helper()
	if !errors.Is(err, adapters.ErrInvalid) {
		t.Errorf("%s: got %v, want an ErrInvalid error", what, err)
		return
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: the error %q does not say %q", what, err, w)
		}
	}
}

// TestOverflowingAdaptersRejected: an adapter whose lora_alpha is not a
// finite number in (0, MaxAlpha], or whose weights are large enough to
// overflow the activations (a single 1e30, a factor over MaxFactorNorm, a
// pair whose scale·‖B‖_F·‖A‖_F is over MaxUpdateNorm), is an ErrInvalid
// error that names the field or tensor, on every way in: Validate, an upload
// through the registry (which then holds and stores nothing), a PEFT
// directory (PutDir, LoadDir) and an adapter already in the store (put there
// by an older server) when it is loaded.
func TestOverflowingAdaptersRejected(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	dir := t.TempDir()
	r, st := openDisk(t, filepath.Join(dir, "store"), base, nil, 4)
	for i, tc := range overflowCases(t, base) {
		_, _, err := adapters.Validate("x", tc.f, base, adapters.Limits{})
		checkOverflowErr(t, tc.name+": Validate", err, tc.wants)

		_, err = r.Put(ctx, "x", tc.f, false)
		checkOverflowErr(t, tc.name+": Registry.Put", err, tc.wants)
		if _, err := r.Get(ctx, "x"); !errors.Is(err, adapters.ErrNotFound) {
			t.Errorf("%s: a rejected upload is listed: %v", tc.name, err)
		}
		if _, err := st.Get(ctx, "x"); !errors.Is(err, adapters.ErrNotFound) {
			t.Errorf("%s: a rejected upload is stored: %v", tc.name, err)
		}

		pd := filepath.Join(dir, "peft", tc.name)
		if err := os.MkdirAll(pd, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(pd, adapters.ConfigFile), tc.f.Config, 0o644)
		os.WriteFile(filepath.Join(pd, adapters.WeightsFile), tc.f.Weights, 0o644)
		_, err = r.PutDir(ctx, "x", pd, false)
		checkOverflowErr(t, tc.name+": Registry.PutDir", err, tc.wants)
		_, _, err = adapters.LoadDir("x", pd, base)
		checkOverflowErr(t, tc.name+": LoadDir", err, tc.wants)

		// Stored unchecked (as a server without these checks did): loading
		// it fails, naming the problem, and serves nothing.
		name := "old" + string(rune('a'+i))
		if _, err := st.Put(ctx, adapters.Record{Name: name, Base: "tiny-llama", Rank: 4}, tc.f, false); err != nil {
			t.Fatal(err)
		}
		_, _, err = r.Acquire(ctx, name)
		checkOverflowErr(t, tc.name+": Acquire of a stored adapter", err, tc.wants)
	}
	if res := r.Resident(); len(res) != 0 {
		t.Errorf("resident after rejections: %v", res)
	}
}

// TestOverflowingAdaptersRejectedFromRedis: an overflowing adapter that sits
// in a Redis store (written by a replica without the checks) does not load.
func TestOverflowingAdaptersRejectedFromRedis(t *testing.T) {
	url := adapterstest.StartRedis(t)
	ctx := context.Background()
	base := tinyLlama(t)
	st, err := adapters.OpenRedis(ctx, url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := openRedis(t, url, base)
	for i, tc := range overflowCases(t, base) {
		name := "bad" + string(rune('a'+i))
		if _, err := st.Put(ctx, adapters.Record{Name: name, Base: "tiny-llama", Rank: 4}, tc.f, false); err != nil {
			t.Fatal(err)
		}
		_, _, err := r.Acquire(ctx, name)
		checkOverflowErr(t, tc.name+": Acquire from Redis", err, tc.wants)
		_, err = r.Put(ctx, "fresh", tc.f, false)
		checkOverflowErr(t, tc.name+": Registry.Put on Redis", err, tc.wants)
	}
	if _, err := r.Get(ctx, "fresh"); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("a rejected upload reached Redis: %v", err)
	}
}

// TestAdapterBoundsAcceptTrainedAdapters: the bounds reject no real
// adapter: the PEFT fixtures, a random adapter that scrambles the model
// (std 0.5), an adapter at MaxAlpha with small weights, and a configuration
// without lora_alpha, which gets PEFT's default of 8.
func TestAdapterBoundsAcceptTrainedAdapters(t *testing.T) {
	base := tinyLlama(t)
	for _, name := range []string{"tiny-llama-lora", "tiny-llama-lora-qv"} {
		if _, _, err := adapters.Validate("x", testFiles(t, name), base, adapters.Limits{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, err := adapters.Validate("x", adapterstest.Random(base, 8, []string{"q_proj", "v_proj", "down_proj"}, 1, 0.5), base, adapters.Limits{}); err != nil {
		t.Errorf("random std 0.5: %v", err)
	}
	if _, _, err := adapters.Validate("x", overflowFiles(t, base, adapters.MaxAlpha, nil), base, adapters.Limits{}); err != nil {
		t.Errorf("alpha at MaxAlpha: %v", err)
	}
	a, cfg, err := adapters.Validate("x", overflowFiles(t, base, math.NaN(), nil), base, adapters.Limits{})
	if err != nil || cfg.LoRAAlpha != adapters.DefaultAlpha || a.Layers[0][model.Q].Scale != 2 {
		t.Errorf("no lora_alpha: %v, alpha %v", err, cfg)
	}
}
