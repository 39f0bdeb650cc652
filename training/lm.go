package training

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/atomicfile"
)

// This file is full-parameter training with the language-model loss:
// AdamW over every weight, learning-rate warm-up and cosine decay, global
// gradient-norm clipping, checkpoints that resume bit for bit, and the
// trained model written as a Hugging Face directory.

// LMConfig is a full-parameter language-model training recipe.
type LMConfig struct {
	// LR is the peak learning rate.
	LR float64 `json:"lr"`
	// MinLR is where the cosine decay ends.
	MinLR float64 `json:"min_lr"`
	// WarmupSteps ramps the rate linearly up to LR: step s (from 0) uses
	// LR·(s+1)/WarmupSteps.
	WarmupSteps int `json:"warmup_steps"`
	// Steps is the schedule's length: after the warm-up the rate follows a
	// cosine from LR down to MinLR at step Steps, and stays there.
	Steps int `json:"steps"`
	// Beta1, Beta2 and Eps are AdamW's; zero means 0.9, 0.999 and 1e-8.
	Beta1 float64 `json:"beta1"`
	Beta2 float64 `json:"beta2"`
	Eps   float64 `json:"eps"`
	// WeightDecay is AdamW's decoupled decay, applied to the matrices
	// (embeddings, projections, head) and not to norms or biases.
	WeightDecay float64 `json:"weight_decay"`
	// ClipNorm, when positive, scales the gradient down to this global
	// norm when it is longer (torch.nn.utils.clip_grad_norm_).
	ClipNorm float64 `json:"clip_norm"`
	// Seed seeds the trainer's random stream (LMTrainer.Rand).
	Seed uint64 `json:"seed"`
}

// normalize fills the defaults and checks the ranges.
func (c *LMConfig) normalize() error {
	if c.Beta1 == 0 {
		c.Beta1 = 0.9
	}
	if c.Beta2 == 0 {
		c.Beta2 = 0.999
	}
	if c.Eps == 0 {
		c.Eps = 1e-8
	}
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	switch {
	case !(c.LR > 0) || bad(c.LR):
		return fmt.Errorf("training: lm: learning rate must be positive, got %g", c.LR)
	case c.MinLR < 0 || c.MinLR > c.LR || bad(c.MinLR):
		return fmt.Errorf("training: lm: min_lr must be in [0, lr], got %g", c.MinLR)
	case c.WarmupSteps < 0 || c.Steps < 1 || c.WarmupSteps > c.Steps:
		return fmt.Errorf("training: lm: want 0 <= warmup_steps <= steps and steps >= 1, got %d and %d", c.WarmupSteps, c.Steps)
	case !(c.Beta1 > 0 && c.Beta1 < 1) || !(c.Beta2 > 0 && c.Beta2 < 1):
		return fmt.Errorf("training: lm: betas must be in (0, 1), got %g and %g", c.Beta1, c.Beta2)
	case !(c.Eps > 0) || bad(c.Eps):
		return fmt.Errorf("training: lm: eps must be positive, got %g", c.Eps)
	case c.WeightDecay < 0 || bad(c.WeightDecay):
		return fmt.Errorf("training: lm: weight_decay must be non-negative, got %g", c.WeightDecay)
	case c.ClipNorm < 0 || bad(c.ClipNorm):
		return fmt.Errorf("training: lm: clip_norm must be non-negative, got %g", c.ClipNorm)
	}
	return nil
}

// LRAt returns the learning rate of step s (counted from 0): a linear
// warm-up to LR, then a cosine decay to MinLR at step Steps.
func (c LMConfig) LRAt(s int) float64 {
	if s < c.WarmupSteps {
		return c.LR * float64(s+1) / float64(c.WarmupSteps)
	}
	p := 1.0
	if c.Steps > c.WarmupSteps {
		p = min(1, float64(s-c.WarmupSteps)/float64(c.Steps-c.WarmupSteps))
	}
	return c.MinLR + (c.LR-c.MinLR)*0.5*(1+math.Cos(math.Pi*p))
}

// LMTrainer trains every weight of a model with the language-model loss on
// the cpu executor. It owns a copy of the model's weights. It is not safe
// for concurrent use.
type LMTrainer struct {
	cfg    LMConfig
	m      *model.Model
	ex     *cpu.Executor
	params []cpu.Param
	grad   *cpu.LMGrad
	grads  []cpu.Param
	mom    [][]float32 // AdamW's first moments, as params
	vel    [][]float32 // and second moments
	step   int
	src    *rand.PCG
	rng    *rand.Rand
	ws     cpu.Workspace
}

