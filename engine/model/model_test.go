package model_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/refcase"
)

func testdata(t *testing.T) string {
	t.Helper()
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	return td
}

func TestParseConfigFamilies(t *testing.T) {
	td := testdata(t)
	llama, err := model.LoadConfig(filepath.Join(td, "models/tiny-llama"))
	if err != nil {
		t.Fatal(err)
	}
	if llama.HeadDim != 16 || llama.KVHeads != 2 || llama.TieEmbeddings || llama.RopeScaling == nil || llama.Window(0) != 0 {
		t.Errorf("llama config %+v", llama)
	}
	qwen, err := model.LoadConfig(filepath.Join(td, "models/tiny-qwen2"))
	if err != nil {
		t.Fatal(err)
	}
	if !qwen.QKVBias || qwen.OBias || !qwen.TieEmbeddings || qwen.Window(0) != 0 {
		t.Errorf("qwen2 config %+v", qwen)
	}
	g, err := model.LoadConfig(filepath.Join(td, "models/tiny-gemma2"))
	if err != nil {
		t.Fatal(err)
	}
	if g.HeadDim != 24 || g.Act != model.GELUTanh || !g.SandwichNorms || g.EmbedScale != 8 ||
		g.AttnSoftcap != 50 || g.FinalSoftcap != 30 || g.Window(0) != 6 || g.Window(1) != 0 || g.Window(2) != 6 {
		t.Errorf("gemma2 config %+v", g)
	}
	if want := float32(1 / 5.656854249492381); g.AttnScale != want { // query_pre_attn_scalar 32
		t.Errorf("gemma2 attn scale %v, want %v", g.AttnScale, want)
	}
	m, err := model.ParseConfig([]byte(`{"model_type":"mistral","vocab_size":10,"hidden_size":8,"intermediate_size":16,
		"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"sliding_window":4096,"eos_token_id":[2,3]}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Window(1) != 4096 || !slices.Equal(m.EOS, []int32{2, 3}) || m.HeadDim != 4 {
		t.Errorf("mistral config %+v", m)
	}
}

func TestParseConfigErrors(t *testing.T) {
	base := `"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2`
	for _, tc := range []struct{ json, want string }{
		{`{"model_type":"gpt2",` + base + `}`, `"gpt2"`},
		{`{` + base + `}`, "no model_type"},
		{`{"model_type":"llama","vocab_size":10}`, "hidden_size must be positive"},
		{`{"model_type":"llama",` + base + `,"num_key_value_heads":3}`, "not a multiple"},
		{`{"model_type":"llama",` + base + `,"rope_scaling":{"rope_type":"yarn","factor":2}}`, `"yarn"`},
		{`{"model_type":"llama",` + base + `,"hidden_act":"relu2"}`, `"relu2"`},
		{`{"model_type":`, "config.json"},
	} {
		_, err := model.ParseConfig([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %s", tc.json, err, tc.want)
		}
	}
	_, err := model.ParseConfig([]byte(`{"model_type":"gpt2"}`))
	if !errors.Is(err, model.ErrUnsupportedArch) {
		t.Errorf("gpt2: %v is not ErrUnsupportedArch", err)
	}
}

func TestLoadConvertsDTypes(t *testing.T) {
	td := testdata(t)
	bf := model.BF16
	conv, err := model.Load(filepath.Join(td, "models/tiny-llama"), model.LoadOptions{DType: &bf})
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Close()
	stored, err := model.Load(filepath.Join(td, "models/tiny-llama-bf16"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer stored.Close()
	a, b := conv.Layers[1].Proj[model.Down].W, stored.Layers[1].Proj[model.Down].W
	if a.DType != model.BF16 || b.DType != model.BF16 || !slices.Equal(a.U16, b.U16) {
		t.Error("f32 weights converted to bf16 differ from the reference's bf16 rounding")
	}
	if conv.Bytes() != stored.Bytes() || conv.LMHead == &conv.Embed {
		t.Errorf("bytes %d vs %d", conv.Bytes(), stored.Bytes())
	}
}

// copyModel copies a checkpoint so a test can damage it.
func copyModel(t *testing.T, src string) string {
	dst := t.TempDir()
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
	}
	return dst
}

func TestLoadErrorsNameTheTensor(t *testing.T) {
	td := testdata(t)
	dir := copyModel(t, filepath.Join(td, "models/tiny-qwen2"))
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var keep []safetensors.Tensor
	for _, n := range f.Names() {
		if n == "model.layers.1.self_attn.k_proj.bias" {
			continue
		}
		tt, _ := f.Tensor(n)
		tt.Data = slices.Clone(tt.Data)
		keep = append(keep, tt)
	}
	f.Close()
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), keep, nil); err != nil {
		t.Fatal(err)
	}
	_, err = model.Load(dir, model.LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "model.layers.1.self_attn.k_proj.bias") {
		t.Errorf("missing bias: %v", err)
	}
	// A truncated file is rejected by the header checks.
	b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	os.WriteFile(filepath.Join(dir, "model.safetensors"), b[:len(b)-10], 0o644)
	if _, err := model.Load(dir, model.LoadOptions{}); err == nil {
		t.Error("truncated weights loaded")
	}
}

// TestTensorsInvertsBind writes a loaded model back out and reloads it.
func TestTensorsInvertsBind(t *testing.T) {
	td := testdata(t)
	for _, name := range []string{"tiny-llama-bf16", "tiny-gemma2", "tiny-qwen2"} {
		m, err := model.Load(filepath.Join(td, "models", name), model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dir := copyModel(t, filepath.Join(td, "models", name))
		os.Remove(filepath.Join(dir, "model.safetensors.index.json"))
		if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), m.Tensors(), nil); err != nil {
			t.Fatal(err)
		}
		back, err := model.Load(dir, model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(back.Layers[1].MLPNorm, m.Layers[1].MLPNorm) || !slices.Equal(back.Layers[0].Proj[model.Q].W.U16, m.Layers[0].Proj[model.Q].W.U16) ||
			!slices.Equal(back.Layers[0].Proj[model.V].W.F32, m.Layers[0].Proj[model.V].W.F32) || !slices.Equal(back.Layers[0].Proj[model.K].Bias, m.Layers[0].Proj[model.K].Bias) {
			t.Errorf("%s: weights changed on the round trip", name)
		}
		back.Close()
		m.Close()
	}
}
