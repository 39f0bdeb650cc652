package training

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
)

// lmTinyConfig is a small llama (2 layers, d 32, GQA, vocabulary 48) that
// trains in milliseconds a step.
const lmTinyConfig = `{"model_type": "llama", "vocab_size": 48, "hidden_size": 32, "intermediate_size": 64,
	"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
	"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu"}`

func tinyLMModel(t testing.TB) *model.Model {
	t.Helper()
	cfg, err := model.ParseConfig([]byte(lmTinyConfig))
	if err != nil {
		t.Fatal(err)
	}
	return NewLMModel(cfg, 7)
}

// memoSet is four fixed sequences of 20 tokens.
func memoSet() [][]int32 {
	var seqs [][]int32
	for s := range 4 {
		var q []int32
		for i := range 20 {
			q = append(q, int32(3+(s*13+i*i*7+i*5)%45))
		}
		seqs = append(seqs, q)
	}
	return seqs
}

// memoBatch packs two of the sequences, drawn from the trainer's random
// stream, into each of two rows, the second half of each weighted 5.
func memoBatch(tr *LMTrainer) cpu.LMBatch {
	seqs := memoSet()
	var b cpu.LMBatch
	for range 2 {
		var row, docs []int32
		var ws []float32
		for k := range 2 {
			s := seqs[tr.Rand().IntN(len(seqs))]
			for i, tok := range s {
				row = append(row, tok)
				docs = append(docs, int32(k))
				ws = append(ws, float32(1+4*(2*i/len(s))))
			}
		}
		b.Rows, b.Docs, b.Weights = append(b.Rows, row), append(b.Docs, docs), append(b.Weights, ws)
	}
	return b
}