// LMStep reports one optimiser step.
type LMStep struct {
	Step     int     // steps done, this one included
	Loss     float64 // the batch's loss before the update
	GradNorm float64 // the global gradient norm before clipping
	LR       float64 // the learning rate the step used
	Tokens   int
	Targets  int
}

// NewLMTrainer returns a trainer that starts from a copy of m's weights
// (which must be f32) and runs them on an executor with opts.
func NewLMTrainer(m *model.Model, cfg LMConfig, opts cpu.Options) (*LMTrainer, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	cm, err := CloneModel(m)
	if err != nil {
		return nil, err
	}
	t := &LMTrainer{cfg: cfg, m: cm, ex: cpu.New(cm, opts), grad: cpu.NewLMGrad(cm.Config)}
	if t.params, err = cpu.ModelParams(cm); err != nil {
		return nil, fmt.Errorf("training: lm: %w", err)
	}
	t.grads = t.grad.Params()
	for _, p := range t.params {
		t.mom = append(t.mom, make([]float32, len(p.Data)))
		t.vel = append(t.vel, make([]float32, len(p.Data)))
	}
	t.src = rand.NewPCG(cfg.Seed, 0x6c6d747261696e)
	t.rng = rand.New(t.src)
	return t, nil
}

// Model returns the model being trained (its weights change with each step).
func (t *LMTrainer) Model() *model.Model { return t.m }

// Executor returns the executor that runs the model being trained, for
// evaluating it between steps.
func (t *LMTrainer) Executor() *cpu.Executor { return t.ex }

// Rand returns the trainer's random stream, for drawing batches: it is
// saved in checkpoints, so a resumed run draws what the uninterrupted one
// would have.
func (t *LMTrainer) Rand() *rand.Rand { return t.rng }

// StepsDone returns how many optimiser steps have been taken.
func (t *LMTrainer) StepsDone() int { return t.step }

// Config returns the trainer's recipe, defaults filled in.
func (t *LMTrainer) Config() LMConfig { return t.cfg }

// Loss returns the batch's loss under the current weights, without a
// gradient or an update.
func (t *LMTrainer) Loss(ctx context.Context, b cpu.LMBatch) (cpu.LMResult, error) {
	res, err := t.ex.LMLossGrad(ctx, b, nil, cpu.LMOptions{Workspace: &t.ws})
	if err != nil {
		return res, fmt.Errorf("training: lm: %w", err)
	}
	return res, nil
}

// Step runs one optimiser step on batch b: the weighted-mean loss and its
// gradient, the clip to ClipNorm, and an AdamW update at the scheduled
// learning rate. A batch without targets, or a gradient that is not finite,
// is an error and changes nothing.
func (t *LMTrainer) Step(ctx context.Context, b cpu.LMBatch) (LMStep, error) {
	t.grad.Zero()
	res, err := t.ex.LMLossGrad(ctx, b, t.grad, cpu.LMOptions{Workspace: &t.ws})
	if err != nil {
		return LMStep{}, fmt.Errorf("training: lm: %w", err)
	}
	if res.Targets == 0 {
		return LMStep{}, errors.New("training: lm: the batch has no targets")
	}
	sq := make([]float64, len(t.grads))
	t.each(func(i int) {
		var s float64
		for _, v := range t.grads[i].Data {
			s += float64(v) * float64(v)
		}
		sq[i] = s
	})
	var total float64
	for _, s := range sq {
		total += s
	}
	norm := math.Sqrt(total)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return LMStep{}, fmt.Errorf("training: lm: the gradient's norm is %g", norm)
	}
	scale := float32(1)
	if c := t.cfg.ClipNorm; c > 0 {
		if coef := c / (norm + 1e-6); coef < 1 {
			scale = float32(coef)
		}
	}
	lr := t.cfg.LRAt(t.step)
	t.step++
	c := t.cfg
	bc1 := 1 - math.Pow(c.Beta1, float64(t.step))
	bc2 := 1 - math.Pow(c.Beta2, float64(t.step))
	t.each(func(i int) {
		g := t.grads[i].Data
		if scale != 1 {
			for k := range g {
				g[k] *= scale
			}
		}
		o := AdamW{LR: lr, Beta1: c.Beta1, Beta2: c.Beta2, Eps: c.Eps}
		if len(t.params[i].Shape) == 2 {
			o.WeightDecay = c.WeightDecay
		}
		o.update(t.params[i].Data, g, t.mom[i], t.vel[i], bc1, bc2)
	})
	return LMStep{Step: t.step, Loss: res.Loss, GradNorm: norm, LR: lr, Tokens: res.Tokens, Targets: res.Targets}, nil
}

