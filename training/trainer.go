package training

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// Spec is a SOO fine-tuning recipe (DESIGN.md §6).
type Spec struct {
	Layer       int      `json:"layer"`
	Site        string   `json:"site"`
	Pooling     Pooling  `json:"pooling"`
	Rank        int      `json:"r"`
	Alpha       float64  `json:"alpha"`
	Dropout     float64  `json:"dropout"`
	Targets     []string `json:"target_modules"`
	RSLoRA      bool     `json:"use_rslora"`
	LR          float64  `json:"learning_rate"`
	WeightDecay float64  `json:"weight_decay"`
	Epochs      int      `json:"epochs"`
	BatchSize   int      `json:"batch_size"`
	Seed        uint64   `json:"seed"`
	MaxTokens   int      `json:"max_tokens"`
	// LMWeight is λ ≥ 0, the weight of the language-model loss on the
	// run's LM documents (RunOptions.LMDocs) added to the SOO loss at every
	// step: loss = SOO + λ·LM. 0 (the default) trains on SOO alone.
	LMWeight float64 `json:"lm_weight,omitempty"`
	// LMBatch is how many LM documents a step draws (seeded by the step);
	// it defaults to 4 when LMWeight is set.
	LMBatch int `json:"lm_batch,omitempty"`
	// GradSide is which pass of a pair carries the SOO gradient: "" or
	// "both" (the paper: both, stored as ""), or "other" (a stop-gradient on
	// the self pass, which then only sets the target).
	GradSide string         `json:"grad_side,omitempty"`
	targets  []model.Module `json:"-"`
	site     engine.Site    `json:"-"`
}

// Mistral7BRecipe is the paper's Mistral-7B recipe (layer 19, r 8, alpha 32,
// dropout 0.2, lr 1e-4, 15 epochs, batch 4) on q_proj and v_proj.
func Mistral7BRecipe() Spec {
	return Spec{Layer: 19, Site: "attn_out", Pooling: PoolFull, Rank: 8, Alpha: 32, Dropout: 0.2,
		Targets: []string{"q_proj", "v_proj"}, LR: 1e-4, Epochs: 15, BatchSize: 4}
}

// DefaultLayer is the capture layer used when a request names none: 60% of
// the depth, where the paper's Mistral recipe sits (19 of 32).
func DefaultLayer(cfg *model.Config) int { return cfg.Layers * 6 / 10 }

// MaxAlpha bounds lora alpha: a larger scale makes the adapter's output
// overflow long before training could help it.
const MaxAlpha = 4096

// MaxLMWeight bounds lm_weight.
const MaxLMWeight = 100

// The values of Spec.GradSide.
const (
	GradBoth  = "both"
	GradOther = "other"
)

