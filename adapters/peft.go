// Package adapters reads, validates and writes LoRA adapters in Hugging Face
// PEFT layout (adapter_config.json + adapter_model.safetensors) and binds them
// to a base model for the engine.
package adapters

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// File names of the PEFT layout.
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"
)

// Config is adapter_config.json.
type Config struct {
	PEFTType          string          `json:"peft_type"`
	R                 int             `json:"r"`
	LoRAAlpha         float64         `json:"lora_alpha"`
	LoRADropout       float64         `json:"lora_dropout"`
	TargetModules     json.RawMessage `json:"target_modules"`
	UseRSLoRA         bool            `json:"use_rslora"`
	UseDoRA           bool            `json:"use_dora"`
	ModulesToSave     []string        `json:"modules_to_save"`
	BaseModel         string          `json:"base_model_name_or_path"`
	Bias              string          `json:"bias"`
	TaskType          string          `json:"task_type"`
	RankPattern       map[string]int  `json:"rank_pattern"`
	AlphaPattern      map[string]any  `json:"alpha_pattern"`
	LayersToTransform json.RawMessage `json:"layers_to_transform"`
}

// Targets returns target_modules as a list (PEFT also allows a single regex string).
func (c *Config) Targets() ([]string, error) {
	if len(c.TargetModules) == 0 || string(c.TargetModules) == "null" {
		return []string{"q_proj", "v_proj"}, nil // PEFT's default for Llama-family models
	}
	var list []string
	if err := json.Unmarshal(c.TargetModules, &list); err == nil {
		return list, nil
	}
	return nil, invalid("target_modules must be a list of module names, got %s", c.TargetModules)
}

// ParseConfig decodes and checks adapter_config.json.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, typed(ErrInvalid, err, "adapters: %s is not valid", ConfigFile)
	}
	if !strings.EqualFold(c.PEFTType, "LORA") {
		return nil, invalid("adapters: %s: peft_type %q is not supported (only LORA)", ConfigFile, c.PEFTType)
	}
	if c.UseDoRA {
		return nil, invalid("adapters: %s: DoRA (use_dora) is not supported", ConfigFile)
	}
	if len(c.ModulesToSave) > 0 {
		return nil, invalid("adapters: %s: modules_to_save %v is not supported", ConfigFile, c.ModulesToSave)
	}
	if c.R <= 0 {
		return nil, invalid("adapters: %s: r must be positive, got %d", ConfigFile, c.R)
	}
	if len(c.RankPattern) > 0 || len(c.AlphaPattern) > 0 {
		return nil, invalid("adapters: %s: rank_pattern/alpha_pattern are not supported", ConfigFile)
	}
	if c.Bias != "" && c.Bias != "none" {
		return nil, invalid("adapters: %s: bias %q is not supported (only \"none\")", ConfigFile, c.Bias)
	}
	targets, err := c.Targets()
	if err != nil {
		return nil, typed(ErrInvalid, err, "adapters: %s", ConfigFile)
	}
	var unknown []string
	for _, t := range targets {
		if _, ok := model.ParseModule(t); !ok {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		return nil, invalid("adapters: %s: unsupported target modules %v%s (supported: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)", ConfigFile, unknown, embeddingNote(unknown))
	}
	return &c, nil
}

var keyRE = regexp.MustCompile(`^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])(?:\.default)?\.weight$`)

