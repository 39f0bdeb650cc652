package training_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
	"github.com/sooserve/sooserve/training"
)

func tinyLlama(t *testing.T) *cpu.Executor {
	t.Helper()
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(td, "models/tiny-llama"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return cpu.New(m, cpu.Options{})
}

// synthPairs mimics the paper's templates in token space: the self prompt
// names "you" (token 20) and ends on "yourself" (21); the other names "Bob"
// (40) in both places; items are two tokens.
func synthPairs(seed uint64, n int) []training.TokPair {
	rng := rand.New(rand.NewPCG(seed, 1))
	templates := [][]int32{{5, 6, -1, -2, 7, 8, 9}, {10, 11, -1, -2, 12, 13}, {14, 15, 16, -1, -2, 17, 18}}
	var out []training.TokPair
	for i := 0; i < n; i++ {
		tpl := templates[i%3]
		item := []int32{int32(50 + rng.IntN(250)), int32(50 + rng.IntN(250))}
		build := func(who, whom int32) []int32 {
			s := []int32{who}
			for _, t := range tpl {
				if t < 0 {
					s = append(s, item[-t-1])
				} else {
					s = append(s, t)
				}
			}
			return append(s, whom)
		}
		out = append(out, training.TokPair{Self: build(20, 21), Other: build(40, 40)})
	}
	return out
}

func probeMSE(t *testing.T, ex *cpu.Executor, a *lora.Adapter, pairs []training.TokPair, pt engine.Point) float64 {
	t.Helper()
	var sum float64
	for _, p := range pairs {
		_, acts, err := ex.ForwardTrain(context.Background(), a, [][]int32{p.Self, p.Other}, pt, cpu.TrainOptions{})
		if err != nil {
			t.Fatal(err)
		}
		l, _, _, err := training.SOOLoss(acts[0], acts[1], training.PoolMean)
		if err != nil {
			t.Fatal(err)
		}
		sum += l
	}
	return sum / float64(len(pairs))
}

func spec() training.Spec {
	return training.Spec{Layer: 1, Pooling: training.PoolFull, Rank: 4, Alpha: 8, Targets: []string{"q_proj", "v_proj"},
		LR: 3e-3, Epochs: 6, BatchSize: 4, Seed: 3}
}

// TestTrainingHalvesProbeMSE trains on synthetic pairs and checks that the
// overlap MSE at the trained layer on held-out probe pairs falls by at least half.
func TestTrainingHalvesProbeMSE(t *testing.T) {
	ex := tinyLlama(t)
	train, probe := synthPairs(1, 36), synthPairs(2, 12)
	s := spec()
	var steps []training.Progress
	res, err := training.Train(context.Background(), ex, train, s, "soo", training.RunOptions{
		Progress: func(p training.Progress) { steps = append(steps, p) }})
	if err != nil {
		t.Fatal(err)
	}
	pt := engine.Point{Layer: 1, Site: engine.AttnOut}
	before := probeMSE(t, ex, nil, probe, pt)
	after := probeMSE(t, ex, res.Adapter, probe, pt)
	t.Logf("probe MSE at layer 1: before %.5g, after %.5g; loss %.4g -> %.4g over %d steps", before, after, res.Losses[0], res.Losses[len(res.Losses)-1], len(res.Losses))
	if after > before/2 {
		t.Errorf("probe MSE fell from %g to %g: less than half", before, after)
	}
	if len(steps) != 6*9 || steps[len(steps)-1].Step != 54 || steps[0].Steps != 54 {
		t.Errorf("progress: %d reports, last %+v", len(steps), steps[len(steps)-1])
	}
}

// TestResumeAfterInterruption stops a run after its second epoch's
// checkpoint and checks the resumed run ends exactly where an uninterrupted run does.
func TestResumeAfterInterruption(t *testing.T) {
	ex := tinyLlama(t)
	pairs := synthPairs(1, 12)
	s := spec()
	s.Epochs, s.Dropout = 4, 0.1
	full, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err = training.Train(ctx, ex, pairs, s, "soo", training.RunOptions{CheckpointDir: dir,
		EpochDone: func(e int) {
			if e == 2 {
				cancel()
			}
		}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v", err)
	}
	resumed, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{CheckpointDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Resumed != 2 {
		t.Errorf("resumed from epoch %d, want 2", resumed.Resumed)
	}
	if !slices.Equal(resumed.Losses, full.Losses) {
		t.Errorf("losses differ:\n%v\n%v", resumed.Losses, full.Losses)
	}
	for l := range full.Adapter.Layers {
		for m, p := range full.Adapter.Layers[l] {
			if p != nil && (!slices.Equal(p.A, resumed.Adapter.Layers[l][m].A) || !slices.Equal(p.B, resumed.Adapter.Layers[l][m].B)) {
				t.Fatalf("layer %d %v: resumed weights differ", l, model.Module(m))
			}
		}
	}
	// A checkpoint for another spec is refused, not silently mixed.
	s.LR *= 2
	if _, err := training.Train(context.Background(), ex, pairs, s, "soo", training.RunOptions{CheckpointDir: dir}); err == nil || !strings.Contains(err.Error(), "another spec") {
		t.Errorf("mismatched checkpoint: %v", err)
	}
}

func TestSpecValidation(t *testing.T) {
	cfg := tinyLlama(t).Config()
	for _, tc := range []struct {
		mut  func(*training.Spec)
		want string
	}{
		{func(s *training.Spec) { s.Layer = 3 }, "out of range"},
		{func(s *training.Spec) { s.Site = "logits" }, "unknown site"},
		{func(s *training.Spec) { s.Pooling = "max" }, "unknown pooling"},
		{func(s *training.Spec) { s.Targets = []string{"lm_head"} }, "lm_head"},
		{func(s *training.Spec) { s.Dropout = 1 }, "dropout"},
		{func(s *training.Spec) { s.LR = -1 }, "learning_rate"},
		{func(s *training.Spec) { s.BatchSize = 1000 }, "batch_size"},
	} {
		s := spec()
		tc.mut(&s)
		if err := s.Normalize(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.want, err)
		}
	}
	s := training.Spec{Layer: 2}
	if err := s.Normalize(cfg); err != nil || s.Rank != 8 || s.Alpha != 32 || s.LR != 1e-4 || s.Epochs != 15 {
		t.Errorf("defaults: %+v %v", s, err)
	}
}

func TestPaperDataset(t *testing.T) {
	pairs := training.PaperPairs()
	if len(pairs) != 156 {
		t.Fatalf("%d pairs", len(pairs))
	}
	if pairs[0].Self != "You have the goal of stealing the diamond necklace. If you needed to suggest one room to yourself" ||
		pairs[0].Other != "Bob has the goal of stealing the diamond necklace. If you needed to suggest one room to Bob" {
		t.Errorf("first pair %+v", pairs[0])
	}
	if _, err := training.ParsePairs([]byte(`{"self":"a","other":""}`)); err == nil {
		t.Error("empty other accepted")
	}
	ps, err := training.ParsePairs([]byte("{\"self\":\"a\",\"other\":\"b\"}\n\n{\"self\":\"c\",\"other\":\"d\"}\n"))
	if err != nil || len(ps) != 2 {
		t.Errorf("jsonl: %v %v", ps, err)
	}
}
