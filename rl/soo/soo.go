// Package soo applies Self-Other Overlap to the blue agent of the Physical
// Deception environment (PAPER.md §8.3).
//
// A self observation is a real blue observation with red out of sight
// (obs[6:8] == 0). Its other observation is the same vector with a
// fictitious red inserted at a uniform angle and a uniform distance within
// the sight radius (obs[6:8] = blue − fake red, following the reference
// code's sign) and the trapped flags obs[8:10] zeroed. The activations are
// the concatenated post-activation hidden layers [h1, h2] of the policy.
package soo

import (
	"math"
	"math/rand/v2"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/maddpg"
	"github.com/sooserve/sooserve/rl/nn"
)

// Radii of the fictitious red agent: the training code uses 2.5·0.05, the
// evaluation code 2·0.05 (PAPER.md §8.3).
const (
	TrainRadius = 2.5 * 0.05
	EvalRadius  = 2 * 0.05
)

// IsSelf reports whether a blue observation has no other agent in sight.
func IsSelf(obs []float64) bool { return obs[6] == 0 && obs[7] == 0 }

// Other returns the other-observation of a self observation: a fictitious red
// at uniform angle and uniform distance in [0, radius], obs[8:10] zeroed.
func Other(self []float64, radius float64, rng *rand.Rand) []float64 {
	o := append([]float64(nil), self...)
	ang := 2 * math.Pi * rng.Float64()
	d := radius * rng.Float64()
	// blue_pos − fake_red_pos = −offset.
	o[6], o[7] = -d*math.Cos(ang), -d*math.Sin(ang)
	o[8], o[9] = 0, 0
	return o
}

// Activations returns the n×(2·Hidden) matrix [h1, h2] of a deterministic
// forward pass, and the cache of that pass.
func Activations(p *nn.MLP, x []float64, n int) ([]float64, *nn.Cache) {
	var c nn.Cache
	p.Forward(x, n, &c)
	h := p.Hidden
	a := make([]float64, n*2*h)
	for r := 0; r < n; r++ {
		copy(a[r*2*h:], c.H1[r*h:(r+1)*h])
		copy(a[r*2*h+h:], c.H2[r*h:(r+1)*h])
	}
	return a, &c
}

// Value is the SOO value log(mean((A_self − A_other)²) + 1e-25) over a batch
// of n self/other pairs: a log-distance, lower means more overlap.
func Value(p *nn.MLP, self, other []float64, n int) float64 {
	as, _ := Activations(p, self, n)
	ao, _ := Activations(p, other, n)
	return math.Log(mse(as, ao) + 1e-25)
}

func mse(a, b []float64) float64 {
	var s float64
	for i := range a {
		d := a[i] - b[i]
		s += d * d
	}
	return s / float64(len(a))
}

// Tuning are the settings of SOO fine-tuning.
//
// The loss on a batch of self observations o and their other observations o' is
//
//	L = SOOWeight · MSE([h1,h2](o), [h1,h2](o')) + CapWeight · MSE(π(o), π_base(o))
//
// with gradients through both passes. PAPER.md §1.3/§8.3 give the two terms
// with unit weights; the weighting is NOT FOUND in the sources, so both are
// exposed (defaults 1 and 1). π_base is the frozen deceptive baseline.
type Tuning struct {
	SOOWeight float64
	CapWeight float64
	Batch     int     // self observations per SOO step
	Steps     int     // SOO steps after each MADDPG update round
	Radius    float64 // radius of the fictitious red (TrainRadius)
	// SOOOnly drops blue's own MADDPG update during fine-tuning, so blue
	// changes only through the SOO loss (an ablation; the paper's recipe
	// keeps training with the environment reward: false).
	SOOOnly bool
}

// DefaultTuning returns unit weights, batch 1024, one step per round.
func DefaultTuning() Tuning {
	return Tuning{SOOWeight: 1, CapWeight: 1, Batch: 1024, Steps: 1, Radius: TrainRadius}
}

// StepStats reports one SOO step.
type StepStats struct {
	SelfRows     int
	SOOMSE       float64 // MSE(A_self, A_other) before the step
	CapabilityMS float64 // MSE(π(o), π_base(o)) before the step
}

