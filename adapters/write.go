package adapters

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/atomicfile"
)

// Key returns the PEFT tensor name of an A or B matrix
// ("base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight").
func Key(layer int, modulePath string, ab string) string {
	return fmt.Sprintf("base_model.model.model.layers.%d.%s.lora_%s.weight", layer, modulePath, ab)
}

// Tensors returns the adapter's weights as PEFT-named F32 tensors.
func Tensors(a *lora.Adapter) []safetensors.Tensor {
	var ts []safetensors.Tensor
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p == nil {
				continue
			}
			path := model.Module(m).Path()
			ts = append(ts,
				safetensors.FromFloat32(Key(l, path, "A"), safetensors.F32, []int{p.R, p.In}, p.A),
				safetensors.FromFloat32(Key(l, path, "B"), safetensors.F32, []int{p.Out, p.R}, p.B))
		}
	}
	return ts
}

// NewConfig returns the adapter_config.json describing a.
func NewConfig(a *lora.Adapter, dropout float64, baseModel string) *Config {
	var targets []string
	for _, m := range a.Modules {
		targets = append(targets, m.String())
	}
	tm, _ := json.Marshal(targets)
	return &Config{PEFTType: "LORA", R: a.Rank, LoRAAlpha: a.Alpha, LoRADropout: dropout, TargetModules: tm,
		UseRSLoRA: a.RSLoRA, BaseModel: baseModel, Bias: "none", TaskType: "CAUSAL_LM"}
}

// WriteDir writes a in PEFT layout (adapter_config.json and
// adapter_model.safetensors) into dir, each file atomically.
func WriteDir(dir string, a *lora.Adapter, cfg *Config) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapters: %w", err)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, WeightsFile), Tensors(a), map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("adapters: %w", err)
	}
	out := map[string]any{
		"peft_type": "LORA", "r": cfg.R, "lora_alpha": cfg.LoRAAlpha, "lora_dropout": cfg.LoRADropout,
		"target_modules": cfg.TargetModules, "use_rslora": cfg.UseRSLoRA, "use_dora": false,
		"modules_to_save": nil, "bias": "none", "task_type": "CAUSAL_LM", "fan_in_fan_out": false,
		"init_lora_weights": true, "inference_mode": true, "base_model_name_or_path": cfg.BaseModel,
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("adapters: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, ConfigFile), b); err != nil {
		return fmt.Errorf("adapters: %w", err)
	}
	return nil
}