// Bind checks adapter tensors against the base model and builds the engine's
// in-memory adapter. Every tensor must be a LoRA A/B of a target module of a
// layer the model has, with the right shape; anything else is an error that
// names it.
func Bind(name string, cfg *Config, src model.TensorSource, names []string, base *model.Config) (*lora.Adapter, error) {
	targets, err := cfg.Targets()
	if err != nil {
		return nil, err
	}
	a := &lora.Adapter{Name: name, Rank: cfg.R, Alpha: cfg.LoRAAlpha, RSLoRA: cfg.UseRSLoRA,
		Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	scale := lora.Scale(cfg.LoRAAlpha, cfg.R, cfg.UseRSLoRA)
	var bad, embedding []string
	seen := map[model.Module]bool{}
	for _, key := range names {
		m := keyRE.FindStringSubmatch(key)
		if m == nil {
			if strings.Contains(key, "lora_embedding") || strings.Contains(key, "embed_tokens") || strings.Contains(key, "lm_head") {
				embedding = append(embedding, key)
			}
			bad = append(bad, key)
			continue
		}
		layer, _ := strconv.Atoi(m[1])
		mod, ok := model.ParseModule(m[3])
		if !ok || mod.Path() != m[2]+"."+m[3] || !slices.Contains(targets, m[3]) || layer >= base.Layers {
			bad = append(bad, key)
			continue
		}
		t, _ := src.Tensor(key)
		if t.DType != safetensors.F32 && t.DType != safetensors.F16 && t.DType != safetensors.BF16 {
			return nil, invalid("adapters: %s has dtype %s (supported: F32, F16, BF16)", key, t.DType)
		}
		vals, err := t.Float32()
		if err != nil {
			return nil, typed(ErrInvalid, err, "adapters: %s", key)
		}
		for _, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, invalid("adapters: %s has a non-finite value (%v)", key, v)
			}
		}
		out, in := base.Shape(mod)
		p := a.Layers[layer][mod]
		if p == nil {
			p = &lora.Pair{R: cfg.R, In: in, Out: out, Scale: scale}
			a.Layers[layer][mod] = p
		}
		want := []int{cfg.R, in}
		if m[4] == "B" {
			want = []int{out, cfg.R}
		}
		if !slices.Equal(t.Shape, want) {
			return nil, invalid("adapters: %s has shape %v, want %v for the base model", key, t.Shape, want)
		}
		if m[4] == "A" {
			p.A = vals
		} else {
			p.B = vals
		}
		seen[mod] = true
	}
	if len(embedding) > 0 {
		return nil, invalid("adapters: embedding LoRA is not supported: %s", strings.Join(firstFew(embedding), ", "))
	}
	if len(bad) > 0 {
		return nil, invalid("adapters: tensors that are not LoRA A/B weights of a target module of the base model: %s", strings.Join(firstFew(bad), ", "))
	}
	for l, mods := range a.Layers {
		for mod, p := range mods {
			if p != nil && (p.A == nil || p.B == nil) {
				return nil, invalid("adapters: layer %d %s has only one of lora_A/lora_B", l, model.Module(mod))
			}
		}
	}
	for mod := model.Module(0); mod < model.NumModules; mod++ {
		if seen[mod] {
			a.Modules = append(a.Modules, mod)
		}
	}
	if len(a.Modules) == 0 {
		return nil, invalid("adapters: adapter has no LoRA weights")
	}
	if err := a.Validate(base); err != nil {
		return nil, typed(ErrInvalid, err, "adapters: adapter %q does not fit the base model", name)
	}
	return a, nil
}

// LoadDir reads a PEFT adapter directory and binds it to the base model.
func LoadDir(name, dir string, base *model.Config) (*lora.Adapter, *Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, typed(ErrInvalid, err, "adapters: %s has no %s", dir, ConfigFile)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("adapters: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, nil, err
	}
	f, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, typed(ErrInvalid, err, "adapters: %s has no %s", dir, WeightsFile)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("adapters: %w", err)
	}
	defer f.Close()
	a, err := Bind(name, cfg, f, f.Names(), base)
	if err != nil {
		return nil, nil, err
	}
	return a, cfg, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateName checks an adapter name: 1 to 64 of [A-Za-z0-9._-], not "." or "..".
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || name == "." || name == ".." {
		return invalid("adapter name %q must be 1-64 characters of A-Z a-z 0-9 . _ - (and not . or ..)", name)
	}
	return nil
}

// firstFew returns up to five names and a count of the rest.
func firstFew(names []string) []string {
	if len(names) > 5 {
		return append(slices.Clone(names[:5]), fmt.Sprintf("and %d more", len(names)-5))
	}
	return names
}

// embeddingNote explains rejected embedding/head targets.
func embeddingNote(unknown []string) string {
	for _, u := range unknown {
		if u == "embed_tokens" || u == "lm_head" || strings.Contains(u, "embed") {
			return " (embedding LoRA is not supported)"
		}
	}
	return ""
}