// Normalize fills defaults (the Mistral recipe) and validates the spec
// against cfg. Errors are phrased for API clients.
func (s *Spec) Normalize(cfg *model.Config) error {
	def := Mistral7BRecipe()
	if s.Layer < 0 {
		return fmt.Errorf("layer must be non-negative, got %d", s.Layer)
	}
	if s.Layer >= cfg.Layers {
		return fmt.Errorf("layer %d out of range: the model has %d layers (0..%d)", s.Layer, cfg.Layers, cfg.Layers-1)
	}
	if s.Site == "" {
		s.Site = def.Site
	}
	site, err := engine.ParseSite(s.Site)
	if err != nil {
		return err
	}
	s.site = site
	if s.Pooling, err = ParsePooling(string(s.Pooling)); err != nil {
		return err
	}
	if s.Rank == 0 {
		s.Rank = def.Rank
	}
	if s.Alpha == 0 {
		s.Alpha = def.Alpha
	}
	if len(s.Targets) == 0 {
		s.Targets = def.Targets
	}
	if s.LR == 0 {
		s.LR = def.LR
	}
	if s.Epochs == 0 {
		s.Epochs = def.Epochs
	}
	if s.BatchSize == 0 {
		s.BatchSize = def.BatchSize
	}
	if s.MaxTokens == 0 {
		s.MaxTokens = 256
	}
	if s.LMWeight > 0 && s.LMBatch == 0 {
		s.LMBatch = 4
	}
	if s.GradSide == GradBoth {
		s.GradSide = ""
	}
	switch {
	case s.Rank < 1 || s.Rank > 256:
		return fmt.Errorf("r must be between 1 and 256, got %d", s.Rank)
	case !(s.Alpha > 0 && s.Alpha <= MaxAlpha):
		return fmt.Errorf("alpha must be in (0, %g], got %g", float64(MaxAlpha), s.Alpha)
	case s.Dropout < 0 || s.Dropout >= 1:
		return fmt.Errorf("dropout must be in [0, 1), got %g", s.Dropout)
	case s.LR <= 0 || s.LR > 1 || math.IsNaN(s.LR):
		return fmt.Errorf("learning_rate must be in (0, 1], got %g", s.LR)
	case !(s.WeightDecay >= 0 && s.WeightDecay <= 1):
		return fmt.Errorf("weight_decay must be in [0, 1], got %g", s.WeightDecay)
	case s.Epochs < 1 || s.Epochs > 1000:
		return fmt.Errorf("epochs must be between 1 and 1000, got %d", s.Epochs)
	case s.BatchSize < 1 || s.BatchSize > 64:
		return fmt.Errorf("batch_size must be between 1 and 64, got %d", s.BatchSize)
	case !(s.LMWeight >= 0 && s.LMWeight <= MaxLMWeight):
		return fmt.Errorf("lm_weight must be in [0, %g], got %g", float64(MaxLMWeight), s.LMWeight)
	case s.LMWeight == 0 && s.LMBatch != 0:
		return fmt.Errorf("lm_batch needs lm_weight > 0")
	case s.LMWeight > 0 && (s.LMBatch < 1 || s.LMBatch > 64):
		return fmt.Errorf("lm_batch must be between 1 and 64, got %d", s.LMBatch)
	case s.GradSide != "" && s.GradSide != GradOther:
		return fmt.Errorf("grad_side must be \"both\" or \"other\", got %q", s.GradSide)
	}
	s.targets = s.targets[:0]
	for _, t := range s.Targets {
		m, ok := model.ParseModule(t)
		if !ok {
			return fmt.Errorf("unknown target module %q (want q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", t)
		}
		if !slices.Contains(s.targets, m) {
			s.targets = append(s.targets, m)
		}
	}
	slices.Sort(s.targets)
	return nil
}

// NewAdapter returns a LoRA adapter initialised as PEFT does: A uniform in
// ±1/sqrt(in) (Kaiming-uniform with a=√5), B zero, so training starts at the base model.
func NewAdapter(cfg *model.Config, s *Spec, name string) *lora.Adapter {
	rng := rand.New(rand.NewPCG(s.Seed, 0xda3e39cb94b95bdb))
	a := &lora.Adapter{Name: name, Rank: s.Rank, Alpha: s.Alpha, RSLoRA: s.RSLoRA, Modules: slices.Clone(s.targets),
		Layers: make([][model.NumModules]*lora.Pair, cfg.Layers)}
	scale := lora.Scale(s.Alpha, s.Rank, s.RSLoRA)
	for l := range a.Layers {
		for _, m := range s.targets {
			out, in := cfg.Shape(m)
			p := &lora.Pair{R: s.Rank, In: in, Out: out, Scale: scale, A: make([]float32, s.Rank*in), B: make([]float32, out*s.Rank)}
			bound := 1 / math.Sqrt(float64(in))
			for i := range p.A {
				p.A[i] = float32((2*rng.Float64() - 1) * bound)
			}
			a.Layers[l][m] = p
		}
	}
	return a
}

// Progress reports a finished optimiser step.
type Progress struct {
	Step       int           `json:"step"`
	Steps      int           `json:"steps"`
	Epoch      int           `json:"epoch"`
	Epochs     int           `json:"epochs"`
	Loss       float64       `json:"loss"`               // SOO + λ·LM
	SOOLoss    float64       `json:"soo_loss,omitempty"` // with lm_weight > 0
	LMLoss     float64       `json:"lm_loss,omitempty"`  // with lm_weight > 0
	TokensPerS float64       `json:"tokens_per_s"`
	ETA        time.Duration `json:"eta_ns"`
}

// RunOptions are a training run's side channels.
type RunOptions struct {
	// CheckpointDir, when set, receives a checkpoint after every epoch, and a
	// run whose directory holds one resumes after its last finished epoch.
	CheckpointDir string
	// Progress is called after every step (from the training goroutine).
	Progress func(Progress)
	// EpochDone is called after every epoch's checkpoint is written.
	EpochDone func(epoch int)
	// LMDocs are the documents of the LM term (Spec.LMWeight); a spec with
	// lm_weight > 0 needs at least one.
	LMDocs []LMDoc
}