// each calls fn for every tensor index on up to GOMAXPROCS goroutines;
// tensors are independent, so the result does not depend on the split.
func (t *LMTrainer) each(fn func(i int)) {
	var next atomic.Int64
	n := len(t.params)
	work := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			fn(i)
		}
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}

// lmCheckpointMeta is stored in a checkpoint's safetensors metadata.
type lmCheckpointMeta struct {
	Step   int      `json:"step"`
	Config LMConfig `json:"config"`
	RNG    string   `json:"rng"` // the random stream's state, base64
}

const lmCheckpointKey = "soo_lm"

// SaveCheckpoint writes the trainer's state to path (atomically): every
// weight ("param.<name>", norms as model.Layer holds them, NormOffset
// included), AdamW's moments ("adam_m.<name>", "adam_v.<name>"), the step
// count, the recipe and the random stream.
func (t *LMTrainer) SaveCheckpoint(path string) error {
	rs, err := t.src.MarshalBinary()
	if err != nil {
		return fmt.Errorf("training: lm checkpoint: %w", err)
	}
	meta, err := json.Marshal(lmCheckpointMeta{Step: t.step, Config: t.cfg, RNG: base64.StdEncoding.EncodeToString(rs)})
	if err != nil {
		return fmt.Errorf("training: lm checkpoint: %w", err)
	}
	var ts []safetensors.Tensor
	for i, p := range t.params {
		ts = append(ts, safetensors.FromFloat32("param."+p.Name, safetensors.F32, p.Shape, p.Data),
			safetensors.FromFloat32("adam_m."+p.Name, safetensors.F32, p.Shape, t.mom[i]),
			safetensors.FromFloat32("adam_v."+p.Name, safetensors.F32, p.Shape, t.vel[i]))
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("training: lm checkpoint: %w", err)
		}
	}
	if err := safetensors.WriteFile(path, ts, map[string]string{lmCheckpointKey: string(meta)}); err != nil {
		return fmt.Errorf("training: lm checkpoint: %w", err)
	}
	return nil
}

// LoadCheckpoint restores a state that SaveCheckpoint wrote, from a run of
// the same recipe on a model of the same shape: after it, the trainer goes
// on exactly as the run that saved it would have.
func (t *LMTrainer) LoadCheckpoint(path string) error {
	f, err := safetensors.Open(path)
	if err != nil {
		return fmt.Errorf("training: lm checkpoint: %w", err)
	}
	defer f.Close()
	var meta lmCheckpointMeta
	if err := json.Unmarshal([]byte(f.Metadata()[lmCheckpointKey]), &meta); err != nil {
		return fmt.Errorf("training: lm checkpoint %s: metadata: %w", path, err)
	}
	if meta.Config != t.cfg {
		return fmt.Errorf("training: lm checkpoint %s is of another recipe (%+v, this run's is %+v)", path, meta.Config, t.cfg)
	}
	rs, err := base64.StdEncoding.DecodeString(meta.RNG)
	if err != nil {
		return fmt.Errorf("training: lm checkpoint %s: random stream: %w", path, err)
	}
	// Read everything before changing anything.
	vals := make([][3][]float32, len(t.params))
	for i, p := range t.params {
		for k, prefix := range []string{"param.", "adam_m.", "adam_v."} {
			tn, ok := f.Tensor(prefix + p.Name)
			if !ok || !slices.Equal(tn.Shape, p.Shape) {
				return fmt.Errorf("training: lm checkpoint %s lacks %s%s %v", path, prefix, p.Name, p.Shape)
			}
			if vals[i][k], err = tn.Float32(); err != nil {
				return fmt.Errorf("training: lm checkpoint %s: %w", path, err)
			}
		}
	}
	src := rand.NewPCG(0, 0)
	if err := src.UnmarshalBinary(rs); err != nil {
		return fmt.Errorf("training: lm checkpoint %s: random stream: %w", path, err)
	}
	for i, p := range t.params {
		copy(p.Data, vals[i][0])
		copy(t.mom[i], vals[i][1])
		copy(t.vel[i], vals[i][2])
	}
	*t.src = *src
	t.step = meta.Step
	return nil
}

