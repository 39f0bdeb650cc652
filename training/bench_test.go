package training

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/synth"
)

// BenchmarkSOOStep times one SOO optimiser step as DESIGN.md §7 states it:
// the SmolLM2-135M shape, layers 0..15 (the capture point is layer 15's
// attn_out, so nothing above it runs), one pair of 64-token prompts, LoRA
// rank 8 on q/k/v/o, full pooling, AdamW. Compare with
// scripts/bench/torch_soo_step.py run on the same machine (which also
// times steps after a warm-up).
func BenchmarkSOOStep(b *testing.B) {
	m, err := synth.Model("smollm2-135m", model.F32, 1)
	if err != nil {
		b.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{})
	spec := Spec{Layer: 15, Site: "attn_out", Pooling: PoolFull, Rank: 8, Alpha: 16,
		Targets: []string{"q_proj", "k_proj", "v_proj", "o_proj"}, LR: 1e-4, Epochs: 1, BatchSize: 1, Seed: 1}
	if err := spec.Normalize(m.Config); err != nil {
		b.Fatal(err)
	}
	a := NewAdapter(m.Config, &spec, "bench")
	for _, p := range a.Layers { // non-zero B so every path carries gradient
		for _, pr := range p {
			if pr != nil {
				for i := range pr.B {
					pr.B[i] = 0.01
				}
			}
		}
	}
	opt := NewAdamW(a, spec.LR, 0)
	rng := rand.New(rand.NewPCG(1, 1))
	pair := TokPair{Self: make([]int32, 64), Other: make([]int32, 64)}
	for i := range pair.Self {
		pair.Self[i] = int32(rng.IntN(m.Config.VocabSize))
		pair.Other[i] = int32(rng.IntN(m.Config.VocabSize))
	}
	pt := engine.Point{Layer: spec.Layer, Site: engine.AttnOut}
	ctx := context.Background()
	var bufs stepBuffers
	// One step outside the timer: it builds the executor's cached weight
	// transposes, a one-off cost that a training run pays once.
	if _, _, err := trainStep(ctx, ex, &bufs, a, opt, []TokPair{pair}, []int{0}, pt, spec, 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := trainStep(ctx, ex, &bufs, a, opt, []TokPair{pair}, []int{0}, pt, spec, uint64(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N), "s/step")
}