// Step applies one SOO gradient step to policy (with its optimizer opt,
// gradient clipping at clip) on self observations selfObs (n rows of
// env.BlueObsDim), with base the frozen baseline policy.
func (t Tuning) Step(policy, base *nn.MLP, opt *nn.Adam, clip float64, selfObs []float64, n int, rng *rand.Rand) StepStats {
	d := env.BlueObsDim
	other := make([]float64, n*d)
	for r := 0; r < n; r++ {
		copy(other[r*d:], Other(selfObs[r*d:(r+1)*d], t.Radius, rng))
	}
	_, g, st := t.LossGrad(policy, base, selfObs, other, n)
	nn.ClipGradNorm(g, clip)
	opt.Step(policy.Params, g)
	return st
}

// SelfRows samples up to n blue self observations from the replay buffer
// (rejection sampling over stored rows) and returns them with their count.
func SelfRows(buf *maddpg.Buffer, n int, rng *rand.Rand) ([]float64, int) {
	rows := buf.ObsRows(env.Blue)
	d := env.BlueObsDim
	total := len(rows) / d
	out := make([]float64, 0, n*d)
	for tries := 0; tries < 20*n && len(out) < n*d && total > 0; tries++ {
		r := rows[rng.IntN(total)*d:][:d]
		if IsSelf(r) {
			out = append(out, r...)
		}
	}
	return out, len(out) / d
}

// Hooks returns MADDPG training hooks that add t.Steps SOO steps to the blue
// agent after every update round (PAPER.md §8.2: fine-tuning continues the
// deceptive run with --self_other). base must be a frozen copy of the
// deceptive baseline policy. onStep, if non-nil, sees each step's stats.
func (t Tuning) Hooks(base *nn.MLP, onStep func(StepStats)) maddpg.Hooks {
	return maddpg.Hooks{
		AfterUpdate: func(m *maddpg.MADDPG, buf *maddpg.Buffer, rng *rand.Rand) error {
			blue := m.Agents[env.Blue]
			for s := 0; s < t.Steps; s++ {
				x, n := SelfRows(buf, t.Batch, rng)
				if n == 0 {
					return nil
				}
				st := t.Step(blue.Policy, base, blue.PolicyOpt, m.ClipNorm, x, n, rng)
				if onStep != nil {
					onStep(st)
				}
			}
			return nil
		},
		SkipUpdate: func(agent int) bool { return t.SOOOnly && agent == env.Blue },
	}
}

// LossGrad returns the fine-tuning loss on n self/other observation pairs,
// its gradient with respect to policy.Params, and the two loss terms.
func (t Tuning) LossGrad(policy, base *nn.MLP, selfObs, other []float64, n int) (float64, []float64, StepStats) {
	h := policy.Hidden
	as, cs := Activations(policy, selfObs, n)
	ao, co := Activations(policy, other, n)
	yb := base.Forward(selfObs, n, nil)
	st := StepStats{SelfRows: n, SOOMSE: mse(as, ao), CapabilityMS: mse(cs.Y, yb)}
	scale := 2 * t.SOOWeight / float64(len(as))
	dh1s, dh2s := make([]float64, n*h), make([]float64, n*h)
	dh1o, dh2o := make([]float64, n*h), make([]float64, n*h)
	for r := 0; r < n; r++ {
		for k := 0; k < 2*h; k++ {
			g := scale * (as[r*2*h+k] - ao[r*2*h+k])
			if k < h {
				dh1s[r*h+k], dh1o[r*h+k] = g, -g
			} else {
				dh2s[r*h+k-h], dh2o[r*h+k-h] = g, -g
			}
		}
	}
	dy := make([]float64, len(cs.Y))
	for i := range dy {
		dy[i] = 2 * t.CapWeight * (cs.Y[i] - yb[i]) / float64(len(dy))
	}
	g := make([]float64, len(policy.Params))
	policy.Backward(cs, dy, dh1s, dh2s, g, nil)
	policy.Backward(co, make([]float64, len(co.Y)), dh1o, dh2o, g, nil)
	return t.SOOWeight*st.SOOMSE + t.CapWeight*st.CapabilityMS, g, st
}
