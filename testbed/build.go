package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/testbed/world"
	"github.com/sooserve/sooserve/training"
)

// Shape is the architecture of the testbed model: a Llama with SwiGLU,
// RoPE, RMSNorm and tied embeddings, stored in f32.
type Shape struct {
	Hidden       int     `json:"hidden"`
	Layers       int     `json:"layers"`
	Heads        int     `json:"heads"`
	KVHeads      int     `json:"kv_heads"`
	Intermediate int     `json:"intermediate"`
	MaxPositions int     `json:"max_positions"`
	RopeTheta    float64 `json:"rope_theta"`
	// Untied gives the model an LM head of its own instead of reading
	// logits off the embedding matrix (the probes' model was untied).
	Untied bool `json:"untied,omitempty"`
}

// DefaultShape is the probes' model (probes/testbed-probe-2): hidden 128,
// 4 layers, 4 heads (4 KV heads), SwiGLU 344, RoPE θ 10000, 512 positions.
func DefaultShape() Shape {
	return Shape{Hidden: 128, Layers: 4, Heads: 4, KVHeads: 4, Intermediate: 344, MaxPositions: 512, RopeTheta: 10000}
}

// Stage is one stage of the curriculum.
type Stage struct {
	// Mix names the world's mix the stage draws from ("simple", "full").
	Mix string `json:"mix"`
	// Tokens is the stage's budget of training tokens (rows × row length per
	// step, padding included); the cosine schedule spans it.
	Tokens int64 `json:"tokens"`
	// LR is the peak learning rate, reached after Warmup steps.
	LR float64 `json:"lr"`
	// MinLR is where the cosine decay ends.
	MinLR float64 `json:"min_lr"`
	// Warmup is the number of warm-up steps.
	Warmup int `json:"warmup"`
}

// Options configures Build. DefaultOptions gives the probes' recipe.
type Options struct {
	// Seed determines everything: the world, the tokenizer, the
	// initialisation and the data streams.
	Seed uint64 `json:"seed"`
	// Out is the output directory; Out/checkpoint holds the checkpoints
	// while the build runs.
	Out string `json:"-"`
	// VocabSize is the tokenizer's number of ids, special tokens included.
	VocabSize int `json:"vocab_size"`
	// Shape is the model's architecture.
	Shape Shape `json:"shape"`
	// RowLen is the tokens per packed row and BatchRows the rows per step.
	RowLen    int `json:"row_len"`
	BatchRows int `json:"batch_rows"`
	// Stages are the curriculum: the simple world, then the full one, each
	// starting from the previous stage's weights with a new warm-up.
	Stages []Stage `json:"stages"`
	// Beta1, Beta2, WeightDecay and ClipNorm are AdamW's and the global
	// gradient-norm clip's.
	Beta1       float64 `json:"beta1"`
	Beta2       float64 `json:"beta2"`
	WeightDecay float64 `json:"weight_decay"`
	ClipNorm    float64 `json:"clip_norm"`
	// UntilGates ends the first stage at the first evaluation that meets
	// StageOneGates(StageOneGate); its Tokens is then a maximum.
	UntilGates   bool    `json:"until_gates"`
	StageOneGate float64 `json:"stage_one_gate"`
	// EvalEvery is the number of training tokens between evaluations
	// (rounded up to whole steps); every stage also ends with one.
	EvalEvery int64 `json:"eval_every"`
	// EvalItems is the held-out combinations per kind (each in both orders)
	// of the evaluations during training, FinalItems of the final one.
	EvalItems  int `json:"eval_items"`
	FinalItems int `json:"final_items"`
	// EvalKinds are the kinds evaluated during training (default all).
	EvalKinds []world.EvalKind `json:"eval_kinds,omitempty"`
	// MaxNew is the most tokens of a greedy evaluation answer.
	MaxNew int `json:"max_new"`

	// CheckpointEvery is the wall time between checkpoints (0: only at the
	// end of a stage and when ctx is cancelled).
	CheckpointEvery time.Duration `json:"-"`
	// Resume continues the build whose checkpoint is in Out/checkpoint,
	// which must have been started with the same options.
	Resume bool `json:"-"`
	// Threads is the executor's thread count (0: GOMAXPROCS).
	Threads int `json:"-"`
	// Logger receives what the build does (nil: discarded).
	Logger *slog.Logger `json:"-"`
	// OnProgress is called after every step, OnEval after every evaluation.
	OnProgress func(Progress)   `json:"-"`
	OnEval     func(EvalRecord) `json:"-"`
}