// Result is a finished run.
type Result struct {
	Adapter *lora.Adapter
	Losses  []float64 // per step, over the whole run (including steps before a resume)
	Resumed int       // epochs restored from a checkpoint
}

// Train fine-tunes a fresh adapter on pairs with the SOO loss.
func Train(ctx context.Context, ex *cpu.Executor, pairs []TokPair, spec Spec, name string, opts RunOptions) (*Result, error) {
	cfg := ex.Config()
	if err := spec.Normalize(cfg); err != nil {
		return nil, fmt.Errorf("training: %w", err)
	}
	if len(pairs) == 0 {
		return nil, errors.New("training: no pairs")
	}
	if spec.LMWeight > 0 && len(opts.LMDocs) == 0 {
		return nil, errors.New("training: lm_weight > 0 needs LM documents")
	}
	lmDocs := 0
	if spec.LMWeight > 0 {
		lmDocs = len(opts.LMDocs)
	}
	a := NewAdapter(cfg, &spec, name)
	opt := NewAdamW(a, spec.LR, spec.WeightDecay)
	res := &Result{Adapter: a}
	start := 0
	if opts.CheckpointDir != "" {
		ck, err := loadCheckpoint(opts.CheckpointDir, a, opt, &spec, len(pairs), lmDocs)
		if err != nil {
			return nil, err
		}
		if ck != nil {
			start = ck.Epoch
			res.Losses = ck.Losses
			res.Resumed = ck.Epoch
		}
	}
	bs := spec.BatchSize
	stepsPerEpoch := (len(pairs) + bs - 1) / bs
	total := stepsPerEpoch * spec.Epochs
	pt := engine.Point{Layer: spec.Layer, Site: spec.site}
	began := time.Now()
	var tokens int
	var bufs stepBuffers
	for epoch := start; epoch < spec.Epochs; epoch++ {
		order := epochOrder(len(pairs), spec.Seed, epoch)
		for b := 0; b < stepsPerEpoch; b++ {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("training: %w", err)
			}
			idx := order[b*bs : min((b+1)*bs, len(order))]
			step := epoch*stepsPerEpoch + b
			sl, err := runStep(ctx, ex, &bufs, a, opt, pairs, opts.LMDocs, idx, pt, spec, uint64(step))
			if err != nil {
				return nil, err
			}
			loss, n := sl.loss, sl.tokens
			tokens += n
			res.Losses = append(res.Losses, loss)
			if opts.Progress != nil {
				el := time.Since(began)
				done := step + 1 - start*stepsPerEpoch
				opts.Progress(Progress{Step: step + 1, Steps: total, Epoch: epoch + 1, Epochs: spec.Epochs, Loss: loss,
					SOOLoss: sl.soo, LMLoss: sl.lm,
					TokensPerS: float64(tokens) / el.Seconds(),
					ETA:        time.Duration(float64(el) / float64(done) * float64(total-step-1))})
			}
		}
		if opts.CheckpointDir != "" {
			if err := saveCheckpoint(opts.CheckpointDir, a, opt, &spec, len(pairs), lmDocs, epoch+1, res.Losses); err != nil {
				return nil, err
			}
		}
		if opts.EpochDone != nil {
			opts.EpochDone(epoch + 1)
		}
	}
	return res, nil
}

// epochOrder is the seeded shuffle of pair indices for an epoch; it depends
// only on (seed, epoch), so a resumed run repeats it exactly.
func epochOrder(n int, seed uint64, epoch int) []int {
	rng := rand.New(rand.NewPCG(seed, uint64(epoch)+1))
	return rng.Perm(n)
}

// stepBuffers are what a run's steps reuse instead of allocating anew.
type stepBuffers struct {
	ws     cpu.Workspace // the executor's training buffers (SOO pass)
	lmws   cpu.Workspace // the LM pass's buffers
	grad   *lora.Adapter // the gradient, shaped like the adapter
	lmGrad *lora.Adapter // the LM term's gradient
}

