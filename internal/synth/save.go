package synth

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"

	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/internal/demo"
)

// WriteDir writes a model of the named shape, with random weights stored as
// dtype, into dir as a Hugging Face model directory that the server can load:
// config.json, model.safetensors, and the demo model's tokenizer and chat
// template. It lets load tests run the server on a real-sized model without a
// checkpoint. vocab overrides the shape's vocabulary size when positive; pass
// the demo model's vocabulary size (its config.json) so that every generated id
// decodes to text, which streaming measurements need.
func WriteDir(dir, shape string, dtype model.DType, seed uint64, vocab int) error {
	raw, ok := shapes[shape]
	if !ok {
		return fmt.Errorf("synth: unknown shape %q (known: %v)", shape, Shapes())
	}
	raw = maps.Clone(raw)
	if vocab > 0 {
		raw["vocab_size"] = vocab
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	mc, err := model.ParseConfig(b)
	if err != nil {
		return err
	}
	m := FromConfig(mc, dtype, seed)
	if err := demo.Write(dir); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, "model.safetensors")); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("synth: %w", err)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), m.Tensors(), map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	cfg := maps.Clone(raw)
	cfg["architectures"] = []string{"LlamaForCausalLM"}
	cfg["torch_dtype"] = map[model.DType]string{model.F32: "float32", model.BF16: "bfloat16", model.F16: "float16"}[dtype]
	cfg["soo_synthetic"] = fmt.Sprintf("random weights of shape %s, seed %d", shape, seed)
	b, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, "config.json"), b)
}
