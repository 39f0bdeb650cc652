package adapters_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/refcase"
)

func TestWriteReadRoundTrip(t *testing.T) {
	td, _ := refcase.TestData()
	cfg, err := model.LoadConfig(filepath.Join(td, "models/tiny-llama"))
	if err != nil {
		t.Fatal(err)
	}
	a, pc, err := adapters.LoadDir("x", filepath.Join(td, "adapters/tiny-llama-lora-qv"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !a.RSLoRA || a.Rank != 8 || len(a.Modules) != 2 {
		t.Errorf("adapter %+v", a)
	}
	dir := t.TempDir()
	if err := adapters.WriteDir(dir, a, adapters.NewConfig(a, pc.LoRADropout, "models/tiny-llama")); err != nil {
		t.Fatal(err)
	}
	b, _, err := adapters.LoadDir("y", dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for l := range a.Layers {
		for m := range a.Layers[l] {
			p, q := a.Layers[l][m], b.Layers[l][m]
			if (p == nil) != (q == nil) || p != nil && (!slices.Equal(p.A, q.A) || !slices.Equal(p.B, q.B) || p.Scale != q.Scale) {
				t.Fatalf("layer %d module %d differs after round trip", l, m)
			}
			if q != nil && (q.A16 != nil || q.B16 != nil) {
				t.Fatalf("layer %d module %d: float32 values that are not bf16 got bf16 copies", l, m)
			}
		}
	}
}

// TestBF16AdapterKeepsBF16 loads an adapter stored in bf16: every pair keeps
// bf16 copies of its values (what the cpu executor streams), equal to the
// float32 values it also holds.
func TestBF16AdapterKeepsBF16(t *testing.T) {
	td, _ := refcase.TestData()
	src := filepath.Join(td, "adapters/tiny-llama-lora-qv")
	cfg, err := model.LoadConfig(filepath.Join(td, "models/tiny-llama"))
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := adapters.LoadDir("x", src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var ts []safetensors.Tensor
	for _, ten := range adapters.Tensors(a) {
		v, err := ten.Float32()
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, safetensors.FromFloat32(ten.Name, safetensors.BF16, ten.Shape, v))
	}
	if err := safetensors.WriteFile(filepath.Join(dir, adapters.WeightsFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(src, adapters.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, adapters.ConfigFile), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	b, _, err := adapters.LoadDir("y", dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	pairs := 0
	for l := range b.Layers {
		for m, q := range b.Layers[l] {
			if q == nil {
				continue
			}
			pairs++
			p := a.Layers[l][m]
			for _, c := range []struct {
				f, orig []float32
				h       []uint16
			}{{q.A, p.A, q.A16}, {q.B, p.B, q.B16}} {
				if len(c.h) != len(c.f) {
					t.Fatalf("layer %d module %d: %d bf16 values for %d", l, m, len(c.h), len(c.f))
				}
				for i, v := range c.f {
					if c.h[i] != safetensors.F32ToBF16(c.orig[i]) || safetensors.BF16ToF32(c.h[i]) != v {
						t.Fatalf("layer %d module %d value %d: bf16 %#04x, float32 %g, stored from %g", l, m, i, c.h[i], v, c.orig[i])
					}
				}
			}
		}
	}
	if pairs == 0 {
		t.Fatal("no pairs")
	}
}

func TestRejections(t *testing.T) {
	td, _ := refcase.TestData()
	cfg, _ := model.LoadConfig(filepath.Join(td, "models/tiny-llama"))
	qwen, _ := model.LoadConfig(filepath.Join(td, "models/tiny-qwen2"))
	for _, tc := range []struct{ cfg, want string }{
		{`{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}`, "DoRA"},
		{`{"peft_type":"LORA","r":4,"lora_alpha":8,"modules_to_save":["lm_head"]}`, "modules_to_save"},
		{`{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","embed_tokens"]}`, "embed_tokens"},
		{`{"peft_type":"PREFIX_TUNING","r":4}`, "PREFIX_TUNING"},
		{`{"peft_type":"LORA","r":0}`, "r must be positive"},
	} {
		if _, err := adapters.ParseConfig([]byte(tc.cfg)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.cfg, err)
		}
	}
	// A llama adapter does not fit qwen2's shapes (intermediate 128 vs 160).
	if _, _, err := adapters.LoadDir("x", filepath.Join(td, "adapters/tiny-llama-lora"), qwen); err == nil || !strings.Contains(err.Error(), "layers.2") && !strings.Contains(err.Error(), "shape") {
		t.Errorf("mismatched base: %v", err)
	}
	// A config whose targets omit modules that have tensors names the tensors.
	dir := t.TempDir()
	src := filepath.Join(td, "adapters/tiny-llama-lora")
	w, _ := os.ReadFile(filepath.Join(src, adapters.WeightsFile))
	os.WriteFile(filepath.Join(dir, adapters.WeightsFile), w, 0o644)
	os.WriteFile(filepath.Join(dir, adapters.ConfigFile), []byte(`{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"]}`), 0o644)
	if _, _, err := adapters.LoadDir("x", dir, cfg); err == nil || !strings.Contains(err.Error(), "down_proj") {
		t.Errorf("untargeted tensors: %v", err)
	}
}
