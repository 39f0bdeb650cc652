package maddpg

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/rl/env"
)

// BenchmarkUpdateRound measures one update round (both agents, batch 1024,
// then the target updates) on a buffer filled by random play.
func BenchmarkUpdateRound(b *testing.B) {
	cfg := PaperConfig(env.Deceptive, 1)
	cfg.Episodes = 25
	r := NewRun(cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	buf := NewBuffer(cfg.BufferSize, []int{env.RedObsDim, env.BlueObsDim}, env.ActDim)
	e := env.New(env.Deceptive, 1)
	for ep := 0; ep < 25; ep++ {
		obs := e.Reset()
		for s := 0; s < 50; s++ {
			act := [2][]float64{{rng.Float64()*2 - 1, rng.Float64()*2 - 1}, {rng.Float64()*2 - 1, rng.Float64()*2 - 1}}
			next, rew := e.Step(act)
			buf.Push(obs[:], act[:], rew[:], next[:], false)
			obs = next
		}
	}
	_ = context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for a := range r.Model.Agents {
			r.Model.Update(a, buf.Sample(cfg.Batch, rng, true))
		}
		r.Model.UpdateTargets()
	}
}
