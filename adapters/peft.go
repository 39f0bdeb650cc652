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
	"time"

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

// ParseConfig decodes and checks adapter_config.json. A configuration
// without lora_alpha gets DefaultAlpha, as PEFT reads it; one whose
// lora_alpha is not in (0, MaxAlpha] is rejected.
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
	var alpha struct {
		Set *float64 `json:"lora_alpha"`
	}
	if json.Unmarshal(data, &alpha) == nil && alpha.Set == nil {
		c.LoRAAlpha = DefaultAlpha // PEFT reads a config without lora_alpha so
	}
	if err := checkAlpha(c.LoRAAlpha); err != nil {
		return nil, err
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

// DefaultAlpha is the lora_alpha of a configuration that gives none (PEFT's
// LoraConfig default).
const DefaultAlpha = 8

// MaxAlpha bounds lora_alpha. Published recipes use 8 to 512 (the SOO paper
// 8 and 32; alpha = r or 2r for r up to 256); 65536 leaves two orders of
// magnitude above them, and keeps the scale alpha/r (or alpha/sqrt(r))
// comfortably inside float32. A larger alpha only serves to overflow the
// activations (lora_alpha 1e308 made the scale +Inf and every logit NaN).
const MaxAlpha = 1 << 16

// Bounds on an adapter's weights, checked when it is bound (every upload,
// directory load and store load).
//
// The update a LoRA pair adds to a module's output is ΔW x with ΔW = scale·B·A,
// and ‖ΔW x‖ ≤ ‖ΔW‖₂‖x‖ ≤ scale·‖B‖_F·‖A‖_F·‖x‖: the product bounds how many
// times the update can amplify a hidden state. Real adapters measure in the
// ones to hundreds (the PEFT fixtures under testdata 0.9 to 2.3; even a
// random adapter of standard deviation 0.5 on SmolLM2-135M, which scrambles
// the model, about 2e3), so MaxUpdateNorm = 1e5 rejects none of them, while
// an update that could multiply a hidden state by more than 1e5 is
// numerical garbage (weights of 1e30 gave NaN logits). The Frobenius
// product can overestimate ‖ΔW‖₂ by up to a factor r, which the margin
// covers for every rank this server accepts.
//
// MaxFactorNorm bounds ‖A‖_F and ‖B‖_F each, for the degenerate pairs the
// product misses: lora_A of 1e30 with lora_B all zeros has a zero update in
// exact arithmetic, but A·x overflows to Inf in float32 and 0·Inf is NaN.
// Trained factors measure about 0.1 to 100 (lora_A starts at a Kaiming
// initialisation of norm about sqrt(r/3)).
const (
	MaxUpdateNorm = 1e5
	MaxFactorNorm = 1e4
)

// checkAlpha rejects a lora_alpha that is not a finite number in
// (0, MaxAlpha].
func checkAlpha(alpha float64) error {
	if math.IsNaN(alpha) || math.IsInf(alpha, 0) || alpha <= 0 || alpha > MaxAlpha {
		return invalid("adapters: %s: lora_alpha must be a finite number in (0, %d], got %g (published recipes use 8 to 512; a larger scale only overflows the activations)",
			ConfigFile, MaxAlpha, alpha)
	}
	return nil
}

var keyRE = regexp.MustCompile(`^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+)\.lora_([AB])(?:\.default)?\.weight$`)

// Bind checks adapter tensors against the base model and builds the engine's
// in-memory adapter. Every tensor must be a LoRA A/B of a target module of a
// layer the model has, with the right shape, finite values and norms within
// MaxFactorNorm and MaxUpdateNorm; anything else is an error that names it.
// The adapter's weights are copies: src may be closed afterwards.
func Bind(name string, cfg *Config, src model.TensorSource, names []string, base *model.Config) (*lora.Adapter, error) {
	p, err := checkTensors(name, cfg, src, names, base)
	if err != nil {
		return nil, err
	}
	return p.bind(false)
}

// matrix is one LoRA matrix of an adapter whose name, dtype and shape have
// been checked, its values not yet read.
type matrix struct {
	key   string
	layer int
	mod   model.Module
	isB   bool // lora_B; lora_A otherwise
	t     safetensors.Tensor
}

// plan is an adapter whose configuration and tensor names, dtypes and
// shapes have been checked against the base model: what is left is to read
// its values (bind). The record of the adapter is known at this point.
type plan struct {
	name     string
	cfg      *Config
	base     *model.Config
	matrices []matrix
	modules  []model.Module // the modules that carry weights, in module order
}

// checkTensors checks everything about an adapter's tensors but their
// values: every tensor is a LoRA A/B of a target module of a layer the model
// has, with a supported dtype and the right shape, and every module has both
// matrices.
func checkTensors(name string, cfg *Config, src model.TensorSource, names []string, base *model.Config) (*plan, error) {
	targets, err := cfg.Targets()
	if err != nil {
		return nil, err
	}
	p := &plan{name: name, cfg: cfg, base: base, matrices: make([]matrix, 0, len(names))}
	var bad, embedding []string
	var seen [model.NumModules]bool
	// has[layer][module] is bit 1 for lora_A, bit 2 for lora_B.
	has := make([][model.NumModules]uint8, base.Layers)
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
		out, in := base.Shape(mod)
		want, bit := []int{cfg.R, in}, uint8(1)
		if m[4] == "B" {
			want, bit = []int{out, cfg.R}, 2
		}
		if !slices.Equal(t.Shape, want) {
			return nil, invalid("adapters: %s has shape %v, want %v for the base model", key, t.Shape, want)
		}
		if len(t.Data) != t.NumElements()*t.DType.Size() {
			return nil, invalid("adapters: %s has %d bytes of data, want %d", key, len(t.Data), t.NumElements()*t.DType.Size())
		}
		p.matrices = append(p.matrices, matrix{key: key, layer: layer, mod: mod, isB: bit == 2, t: t})
		has[layer][mod] |= bit
		seen[mod] = true
	}
	if len(embedding) > 0 {
		return nil, invalid("adapters: embedding LoRA is not supported: %s", strings.Join(firstFew(embedding), ", "))
	}
	if len(bad) > 0 {
		return nil, invalid("adapters: tensors that are not LoRA A/B weights of a target module of the base model: %s", strings.Join(firstFew(bad), ", "))
	}
	for l, mods := range has {
		for mod, bits := range mods {
			if bits != 0 && bits != 3 {
				return nil, invalid("adapters: layer %d %s has only one of lora_A/lora_B", l, model.Module(mod))
			}
		}
	}
	for mod := model.Module(0); mod < model.NumModules; mod++ {
		if seen[mod] {
			p.modules = append(p.modules, mod)
		}
	}
	if len(p.modules) == 0 {
		return nil, invalid("adapters: adapter has no LoRA weights")
	}
	return p, nil
}