// stepLoss is what one step measured.
type stepLoss struct {
	loss    float64 // soo + λ·lm
	soo, lm float64 // the batch's mean SOO loss; its LM loss (0 without the term)
	tokens  int
}

// lmSeedSalt separates the LM term's draws and dropout from the SOO pass's.
const lmSeedSalt = 0x9e3779b97f4a7c15

// lmPick returns the LM documents step draws: spec.LMBatch indices, with
// replacement, depending only on (seed, step), so a resumed run repeats them.
func lmPick(n int, spec Spec, step uint64) []int {
	rng := rand.New(rand.NewPCG(spec.Seed^lmSeedSalt, step))
	idx := make([]int, spec.LMBatch)
	for i := range idx {
		idx[i] = rng.IntN(n)
	}
	return idx
}

// zeroGrad returns *g shaped like a and zeroed.
func zeroGrad(g **lora.Adapter, a *lora.Adapter) *lora.Adapter {
	if *g == nil {
		*g = cpu.NewGrad(a)
		return *g
	}
	for _, mods := range (*g).Layers {
		for _, p := range mods {
			if p != nil {
				clear(p.A)
				clear(p.B)
			}
		}
	}
	return *g
}

// trainStep is runStep without an LM term: the batch's mean SOO loss and
// the number of tokens.
func trainStep(ctx context.Context, ex *cpu.Executor, bufs *stepBuffers, a *lora.Adapter, opt *AdamW, pairs []TokPair, idx []int, pt engine.Point, spec Spec, step uint64) (float64, int, error) {
	sl, err := runStep(ctx, ex, bufs, a, opt, pairs, nil, idx, pt, spec, step)
	return sl.loss, sl.tokens, err
}

// runStep runs one optimiser step on the pairs idx (plus, with
// spec.LMWeight > 0, λ times the LM loss of spec.LMBatch of docs) and
// returns its losses and the number of tokens processed. Its buffers come
// from bufs, which a run passes to every step.
func runStep(ctx context.Context, ex *cpu.Executor, bufs *stepBuffers, a *lora.Adapter, opt *AdamW, pairs []TokPair, docs []LMDoc, idx []int, pt engine.Point, spec Spec, step uint64) (stepLoss, error) {
	seqs := make([][]int32, 0, 2*len(idx))
	var sl stepLoss
	for _, i := range idx {
		seqs = append(seqs, pairs[i].Self, pairs[i].Other)
		sl.tokens += len(pairs[i].Self) + len(pairs[i].Other)
	}
	tape, acts, err := ex.ForwardTrain(ctx, a, seqs, pt, cpu.TrainOptions{Dropout: spec.Dropout, Seed: spec.Seed<<20 ^ step, Workspace: &bufs.ws})
	if err != nil {
		return sl, fmt.Errorf("training: forward: %w", err)
	}
	grads := make([]engine.Tensor2D, len(acts))
	var total float64
	inv := float32(1) / float32(len(idx))
	for k := range idx {
		loss, dS, dO, err := SOOLoss(acts[2*k], acts[2*k+1], spec.Pooling)
		if err != nil {
			return sl, fmt.Errorf("training: %w", err)
		}
		total += loss
		for i := range dS.Data {
			if spec.GradSide == GradOther {
				dS.Data[i] = 0 // stop-gradient: the self pass is only the target
			} else {
				dS.Data[i] *= inv
			}
		}
		for i := range dO.Data {
			dO.Data[i] *= inv
		}
		grads[2*k], grads[2*k+1] = dS, dO
	}
	g := zeroGrad(&bufs.grad, a)
	if err := tape.Backward(ctx, grads, g); err != nil {
		return sl, fmt.Errorf("training: backward: %w", err)
	}
	sl.soo = total / float64(len(idx))
	sl.loss = sl.soo
	if spec.LMWeight > 0 {
		var b cpu.LMBatch
		for _, i := range lmPick(len(docs), spec, step) {
			b.Rows = append(b.Rows, docs[i].Tokens)
			b.Weights = append(b.Weights, docs[i].Weights)
			sl.tokens += len(docs[i].Tokens)
		}
		lg := zeroGrad(&bufs.lmGrad, a)
		res, err := ex.LMLossGradLoRA(ctx, a, b, lg, cpu.LMLoRAOptions{Dropout: spec.Dropout, Seed: spec.Seed<<20 ^ step ^ lmSeedSalt, Workspace: &bufs.lmws})
		if err != nil {
			return sl, fmt.Errorf("training: lm term: %w", err)
		}
		lam := float32(spec.LMWeight)
		for l, mods := range g.Layers {
			for m, p := range mods {
				if p == nil {
					continue
				}
				q := lg.Layers[l][m]
				for i, v := range q.A {
					p.A[i] += lam * v
				}
				for i, v := range q.B {
					p.B[i] += lam * v
				}
			}
		}
		sl.lm = res.Loss
		sl.loss = sl.soo + spec.LMWeight*sl.lm
	}
	opt.Update(a, g)
	return sl, nil
}

