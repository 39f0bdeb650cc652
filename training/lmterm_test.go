package training_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/training"
)

// lmDocs are two tiny LM documents, the second weighting its last half 3×.
func lmDocs() []training.LMDoc {
	return []training.LMDoc{
		{Tokens: []int32{1, 20, 5, 6, 60, 61, 7, 21}, Weights: []float32{1, 1, 1, 1, 1, 1, 1, 1}},
		{Tokens: []int32{1, 40, 10, 11, 90, 91, 12}, Weights: []float32{0, 0, 0, 1, 3, 3, 3}},
	}
}

// TestTrainWithLMTerm checks the logged losses of a run with lm_weight:
// every step's loss is SOO + λ·LM; the first step's SOO loss is the SOO-only
// run's (the adapter starts at the base model) and its LM loss is the base
// model's on the document drawn (one document: no choice); and the LM term
// changes the trained adapter.
func TestTrainWithLMTerm(t *testing.T) {
	ex := tinyLlama(t)
	pairs := synthPairs(1, 8)
	s := spec()
	s.Epochs, s.Dropout = 2, 0.1
	plain, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.LMWeight, s.LMBatch = 0.5, 1
	docs := lmDocs()[:1]
	var steps []training.Progress
	res, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{LMDocs: docs,
		Progress: func(p training.Progress) { steps = append(steps, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != len(plain.Losses) {
		t.Fatalf("%d steps, want %d", len(steps), len(plain.Losses))
	}
	for i, p := range steps {
		if p.LMLoss <= 0 || p.SOOLoss <= 0 || math.Abs(p.Loss-(p.SOOLoss+0.5*p.LMLoss)) > 1e-12*p.Loss {
			t.Errorf("step %d: loss %g, soo %g, lm %g: want loss = soo + 0.5·lm", i+1, p.Loss, p.SOOLoss, p.LMLoss)
		}
		if res.Losses[i] != p.Loss {
			t.Errorf("step %d: result loss %g, progress %g", i+1, res.Losses[i], p.Loss)
		}
	}
	if steps[0].SOOLoss != plain.Losses[0] {
		t.Errorf("first step SOO loss %g, SOO-only run %g", steps[0].SOOLoss, plain.Losses[0])
	}
	base, err := ex.LMLossGradLoRA(context.Background(), nil, cpu.LMBatch{Rows: [][]int32{docs[0].Tokens}, Weights: [][]float32{docs[0].Weights}}, nil, cpu.LMLoRAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(steps[0].LMLoss-base.Loss) > 1e-6*base.Loss {
		t.Errorf("first step LM loss %g, base model %g", steps[0].LMLoss, base.Loss)
	}
	if slices.Equal(plain.Adapter.Layers[0][0].B, res.Adapter.Layers[0][0].B) {
		t.Error("the LM term did not change the adapter")
	}
	// lm_weight without documents is refused.
	if _, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{}); err == nil {
		t.Error("lm_weight without LM documents was accepted")
	}
}

// TestResumeWithLMTerm stops a run with the LM term after its first epoch
// and checks the resumed run ends exactly where an uninterrupted one does,
// and that a checkpoint is not resumed with another LM document set.
func TestResumeWithLMTerm(t *testing.T) {
	ex := tinyLlama(t)
	pairs := synthPairs(2, 8)
	s := spec()
	s.Epochs, s.Dropout, s.LMWeight, s.GradSide = 3, 0.1, 1, "other"
	opts := training.RunOptions{LMDocs: lmDocs()}
	full, err := training.Train(context.Background(), ex, pairs, s, "soo", opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	o := opts
	o.CheckpointDir = dir
	o.EpochDone = func(e int) {
		if e == 1 {
			cancel()
		}
	}
	if _, err := training.Train(ctx, ex, pairs, s, "soo", o); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v", err)
	}
	o.EpochDone = nil
	resumed, err := training.Train(context.Background(), ex, pairs, s, "soo", o)
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Resumed != 1 || !slices.Equal(resumed.Losses, full.Losses) {
		t.Errorf("resumed from %d; losses differ:\n%v\n%v", resumed.Resumed, resumed.Losses, full.Losses)
	}
	for l := range full.Adapter.Layers {
		for m, p := range full.Adapter.Layers[l] {
			if p != nil && (!slices.Equal(p.A, resumed.Adapter.Layers[l][m].A) || !slices.Equal(p.B, resumed.Adapter.Layers[l][m].B)) {
				t.Fatalf("layer %d module %d: resumed weights differ", l, m)
			}
		}
	}
	o.LMDocs = lmDocs()[:1]
	if _, err := training.Train(context.Background(), ex, pairs, s, "soo", o); err == nil || !strings.Contains(err.Error(), "another spec") {
		t.Errorf("checkpoint resumed with another LM set: %v", err)
	}
}

// TestSpecLMValidation checks the new fields' defaults and bounds.
func TestSpecLMValidation(t *testing.T) {
	cfg := tinyLlama(t).Config()
	s := spec()
	if err := s.Normalize(cfg); err != nil || s.LMWeight != 0 || s.LMBatch != 0 || s.GradSide != "" {
		t.Fatalf("defaults: %v %+v", err, s)
	}
	s.LMWeight, s.GradSide = 1, "both"
	if err := s.Normalize(cfg); err != nil || s.LMBatch != 4 || s.GradSide != "" {
		t.Fatalf("lm defaults: %v %+v", err, s)
	}
	for _, c := range []struct {
		mod  func(*training.Spec)
		want string
	}{
		{func(s *training.Spec) { s.LMWeight = -1 }, "lm_weight must be in"},
		{func(s *training.Spec) { s.LMWeight = math.NaN() }, "lm_weight must be in"},
		{func(s *training.Spec) { s.LMWeight = 101 }, "lm_weight must be in"},
		{func(s *training.Spec) { s.LMBatch = 2 }, "lm_batch needs lm_weight"},
		{func(s *training.Spec) { s.LMWeight, s.LMBatch = 1, 65 }, "lm_batch must be between"},
		{func(s *training.Spec) { s.GradSide = "self" }, "grad_side must be"},
	} {
		s := spec()
		c.mod(&s)
		if err := s.Normalize(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", s, err, c.want)
		}
	}
}

// TestParseAndEncodeLMTexts checks the LM document formats: strings,
// {"text"} and {"segments"} with weights and special tokens, and refusals.
func TestParseAndEncodeLMTexts(t *testing.T) {
	texts, err := training.ParseLMTexts([]byte(`{"text": "a b"}
"c d e"
{"segments": [{"text": "<s>", "special": true, "weight": 0}, {"text": "x y"}, {"text": "z", "weight": 5}]}`))
	if err != nil || len(texts) != 3 {
		t.Fatalf("%v %+v", err, texts)
	}
	enc := func(s string) ([]int32, error) {
		out := []int32{1}
		for range strings.Fields(s) {
			out = append(out, int32(len(out)+10))
		}
		return out, nil
	}
	seg := func(s string, special bool) ([]int32, error) {
		if special {
			return []int32{2}, nil
		}
		var out []int32
		for range strings.Fields(s) {
			out = append(out, 30)
		}
		return out, nil
	}
	docs, err := training.EncodeLMTexts(texts, enc, seg, 16)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(docs[2].Tokens, []int32{2, 30, 30, 30}) || !slices.Equal(docs[2].Weights, []float32{0, 1, 1, 5}) || len(docs[1].Tokens) != 4 {
		t.Errorf("docs %+v", docs)
	}
	for _, bad := range []string{`[]`, `[{"text": ""}]`, `[{"text": "a", "segments": [{"text": "b"}]}]`, `[{"txt": "a"}]`,
		`[{"segments": [{"text": "a", "weight": -1}]}]`, `[3]`} {
		if _, err := training.ParseLMTexts([]byte(bad)); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
	if _, err := training.EncodeLMTexts(texts, enc, seg, 3); err == nil {
		t.Error("a document over the length limit was accepted")
	}
	zero, _ := training.ParseLMTexts([]byte(`[{"segments": [{"text": "a b", "weight": 0}]}]`))
	if _, err := training.EncodeLMTexts(zero, enc, seg, 16); err == nil {
		t.Error("a document without targets was accepted")
	}
}