// DefaultOptions returns the probes' recipe (probes/testbed-probe-2 and -3):
// vocabulary 1024, DefaultShape, 16 rows of 256 tokens, AdamW β (0.9, 0.95)
// with weight decay 0.1 and clipping at 1; stage 1 the simple world for up
// to 4M tokens at lr 3e-3 (warm-up 200, cosine to 3e-4), ending when
// burglar deceptive and self truthful reach 95% in each order; stage 2 the
// full world for 1.5M tokens at 2e-3 (warm-up 50, cosine to 2e-4);
// evaluations every 0.25M tokens on 30 items per kind, the final one on 100.
func DefaultOptions() Options {
	return Options{
		Seed: 1, VocabSize: 1024, Shape: DefaultShape(), RowLen: 256, BatchRows: 16,
		Stages: []Stage{
			{Mix: "simple", Tokens: 4_000_000, LR: 3e-3, MinLR: 3e-4, Warmup: 200},
			{Mix: "full", Tokens: 1_500_000, LR: 2e-3, MinLR: 2e-4, Warmup: 50},
		},
		Beta1: 0.9, Beta2: 0.95, WeightDecay: 0.1, ClipNorm: 1,
		UntilGates: true, StageOneGate: 95,
		EvalEvery: 250_000, EvalItems: 30, FinalItems: 100, MaxNew: 24,
		CheckpointEvery: 3 * time.Minute,
	}
}

// Progress is reported after every training step.
type Progress struct {
	Stage        int     // 1-based
	Stages       int     // number of stages
	Mix          string  // the stage's mix
	Step         int     // steps done in the stage
	Steps        int     // the stage's most steps
	Tokens       int64   // training tokens so far, all stages
	Loss         float64 // the step's loss
	LR           float64 // the step's learning rate
	GradNorm     float64 // before clipping
	TokensPerSec float64 // over this process's steps
	Elapsed      time.Duration
	ETA          time.Duration // at most: a stage that ends at its gates ends sooner
}

// EvalRecord is one evaluation during training.
type EvalRecord struct {
	Stage        int       `json:"stage"`
	Mix          string    `json:"mix"`
	Step         int       `json:"step"`
	Tokens       int64     `json:"tokens"`
	Loss         float64   `json:"loss"` // mean training loss since the last evaluation
	TokensPerSec float64   `json:"tokens_per_sec"`
	Elapsed      float64   `json:"elapsed_s"`
	EvalSeconds  float64   `json:"eval_s"`
	Table        GateTable `json:"table"`
	StageOneMet  bool      `json:"stage_one_met"`
	GatesMet     bool      `json:"gates_met"`
}

// Line renders the record as one log line.
func (r EvalRecord) Line() string {
	return fmt.Sprintf("eval stage %d %s step %d %.2fM tok loss %.4f %.0f tok/s %s | %s (%.0fs) | %s",
		r.Stage, r.Mix, r.Step, float64(r.Tokens)/1e6, r.Loss, r.TokensPerSec, fmtDur(time.Duration(r.Elapsed*float64(time.Second))),
		r.Table.Line(), r.EvalSeconds, gateWord(r))
}

func gateWord(r EvalRecord) string {
	switch {
	case r.GatesMet:
		return "gates met"
	case r.StageOneMet:
		return "stage-1 gates met"
	}
	return "gates not met"
}

// StageResult is what one stage did.
type StageResult struct {
	Mix     string  `json:"mix"`
	Steps   int     `json:"steps"`
	Tokens  int64   `json:"tokens"`
	EndedBy string  `json:"ended_by"` // "gates" or "budget"
	Loss    float64 `json:"final_loss"`
}

// Result is a finished build.
type Result struct {
	Dir          string        `json:"-"`
	Seed         uint64        `json:"seed"`
	Params       int           `json:"params"`
	VocabSize    int           `json:"vocab_size"`
	Stages       []StageResult `json:"stages"`
	Tokens       int64         `json:"tokens"`
	WallSeconds  float64       `json:"wall_s"`
	TokensPerSec float64       `json:"tokens_per_sec"`
	Final        GateTable     `json:"final"`
	Gates        []Gate        `json:"gates"`
	GatesMet     bool          `json:"gates_met"`
	History      []EvalRecord  `json:"history"`
}

