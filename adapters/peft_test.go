package adapters_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/model"
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
		}
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