// TestLMTrainingMemorises runs a small training whose loss must fall: four
// sequences, packed two to a row, learnt by a model trained from scratch.
func TestLMTrainingMemorises(t *testing.T) {
	tr, err := NewLMTrainer(tinyLMModel(t), LMConfig{LR: 1e-2, MinLR: 1e-3, WarmupSteps: 10, Steps: 120, WeightDecay: 0.01, ClipNorm: 1, Seed: 1}, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	all := cpu.LMBatch{Rows: memoSet()}
	before, err := tr.Loss(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	var last LMStep
	for range 120 {
		if last, err = tr.Step(ctx, memoBatch(tr)); err != nil {
			t.Fatal(err)
		}
	}
	after, err := tr.Loss(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loss on the four sequences: %.3f before, %.3f after 120 steps (last step: %+v)", before.Loss, after.Loss, last)
	if before.Loss < 3 || after.Loss > 0.2 {
		t.Errorf("loss %.3f -> %.3f: want from about ln 48 = 3.9 to below 0.2", before.Loss, after.Loss)
	}
	if last.Step != 120 || math.Abs(last.LR-1e-3) > 1e-5 {
		t.Errorf("last step %+v: want step 120 near the schedule's floor 1e-3", last)
	}
}

// TestLMResumeIsExact checks that a run stopped after 3 steps and resumed
// from its checkpoint in a fresh trainer ends with the same weights,
// moments, step and random stream, bit for bit, as an uninterrupted run of
// 6 steps.
func TestLMResumeIsExact(t *testing.T) {
	init := tinyLMModel(t)
	cfg := LMConfig{LR: 5e-3, WarmupSteps: 2, Steps: 6, WeightDecay: 0.1, ClipNorm: 0.5, Seed: 3}
	ctx := context.Background()
	steps := func(tr *LMTrainer, n int) {
		for range n {
			if _, err := tr.Step(ctx, memoBatch(tr)); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir := t.TempDir()
	whole, err := NewLMTrainer(init, cfg, cpu.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	steps(whole, 6)
	first, err := NewLMTrainer(init, cfg, cpu.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	steps(first, 3)
	mid := filepath.Join(dir, "mid.safetensors")
	if err := first.SaveCheckpoint(mid); err != nil {
		t.Fatal(err)
	}
	second, err := NewLMTrainer(init, cfg, cpu.Options{Threads: 1}) // the thread count does not matter
	if err != nil {
		t.Fatal(err)
	}
	if err := second.LoadCheckpoint(mid); err != nil {
		t.Fatal(err)
	}
	if second.StepsDone() != 3 {
		t.Fatalf("resumed at step %d, want 3", second.StepsDone())
	}
	steps(second, 3)
	for i, p := range whole.params {
		if !slices.Equal(p.Data, second.params[i].Data) || !slices.Equal(whole.mom[i], second.mom[i]) || !slices.Equal(whole.vel[i], second.vel[i]) {
			t.Errorf("%s differs after the resume", p.Name)
		}
	}
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	if err := whole.SaveCheckpoint(a); err != nil {
		t.Fatal(err)
	}
	if err := second.SaveCheckpoint(b); err != nil {
		t.Fatal(err)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) {
		t.Error("the checkpoints of the uninterrupted and the resumed run differ")
	}
	// The training moved the weights, and the trainer's copy is its own.
	if slices.Equal(whole.params[1].Data, init.Layers[0].AttnNorm) || init.Layers[0].AttnNorm[0] != 1 {
		t.Error("the trainer did not train its own copy of the weights")
	}
	// A checkpoint of another recipe is refused and changes nothing.
	other := cfg
	other.LR = 1e-3
	tr, err := NewLMTrainer(init, other, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.LoadCheckpoint(mid); err == nil || !strings.Contains(err.Error(), "recipe") || tr.StepsDone() != 0 {
		t.Errorf("loading another recipe's checkpoint: %v (step %d)", err, tr.StepsDone())
	}
}

// TestLMScheduleAndClipping checks the learning-rate schedule (linear
// warm-up, cosine to the floor) and that a step reports the gradient's
// global norm and clips it: AdamW's first moment after one step is
// (1-β1)·g·min(1, clip/‖g‖).
func TestLMScheduleAndClipping(t *testing.T) {
	c := LMConfig{LR: 1, MinLR: 0.1, WarmupSteps: 4, Steps: 14}
	for _, tc := range []struct {
		step int
		want float64
	}{{0, 0.25}, {3, 1}, {4, 1}, {9, 0.55}, {14, 0.1}, {100, 0.1}} {
		if got := c.LRAt(tc.step); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("LRAt(%d) = %g, want %g", tc.step, got, tc.want)
		}
	}
	ctx := context.Background()
	for _, clip := range []float64{0, 1e-2} {
		tr, err := NewLMTrainer(tinyLMModel(t), LMConfig{LR: 1e-3, Steps: 10, ClipNorm: clip}, cpu.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b := memoBatch(tr)
		g := cpu.NewLMGrad(tr.m.Config)
		if _, err := tr.ex.LMLossGrad(ctx, b, g, cpu.LMOptions{}); err != nil {
			t.Fatal(err)
		}
		var ss float64
		for _, p := range g.Params() {
			for _, v := range p.Data {
				ss += float64(v) * float64(v)
			}
		}
		st, err := tr.Step(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(st.GradNorm-math.Sqrt(ss)) > 1e-9*st.GradNorm {
			t.Errorf("clip %g: grad norm %g, want %g", clip, st.GradNorm, math.Sqrt(ss))
		}
		scale := 1.0
		if clip > 0 {
			scale = clip / (st.GradNorm + 1e-6)
		}
		for i, p := range g.Params() {
			for k, v := range p.Data {
				want := 0.1 * float64(v) * scale
				if math.Abs(float64(tr.mom[i][k])-want) > 1e-6*math.Abs(want)+1e-12 {
					t.Fatalf("clip %g: %s[%d] first moment %g, want %g", clip, p.Name, k, tr.mom[i][k], want)
				}
			}
		}
	}
}

// TestWriteHFModelLoads writes a trained model as a Hugging Face directory
// and loads it back: the same tensors and the same loss.
func TestWriteHFModelLoads(t *testing.T) {
	tr, err := NewLMTrainer(tinyLMModel(t), LMConfig{LR: 1e-2, Steps: 3}, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := tr.Step(ctx, memoBatch(tr)); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "out")
	if err := WriteHFModel(dir, tr.Model(), []byte(`{"model_type": "llama", "vocab_size": 99}`)); err == nil {
		t.Error("a config.json of another shape was accepted")
	}
	if err := WriteHFModel(dir, tr.Model(), []byte(lmTinyConfig)); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want, got := tr.Model().Tensors(), m.Tensors()
	if len(want) != len(got) {
		t.Fatalf("%d tensors, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Name != want[i].Name || !bytes.Equal(got[i].Data, want[i].Data) {
			t.Errorf("tensor %s differs", want[i].Name)
		}
	}
	b := cpu.LMBatch{Rows: memoSet()}
	l1, _ := tr.Loss(ctx, b)
	l2, err := cpu.New(m, cpu.Options{}).LMLossGrad(ctx, b, nil, cpu.LMOptions{})
	if err != nil || l1 != l2 {
		t.Errorf("loss of the written model %+v (%v), trainer's %+v", l2, err, l1)
	}
}

// TestLMTrainerRefusals checks the errors: a bf16 model, a bad recipe, a
// batch without targets.
func TestLMTrainerRefusals(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	bf, err := model.Load(filepath.Join(td, "models/tiny-llama-bf16"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if _, err := NewLMTrainer(bf, LMConfig{LR: 1e-3, Steps: 1}, cpu.Options{}); err == nil || !strings.Contains(err.Error(), "f32") {
		t.Errorf("bf16 model: %v", err)
	}
	for _, c := range []LMConfig{{}, {LR: 1e-3}, {LR: 1e-3, Steps: 2, WarmupSteps: 3}, {LR: 1e-3, Steps: 2, MinLR: 1}, {LR: 1e-3, Steps: 2, ClipNorm: -1}} {
		if _, err := NewLMTrainer(tinyLMModel(t), c, cpu.Options{}); err == nil {
			t.Errorf("recipe %+v accepted", c)
		}
	}
	tr, err := NewLMTrainer(tinyLMModel(t), LMConfig{LR: 1e-3, Steps: 2}, cpu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Step(context.Background(), cpu.LMBatch{Rows: [][]int32{{5}}}); err == nil || tr.StepsDone() != 0 {
		t.Errorf("a batch without targets: %v, step %d", err, tr.StepsDone())
	}
}