// checkpointMeta is stored in the checkpoint's safetensors metadata.
type checkpointMeta struct {
	Epoch    int       `json:"epoch"`
	AdamStep int       `json:"adam_step"`
	Pairs    int       `json:"pairs"`
	LMDocs   int       `json:"lm_docs,omitempty"`
	Spec     Spec      `json:"spec"`
	Losses   []float64 `json:"losses"`
}

const checkpointFile = "checkpoint.safetensors"

func saveCheckpoint(dir string, a *lora.Adapter, opt *AdamW, spec *Spec, pairs, lmDocs, epoch int, losses []float64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("training: checkpoint: %w", err)
	}
	meta, err := json.Marshal(checkpointMeta{Epoch: epoch, AdamStep: opt.Step, Pairs: pairs, LMDocs: lmDocs, Spec: *spec, Losses: losses})
	if err != nil {
		return fmt.Errorf("training: checkpoint: %w", err)
	}
	var ts []safetensors.Tensor
	for _, part := range []struct {
		prefix string
		a      *lora.Adapter
	}{{"param", a}, {"adam_m", opt.M}, {"adam_v", opt.V}} {
		for l, mods := range part.a.Layers {
			for m, p := range mods {
				if p == nil {
					continue
				}
				k := fmt.Sprintf("%s.%d.%s.", part.prefix, l, model.Module(m))
				ts = append(ts, safetensors.FromFloat32(k+"A", safetensors.F32, []int{p.R, p.In}, p.A),
					safetensors.FromFloat32(k+"B", safetensors.F32, []int{p.Out, p.R}, p.B))
			}
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, checkpointFile), ts, map[string]string{"soo": string(meta)}); err != nil {
		return fmt.Errorf("training: checkpoint: %w", err)
	}
	return nil
}

// loadCheckpoint restores a, opt from dir when a checkpoint of the same spec
// and dataset is there; it returns nil when there is none.
func loadCheckpoint(dir string, a *lora.Adapter, opt *AdamW, spec *Spec, pairs, lmDocs int) (*checkpointMeta, error) {
	path := filepath.Join(dir, checkpointFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("training: checkpoint: %w", err)
	}
	defer f.Close()
	var meta checkpointMeta
	if err := json.Unmarshal([]byte(f.Metadata()["soo"]), &meta); err != nil {
		return nil, fmt.Errorf("training: checkpoint metadata: %w", err)
	}
	want, _ := json.Marshal(spec)
	got, _ := json.Marshal(meta.Spec)
	if string(want) != string(got) || meta.Pairs != pairs || meta.LMDocs != lmDocs {
		return nil, fmt.Errorf("training: checkpoint in %s is for another spec or dataset", dir)
	}
	for _, part := range []struct {
		prefix string
		a      *lora.Adapter
	}{{"param", a}, {"adam_m", opt.M}, {"adam_v", opt.V}} {
		for l, mods := range part.a.Layers {
			for m, p := range mods {
				if p == nil {
					continue
				}
				k := fmt.Sprintf("%s.%d.%s.", part.prefix, l, model.Module(m))
				for _, ab := range []struct {
					name string
					dst  []float32
				}{{"A", p.A}, {"B", p.B}} {
					t, ok := f.Tensor(k + ab.name)
					if !ok || t.NumElements() != len(ab.dst) {
						return nil, fmt.Errorf("training: checkpoint lacks %s%s", k, ab.name)
					}
					v, err := t.Float32()
					if err != nil {
						return nil, fmt.Errorf("training: checkpoint: %w", err)
					}
					copy(ab.dst, v)
				}
			}
		}
	}
	opt.Step = meta.AdamStep
	return &meta, nil
}