// CloneModel returns a copy of m with every weight in fresh memory (a
// loaded model's matrices map its file read-only). Every weight matrix
// must be f32: full-parameter training updates f32 weights (load a bf16 or
// f16 model with model.LoadOptions{DType: f32} to train it).
func CloneModel(m *model.Model) (*model.Model, error) {
	if _, err := cpu.ModelParams(m); err != nil {
		return nil, fmt.Errorf("training: lm: %w", err)
	}
	mat := func(w *model.Matrix) model.Matrix {
		return model.Matrix{Rows: w.Rows, Cols: w.Cols, DType: model.F32, F32: slices.Clone(w.F32)}
	}
	c := &model.Model{Config: m.Config, Embed: mat(&m.Embed), FinalNorm: slices.Clone(m.FinalNorm), Layers: make([]model.Layer, len(m.Layers))}
	for l := range m.Layers {
		L, C := &m.Layers[l], &c.Layers[l]
		C.AttnNorm, C.AttnPostNorm = slices.Clone(L.AttnNorm), slices.Clone(L.AttnPostNorm)
		C.MLPNorm, C.MLPPostNorm = slices.Clone(L.MLPNorm), slices.Clone(L.MLPPostNorm)
		for p := range L.Proj {
			C.Proj[p] = model.Linear{W: mat(&L.Proj[p].W), Bias: slices.Clone(L.Proj[p].Bias)}
		}
	}
	if m.LMHead == &m.Embed {
		c.LMHead = &c.Embed
	} else {
		h := mat(m.LMHead)
		c.LMHead = &h
	}
	return c, nil
}

// NewLMModel returns a model of configuration cfg with f32 weights
// initialised for training from scratch, deterministically from seed:
// embeddings, head and projections drawn from N(0, 0.02²), the residual
// branches' output projections (o_proj, down_proj) from N(0, (0.02/√(2·layers))²)
// as GPT-2 does, norms 1 and biases 0.
func NewLMModel(cfg *model.Config, seed uint64) *model.Model {
	next := uint64(0)
	normal := func(n int, std float64) []float32 {
		next++
		rng := rand.New(rand.NewPCG(seed, next))
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
		return v
	}
	const std = 0.02
	mat := func(rows, cols int, std float64) model.Matrix {
		return model.Matrix{Rows: rows, Cols: cols, DType: model.F32, F32: normal(rows*cols, std)}
	}
	ones := func() []float32 {
		v := make([]float32, cfg.Hidden)
		for i := range v {
			v[i] = 1
		}
		return v
	}
	m := &model.Model{Config: cfg, Embed: mat(cfg.VocabSize, cfg.Hidden, std), Layers: make([]model.Layer, cfg.Layers)}
	resid := std / math.Sqrt(2*float64(cfg.Layers))
	for l := range m.Layers {
		L := &m.Layers[l]
		L.AttnNorm, L.MLPNorm = ones(), ones()
		if cfg.SandwichNorms {
			L.AttnPostNorm, L.MLPPostNorm = ones(), ones()
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			out, in := cfg.Shape(mod)
			s := std
			if mod == model.O || mod == model.Down {
				s = resid
			}
			L.Proj[mod].W = mat(out, in, s)
			if cfg.HasBias(mod) {
				L.Proj[mod].Bias = make([]float32, out)
			}
		}
	}
	m.FinalNorm = ones()
	if cfg.TieEmbeddings {
		m.LMHead = &m.Embed
	} else {
		h := mat(cfg.VocabSize, cfg.Hidden, std)
		m.LMHead = &h
	}
	return m
}

// WriteHFModel writes m as a Hugging Face model directory: config.json
// (configJSON as given, which must describe m's shape) and
// model.safetensors (every weight in its stored dtype). Tokenizer files
// are the caller's to add.
func WriteHFModel(dir string, m *model.Model, configJSON []byte) error {
	cfg, err := model.ParseConfig(configJSON)
	if err != nil {
		return fmt.Errorf("training: write model: %w", err)
	}
	mc := m.Config
	if cfg.Arch != mc.Arch || cfg.VocabSize != mc.VocabSize || cfg.Hidden != mc.Hidden || cfg.Intermediate != mc.Intermediate ||
		cfg.Layers != mc.Layers || cfg.Heads != mc.Heads || cfg.KVHeads != mc.KVHeads || cfg.HeadDim != mc.HeadDim ||
		cfg.TieEmbeddings != mc.TieEmbeddings || cfg.QKVBias != mc.QKVBias || cfg.OBias != mc.OBias || cfg.MLPBias != mc.MLPBias {
		return fmt.Errorf("training: write model: config.json does not describe the model's shape")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("training: write model: %w", err)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), m.Tensors(), map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("training: write model: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "config.json"), configJSON); err != nil {
		return fmt.Errorf("training: write model: %w", err)
	}
	return nil
}