// bind reads the values of p's matrices (all of them finite, with norms
// within MaxFactorNorm and MaxUpdateNorm) into the engine's adapter. With
// alias set, F32 matrices are not copied where the machine allows it: the
// adapter then shares the memory of the tensors' data, which must not
// change afterwards.
func (p *plan) bind(alias bool) (*lora.Adapter, error) {
	cfg, base := p.cfg, p.base
	a := &lora.Adapter{Name: p.name, Rank: cfg.R, Alpha: cfg.LoRAAlpha, RSLoRA: cfg.UseRSLoRA,
		Modules: slices.Clone(p.modules), Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	if err := checkAlpha(cfg.LoRAAlpha); err != nil {
		return nil, err
	}
	scale := lora.Scale(cfg.LoRAAlpha, cfg.R, cfg.UseRSLoRA)
	// ns[layer][module] are the Frobenius norms of lora_A and lora_B and
	// their tensors' names.
	type norms struct {
		a, b       float64
		aKey, bKey string
	}
	ns := make([][model.NumModules]norms, base.Layers)
	for _, m := range p.matrices {
		vals, sq, err := decodeNorm(m.key, m.t, alias)
		if err != nil {
			return nil, err
		}
		norm := math.Sqrt(sq)
		if norm > MaxFactorNorm {
			return nil, invalid("adapters: %s has Frobenius norm %.3g, more than the limit of %g (trained LoRA factors measure about 0.1 to 100; values this large overflow the activations)",
				m.key, norm, float64(MaxFactorNorm))
		}
		pair := a.Layers[m.layer][m.mod]
		if pair == nil {
			out, in := base.Shape(m.mod)
			pair = &lora.Pair{R: cfg.R, In: in, Out: out, Scale: scale}
			a.Layers[m.layer][m.mod] = pair
		}
		n := &ns[m.layer][m.mod]
		if m.isB {
			pair.B, n.b, n.bKey = vals, norm, m.key
		} else {
			pair.A, n.a, n.aKey = vals, norm, m.key
		}
	}
	for l := range ns {
		for mod, n := range ns[l] {
			if g := float64(scale) * n.b * n.a; g > MaxUpdateNorm {
				return nil, invalid("adapters: layer %d %s: the update's scale·‖B‖_F·‖A‖_F is %.3g (scale %g, ‖B‖_F %.3g in %s, ‖A‖_F %.3g in %s), more than the limit of %g: it bounds how much the update can amplify a hidden state, and real adapters measure in the ones to hundreds",
					l, model.Module(mod), g, scale, n.b, n.bKey, n.a, n.aKey, float64(MaxUpdateNorm))
			}
		}
	}
	if err := a.Validate(base); err != nil {
		return nil, typed(ErrInvalid, err, "adapters: adapter %q does not fit the base model", p.name)
	}
	// An adapter stored in bf16 keeps bf16 copies (the same values), which
	// the cpu executor streams: half the bytes a decode step reads for it.
	a.CompactBF16()
	return a, nil
}

// record describes the adapter p binds to (the store fills in the sums and
// the version).
func (p *plan) record(baseID string, f Files) Record {
	targets, _ := p.cfg.Targets()
	applied := make([]string, 0, len(p.modules))
	for _, m := range p.modules {
		applied = append(applied, m.String())
	}
	return Record{Name: p.name, Base: baseID, Rank: p.cfg.R, Alpha: p.cfg.LoRAAlpha, RSLoRA: p.cfg.UseRSLoRA,
		TargetModules: targets, Modules: applied, Size: f.Size(), Created: time.Now().UTC()}
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