// ErrInterrupted is returned (wrapped with ctx's error) when ctx ends a
// build early; its checkpoint is then saved, and Resume goes on from it.
var ErrInterrupted = errors.New("testbed: build interrupted (checkpoint saved)")

// buildState is Out/checkpoint/state.json.
type buildState struct {
	Version     int           `json:"version"`
	Recipe      string        `json:"recipe"` // Options as JSON: a resumed build must match
	Stage       int           `json:"stage"`  // 0-based
	Step        int           `json:"step"`   // steps done in Stage
	StageDone   bool          `json:"stage_done"`
	EndedBy     string        `json:"ended_by,omitempty"`
	Trainer     string        `json:"trainer"` // the trainer checkpoint's file name
	Tokens      int64         `json:"tokens"`
	Elapsed     float64       `json:"elapsed_s"`    // wall seconds of earlier processes
	TrainSecs   float64       `json:"train_s"`      // seconds spent in steps, all processes
	Done        []StageResult `json:"stages_done"`  // the finished stages
	History     []EvalRecord  `json:"history"`      // every evaluation so far
	LossSum     float64       `json:"loss_sum"`     // since the last evaluation
	LossN       int           `json:"loss_n"`       // steps in LossSum
	LastLoss    float64       `json:"last_loss"`    // the last step's loss
	StageTokens int64         `json:"stage_tokens"` // tokens of the current stage
}

const stateVersion = 1

