package maddpg

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/sooserve/sooserve/rl/env"
)

// Config is a training run. PaperConfig gives PAPER.md §8.2's values.
type Config struct {
	Variant        env.Variant
	Seed           uint64
	Episodes       int
	EpisodeLen     int
	Batch          int
	BufferSize     int
	StepsPerUpdate int
	ExplorationEps int     // episodes over which the OU scale decays linearly
	NoiseInit      float64 // OU scale at episode 0
	NoiseFinal     float64 // OU scale after ExplorationEps
	NormRewards    bool    // standardise sampled rewards (MADDPG-PyTorch default)
	Hyper          Hyper
}

// PaperConfig returns the settings of the paper's baselines: 40k episodes of
// 50 steps, batch 1024, buffer 1e6, an update round every 100 steps, noise
// 0.3→0 over 25k episodes.
func PaperConfig(v env.Variant, seed uint64) Config {
	return Config{Variant: v, Seed: seed, Episodes: 40000, EpisodeLen: 50, Batch: 1024, BufferSize: 1_000_000,
		StepsPerUpdate: 100, ExplorationEps: 25000, NoiseInit: 0.3, NoiseFinal: 0, NormRewards: true, Hyper: DefaultHyper()}
}

// Validate reports a configuration that cannot run.
func (c *Config) Validate() error {
	switch {
	case c.Episodes < 0, c.EpisodeLen <= 0, c.Batch <= 0, c.BufferSize <= 0, c.StepsPerUpdate <= 0:
		return fmt.Errorf("maddpg: config needs episodes ≥ 0 and positive episode length, batch, buffer and steps per update: %+v", *c)
	case c.Hyper.Hidden <= 0 || c.Hyper.LR <= 0:
		return fmt.Errorf("maddpg: config needs positive hidden width and learning rate")
	}
	return nil
}

// Hooks customise a training run. Every field is optional.
type Hooks struct {
	// AfterUpdate runs after each update round (all agents and targets).
	AfterUpdate func(m *MADDPG, buf *Buffer, rng *rand.Rand) error
	// Episode runs after each episode with its index and per-agent returns.
	Episode func(ep int, ret [2]float64)
	// SkipPolicyUpdate, if set, excludes that agent's MADDPG update
	// (its critic and policy steps); used by SOO-only fine-tuning.
	SkipUpdate func(agent int) bool
}

// Run is a model with its training history.
type Run struct {
	Config  Config
	Model   *MADDPG
	Returns [][2]float64 // per-episode returns [red, blue]
	Updates int          // update rounds done
}

// NewRun creates a fresh model for cfg.
func NewRun(cfg Config) *Run {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x4dadd9))
	return &Run{Config: cfg, Model: New([]int{env.RedObsDim, env.BlueObsDim}, env.ActDim, cfg.Hyper, rng)}
}

// Train runs cfg.Episodes episodes of MADDPG training on r.Model (which may
// be freshly created or loaded), following train.py: one OU process per
// agent reset and rescaled every episode, transitions pushed each step, and
// an update round (each agent once, then the targets) every StepsPerUpdate
// steps once the buffer holds a batch. The environment, noise, sampling and
// network initialisation are all seeded from cfg.Seed.
func (r *Run) Train(ctx context.Context, h Hooks) error {
	cfg := r.Config
	if err := cfg.Validate(); err != nil {
		return err
	}
	m := r.Model
	e := env.New(cfg.Variant, cfg.Seed)
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x7a1e))
	buf := NewBuffer(cfg.BufferSize, []int{env.RedObsDim, env.BlueObsDim}, env.ActDim)
	noise := []*OUNoise{NewOUNoise(env.ActDim, cfg.NoiseInit), NewOUNoise(env.ActDim, cfg.NoiseInit)}
	t := 0
	for ep := 0; ep < cfg.Episodes; ep++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("maddpg: training interrupted at episode %d: %w", ep, err)
		}
		obs := e.Reset()
		sc := NoiseScale(ep, cfg.ExplorationEps, cfg.NoiseInit, cfg.NoiseFinal)
		for _, n := range noise {
			n.Scale = sc
			n.Reset()
		}
		var ret [2]float64
		for step := 0; step < cfg.EpisodeLen; step++ {
			var act [2][]float64
			for i := range act {
				a := m.Act(i, obs[i])
				for k, v := range noise[i].Sample(rng) {
					a[k] = min(1, max(-1, a[k]+v))
				}
				act[i] = a
			}
			next, rew := e.Step(act)
			buf.Push(obs[:], act[:], rew[:], next[:], false)
			ret[0] += rew[0]
			ret[1] += rew[1]
			obs = next
			t++
			if buf.Len() >= cfg.Batch && t%cfg.StepsPerUpdate == 0 {
				for i := range m.Agents {
					if h.SkipUpdate != nil && h.SkipUpdate(i) {
						continue
					}
					m.Update(i, buf.Sample(cfg.Batch, rng, cfg.NormRewards))
				}
				m.UpdateTargets()
				r.Updates++
				if h.AfterUpdate != nil {
					if err := h.AfterUpdate(m, buf, rng); err != nil {
						return fmt.Errorf("maddpg: episode %d: %w", ep, err)
					}
				}
			}
		}
		r.Returns = append(r.Returns, ret)
		if h.Episode != nil {
			h.Episode(ep, ret)
		}
	}
	return nil
}