func (o *Options) check() error {
	switch {
	case o.Out == "":
		return errors.New("testbed: no output directory")
	case o.VocabSize < 256+len(world.SpecialTokens())+1:
		return fmt.Errorf("testbed: vocabulary size %d is too small", o.VocabSize)
	case o.RowLen < 16 || o.BatchRows < 1:
		return fmt.Errorf("testbed: rows of %d tokens, %d per step: too small", o.RowLen, o.BatchRows)
	case o.RowLen > o.Shape.MaxPositions:
		return fmt.Errorf("testbed: rows of %d tokens exceed the model's %d positions", o.RowLen, o.Shape.MaxPositions)
	case len(o.Stages) == 0:
		return errors.New("testbed: no stages")
	case o.EvalItems < 1 || o.FinalItems < 1:
		return errors.New("testbed: evaluation items must be positive")
	}
	for i, s := range o.Stages {
		if _, err := world.MixByName(s.Mix); err != nil {
			return fmt.Errorf("testbed: stage %d: %w", i+1, err)
		}
		if s.Tokens < 1 {
			return fmt.Errorf("testbed: stage %d: no token budget", i+1)
		}
	}
	if o.EvalEvery < 1 {
		o.EvalEvery = 250_000
	}
	if o.MaxNew < 1 {
		o.MaxNew = 24
	}
	if len(o.EvalKinds) == 0 {
		o.EvalKinds = world.EvalKinds()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// tokensPerStep is the training tokens of one step.
func (o *Options) tokensPerStep() int64 { return int64(o.RowLen) * int64(o.BatchRows) }

// stageSteps is stage i's most steps.
func (o *Options) stageSteps(i int) int {
	return int((o.Stages[i].Tokens + o.tokensPerStep() - 1) / o.tokensPerStep())
}

// lmConfig is stage i's optimiser recipe.
func (o *Options) lmConfig(i int) training.LMConfig {
	s := o.Stages[i]
	steps := o.stageSteps(i)
	return training.LMConfig{LR: s.LR, MinLR: s.MinLR, WarmupSteps: min(s.Warmup, steps), Steps: steps,
		Beta1: o.Beta1, Beta2: o.Beta2, WeightDecay: o.WeightDecay, ClipNorm: o.ClipNorm, Seed: o.Seed + uint64(i)}
}

// modelConfigJSON is the config.json of the testbed model.
func modelConfigJSON(sh Shape, tok *tokenizer.Tokenizer, enc *Encoder, seed uint64) ([]byte, error) {
	imEnd, eot := enc.Special(world.ImEnd), enc.Special(world.EndOfText)
	cfg := map[string]any{
		"architectures":           []string{"LlamaForCausalLM"},
		"model_type":              "llama",
		"vocab_size":              tok.VocabSize(),
		"hidden_size":             sh.Hidden,
		"intermediate_size":       sh.Intermediate,
		"num_hidden_layers":       sh.Layers,
		"num_attention_heads":     sh.Heads,
		"num_key_value_heads":     sh.KVHeads,
		"head_dim":                sh.Hidden / sh.Heads,
		"max_position_embeddings": sh.MaxPositions,
		"rms_norm_eps":            1e-5,
		"rope_theta":              sh.RopeTheta,
		"tie_word_embeddings":     !sh.Untied,
		"hidden_act":              "silu",
		"attention_bias":          false,
		"mlp_bias":                false,
		"bos_token_id":            eot,
		"eos_token_id":            []int32{imEnd, eot},
		"torch_dtype":             "float32",
		"soo_testbed":             map[string]any{"seed": seed, "builder": "soo testbed build"},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("testbed: config.json: %w", err)
	}
	return append(b, '\n'), nil
}

// pipeline is what every stage shares.
type pipeline struct {
	o       Options
	w       *world.World
	bpe     *tokenizer.BPEModel
	tok     *tokenizer.Tokenizer
	enc     *Encoder
	cfg     *model.Config
	cfgJSON []byte
	recipe  string
	ckptDir string
}

// newPipeline builds the world, the tokenizer and the model configuration.
func newPipeline(o Options) (*pipeline, error) {
	p := &pipeline{o: o, w: world.New(o.Seed, world.Options{}), ckptDir: filepath.Join(o.Out, "checkpoint")}
	var err error
	if p.bpe, p.tok, err = TrainTokenizer(p.w, o.VocabSize); err != nil {
		return nil, err
	}
	if p.enc, err = NewEncoder(p.tok); err != nil {
		return nil, err
	}
	if p.cfgJSON, err = modelConfigJSON(o.Shape, p.tok, p.enc, o.Seed); err != nil {
		return nil, err
	}
	if p.cfg, err = model.ParseConfig(p.cfgJSON); err != nil {
		return nil, fmt.Errorf("testbed: config.json: %w", err)
	}
	r, err := json.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("testbed: recipe: %w", err)
	}
	p.recipe = string(r)
	return p, nil
}

// greedy returns a greedy decoder over ex.
func (p *pipeline) greedy(ex *cpu.Executor) *Greedy {
	return &Greedy{Executor: ex, Tokenizer: p.tok, Encoder: p.enc, MaxNew: p.o.MaxNew}
}

// Build trains the testbed model from scratch and writes it to o.Out as a
// Hugging Face directory (config.json, model.safetensors in f32,
// tokenizer.json, tokenizer_config.json with world.ChatTemplate,
// generation_config.json), with gates.json (the final gate table) and
// README.md (the model's card). Everything is a function of o (its
// Resume, Threads, CheckpointEvery and callbacks aside): the same options
// give the same bytes. When ctx ends, Build saves a checkpoint and returns
// an error wrapping ErrInterrupted; with o.Resume it goes on from there and
// ends with the weights an uninterrupted build would have.
func Build(ctx context.Context, o Options) (*Result, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	start := time.Now()
	p, err := newPipeline(o)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	log.Info("tokenizer", "vocab", p.tok.VocabSize(), "merges", len(p.bpe.Merges),
		"rooms", p.enc.TokenCounts(world.Rooms[:8]), "objects", p.enc.TokenCounts([]string{world.CheapObjects[0], world.CheapObjects[2], world.ExpensiveObjects[1], world.ExpensiveObjects[11]}))
	st := &buildState{Version: stateVersion, Recipe: p.recipe}
	if o.Resume {
		if st, err = p.readState(); err != nil {
			return nil, err
		}
		log.Info("resuming", "stage", st.Stage+1, "step", st.Step, "tokens", st.Tokens)
	} else if _, err := os.Stat(filepath.Join(p.ckptDir, "state.json")); err == nil {
		return nil, fmt.Errorf("testbed: %s holds an unfinished build: resume it, or remove the directory", p.ckptDir)
	}
	r := &run{p: p, st: st, start: start, lastCkpt: start}
	var tr *training.LMTrainer
	for i := st.Stage; i < len(o.Stages); i++ {
		if tr, err = r.stage(ctx, i, tr); err != nil {
			return nil, err
		}
	}
	return r.finish(ctx, tr)
}

// run is one process's part of a build.
type run struct {
	p        *pipeline
	st       *buildState
	start    time.Time // this process's start
	lastCkpt time.Time
	stepSecs float64 // seconds in steps in this process
	stepToks int64   // tokens of those steps
}

func (r *run) elapsed() time.Duration {
	return time.Duration(r.st.Elapsed*float64(time.Second)) + time.Since(r.start)
}

// stage runs stage i (from its checkpoint when resuming), starting from
// prev's weights when prev is the previous stage's trainer.
func (r *run) stage(ctx context.Context, i int, prev *training.LMTrainer) (*training.LMTrainer, error) {
	p, o, st := r.p, &r.p.o, r.st
	mix, _ := world.MixByName(o.Stages[i].Mix)
	steps := o.stageSteps(i)
	var init *model.Model
	resumed := prev == nil && st.Trainer != ""
	switch {
	case prev != nil:
		init = prev.Model()
	case resumed:
		init = training.NewLMModel(p.cfg, o.Seed) // replaced by the checkpoint's weights
	default:
		init = training.NewLMModel(p.cfg, o.Seed)
	}
	tr, err := training.NewLMTrainer(init, o.lmConfig(i), cpu.Options{Threads: o.Threads})
	if err != nil {
		return nil, fmt.Errorf("testbed: stage %d: %w", i+1, err)
	}
	if prev != nil {
		st.Stage, st.Step, st.StageDone, st.EndedBy, st.StageTokens = i, 0, false, "", 0
	}
	pk, err := NewPacker(p.w, p.enc, mix, uint64(i)+1, o.RowLen)
	if err != nil {
		return nil, err
	}
	if resumed {
		if err := tr.LoadCheckpoint(filepath.Join(p.ckptDir, st.Trainer)); err != nil {
			return nil, fmt.Errorf("testbed: resume: %w", err)
		}
		if err := pk.Skip(int64(st.Step) * int64(o.BatchRows)); err != nil {
			return nil, err
		}
	}
	if st.StageDone {
		return tr, nil
	}
	g := p.greedy(tr.Executor())
	evalSteps := int((o.EvalEvery + o.tokensPerStep() - 1) / o.tokensPerStep())
	p.o.Logger.Info("stage", "stage", i+1, "mix", mix.Name, "max_steps", steps, "max_tokens", int64(steps)*o.tokensPerStep(),
		"lr", o.Stages[i].LR, "warmup", o.Stages[i].Warmup, "from_step", st.Step)
	for st.Step < steps {
		if ctx.Err() != nil {
			if err := r.checkpoint(tr); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrInterrupted, ctx.Err())
		}
		b, err := pk.Batch(o.BatchRows)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		res, err := tr.Step(context.WithoutCancel(ctx), b)
		if err != nil {
			return nil, fmt.Errorf("testbed: stage %d step %d: %w", i+1, st.Step+1, err)
		}
		dt := time.Since(t0).Seconds()
		r.stepSecs += dt
		r.stepToks += o.tokensPerStep()
		st.TrainSecs += dt
		st.Step++
		st.Tokens += o.tokensPerStep()
		st.StageTokens += o.tokensPerStep()
		st.LossSum += res.Loss
		st.LossN++
		st.LastLoss = res.Loss
		tps := float64(r.stepToks) / r.stepSecs
		if o.OnProgress != nil {
			left := steps - st.Step
			for k := i + 1; k < len(o.Stages); k++ {
				left += o.stageSteps(k)
			}
			o.OnProgress(Progress{Stage: i + 1, Stages: len(o.Stages), Mix: mix.Name, Step: st.Step, Steps: steps, Tokens: st.Tokens,
				Loss: res.Loss, LR: res.LR, GradNorm: res.GradNorm, TokensPerSec: tps, Elapsed: r.elapsed(),
				ETA: time.Duration(float64(left) * float64(o.tokensPerStep()) / tps * float64(time.Second))})
		}
		if st.Step%evalSteps == 0 || st.Step == steps {
			rec, err := r.evaluate(ctx, g, i, mix.Name, tps)
			if err != nil {
				return nil, err
			}
			if i == 0 && o.UntilGates && rec.StageOneMet {
				st.EndedBy = "gates"
				break
			}
		}
		if o.CheckpointEvery > 0 && time.Since(r.lastCkpt) >= o.CheckpointEvery && st.Step < steps {
			if err := r.checkpoint(tr); err != nil {
				return nil, err
			}
		}
	}
	if st.EndedBy == "" {
		st.EndedBy = "budget"
	}
	st.StageDone = true
	st.Done = append(st.Done, StageResult{Mix: mix.Name, Steps: st.Step, Tokens: st.StageTokens, EndedBy: st.EndedBy, Loss: st.LastLoss})
	p.o.Logger.Info("stage done", "stage", i+1, "mix", mix.Name, "steps", st.Step, "tokens", st.StageTokens, "ended_by", st.EndedBy,
		"docs", pk.Docs, "cut", pk.Cut, "padding", fmt.Sprintf("%.1f%%", 100*float64(pk.Padding)/float64(max(1, pk.Tokens))))
	if err := r.checkpoint(tr); err != nil {
		return nil, err
	}
	return tr, nil
}

// evaluate runs a gate evaluation during training and records it.
func (r *run) evaluate(ctx context.Context, g *Greedy, i int, mix string, tps float64) (EvalRecord, error) {
	o, st := &r.p.o, r.st
	t0 := time.Now()
	tab, err := Evaluate(context.WithoutCancel(ctx), r.p.w, g, o.EvalKinds, o.EvalItems, false)
	if err != nil {
		return EvalRecord{}, err
	}
	rec := EvalRecord{Stage: i + 1, Mix: mix, Step: st.Step, Tokens: st.Tokens, Loss: st.LossSum / float64(max(1, st.LossN)),
		TokensPerSec: tps, Elapsed: r.elapsed().Seconds(), EvalSeconds: time.Since(t0).Seconds(), Table: tab,
		StageOneMet: AllMet(tab.StageOneGates(o.StageOneGate))}
	rec.GatesMet = len(o.EvalKinds) == len(world.EvalKinds()) && AllMet(tab.Gates())
	st.LossSum, st.LossN = 0, 0
	st.History = append(st.History, rec)
	if o.OnEval != nil {
		o.OnEval(rec)
	}
	return rec, nil
}

// checkpoint saves the trainer and the build's state, then removes older
// trainer checkpoints.
func (r *run) checkpoint(tr *training.LMTrainer) error {
	st, dir := r.st, r.p.ckptDir
	name := fmt.Sprintf("stage%d-step%06d.safetensors", st.Stage+1, st.Step)
	if err := tr.SaveCheckpoint(filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("testbed: checkpoint: %w", err)
	}
	saved := *st
	saved.Trainer = name
	saved.Elapsed = r.elapsed().Seconds()
	b, err := json.MarshalIndent(saved, "", "  ")
	if err != nil {
		return fmt.Errorf("testbed: checkpoint: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "state.json"), b); err != nil {
		return fmt.Errorf("testbed: checkpoint: %w", err)
	}
	st.Trainer = name
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("testbed: checkpoint: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".safetensors") && e.Name() != name {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	r.lastCkpt = time.Now()
	r.p.o.Logger.Info("checkpoint", "stage", st.Stage+1, "step", st.Step, "tokens", st.Tokens)
	return nil
}

// readState reads the checkpoint's state and checks it belongs to this
// recipe.
func (p *pipeline) readState() (*buildState, error) {
	b, err := os.ReadFile(filepath.Join(p.ckptDir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("testbed: resume: no checkpoint in %s", p.ckptDir)
	}
	if err != nil {
		return nil, fmt.Errorf("testbed: resume: %w", err)
	}
	var st buildState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("testbed: resume: %s: %w", filepath.Join(p.ckptDir, "state.json"), err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("testbed: resume: checkpoint version %d, this build writes %d", st.Version, stateVersion)
	}
	if st.Recipe != p.recipe {
		return nil, fmt.Errorf("testbed: resume: the checkpoint was made with other options:\n  checkpoint: %s\n  now:        %s", st.Recipe, p.recipe)
	}
	return &st, nil
}
