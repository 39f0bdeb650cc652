package maddpg

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/rl/env"
)

func TestNoiseScaleLinearDecay(t *testing.T) {
	cases := []struct {
		ep   int
		want float64
	}{{0, 0.3}, {50, 0.15}, {100, 0}, {150, 0}}
	for _, c := range cases {
		if got := NoiseScale(c.ep, 100, 0.3, 0); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("NoiseScale(%d) = %v, want %v", c.ep, got, c.want)
		}
	}
}

func TestOUNoise(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	n := NewOUNoise(2, 0.3)
	// Stationary SD of x is σ/sqrt(1−(1−θ)²) ≈ 0.2/sqrt(0.2775) ≈ 0.38.
	var ss float64
	const steps = 200000
	for i := 0; i < steps; i++ {
		s := n.Sample(rng)
		if math.Abs(s[0]-0.3*n.X[0]) > 1e-15 {
			t.Fatal("sample is not Scale·state")
		}
		ss += n.X[0] * n.X[0]
	}
	sd := math.Sqrt(ss / steps)
	if want := 0.2 / math.Sqrt(1-0.85*0.85); math.Abs(sd-want) > 0.02 {
		t.Fatalf("stationary SD %v, want %v", sd, want)
	}
	n.Reset()
	if n.X[0] != 0 || n.X[1] != 0 {
		t.Fatal("Reset did not return to μ")
	}
	n.Scale = 0
	if s := n.Sample(rng); s[0] != 0 || s[1] != 0 {
		t.Fatal("zero scale gave noise")
	}
}

func TestBuffer(t *testing.T) {
	b := NewBuffer(3, []int{1, 2}, 1)
	for i := 0; i < 5; i++ {
		f := float64(i)
		b.Push([][]float64{{f}, {f, -f}}, [][]float64{{f / 10}, {-f / 10}}, []float64{f, 2 * f}, [][]float64{{f + 1}, {f + 1, -f - 1}}, false)
	}
	if b.Len() != 3 {
		t.Fatalf("Len %d, want capacity 3", b.Len())
	}
	rng := rand.New(rand.NewPCG(2, 2))
	bt := b.Sample(3, rng, false)
	seen := map[float64]bool{}
	for k := 0; k < bt.N; k++ {
		o := bt.Obs[0][k]
		seen[o] = true
		// Rows stay aligned across fields and agents.
		if bt.Next[0][k] != o+1 || bt.Obs[1][2*k] != o || bt.Obs[1][2*k+1] != -o || bt.Act[0][k] != o/10 || bt.Rew[1][k] != 2*o {
			t.Fatalf("row %d misaligned: %+v", k, bt)
		}
	}
	// Oldest two were overwritten; sampling is without replacement.
	if len(seen) != 3 || !seen[2] || !seen[3] || !seen[4] {
		t.Fatalf("sampled %v, want {2,3,4}", seen)
	}
	// Reward standardisation by the buffer's mean and population SD.
	bt = b.Sample(3, rng, true)
	m, sd := 3.0, math.Sqrt(2.0/3)
	for k := 0; k < 3; k++ {
		if want := (bt.Obs[0][k] - m) / sd; math.Abs(bt.Rew[0][k]-want) > 1e-12 {
			t.Fatalf("normalised reward %v, want %v", bt.Rew[0][k], want)
		}
	}
}

func TestUpdateTargets(t *testing.T) {
	m := New([]int{env.RedObsDim, env.BlueObsDim}, env.ActDim, DefaultHyper(), rand.New(rand.NewPCG(1, 2)))
	a := m.Agents[1]
	old := append([]float64(nil), a.TargetCritic.Params...)
	for i := range a.Critic.Params {
		a.Critic.Params[i] += 1
	}
	m.UpdateTargets()
	for i, v := range a.TargetCritic.Params {
		if math.Abs(v-(old[i]+0.01)) > 1e-12 {
			t.Fatalf("target param %d moved by %v, want τ = 0.01", i, v-old[i])
		}
	}
}

// TestCriticLearnsRewardWithoutBootstrap: with γ = 0 the critic regresses
// onto the immediate reward, so its loss must fall.
func TestCriticLearnsRewardWithoutBootstrap(t *testing.T) {
	h := DefaultHyper()
	h.Gamma = 0
	h.LR = 0.003
	m := New([]int{env.RedObsDim, env.BlueObsDim}, env.ActDim, h, rand.New(rand.NewPCG(5, 6)))
	rng := rand.New(rand.NewPCG(7, 8))
	buf := NewBuffer(10000, []int{env.RedObsDim, env.BlueObsDim}, env.ActDim)
	e := env.New(env.Honest, 3)
	for ep := 0; ep < 40; ep++ {
		obs := e.Reset()
		for s := 0; s < 50; s++ {
			act := [2][]float64{{rng.Float64()*2 - 1, rng.Float64()*2 - 1}, {rng.Float64()*2 - 1, rng.Float64()*2 - 1}}
			next, rew := e.Step(act)
			buf.Push(obs[:], act[:], rew[:], next[:], false)
			obs = next
		}
	}
	var first, last float64
	for it := 0; it < 300; it++ {
		st := m.Update(0, buf.Sample(128, rng, true))
		if it < 20 {
			first += st.CriticLoss / 20
		}
		if it >= 280 {
			last += st.CriticLoss / 20
		}
	}
	if !(last < 0.6*first) {
		t.Fatalf("critic loss %v → %v, want a clear decrease", first, last)
	}
}

// TestTrainShowsLearning is the CI training run: a few hundred short
// episodes with a fixed seed. Red learns to stay with blue (+1 per step in
// sight), so the mean joint return over the last episodes must clearly beat
// the first ones.
func TestTrainShowsLearning(t *testing.T) {
	cfg := tinyConfig(env.Honest, 11)
	r := NewRun(cfg)
	if err := r.Train(context.Background(), Hooks{}); err != nil {
		t.Fatal(err)
	}
	k := 50
	mean := func(rs [][2]float64) float64 {
		var s float64
		for _, x := range rs {
			s += x[0] + x[1]
		}
		return s / float64(len(rs))
	}
	first, last := mean(r.Returns[:k]), mean(r.Returns[len(r.Returns)-k:])
	t.Logf("mean joint return: first %d episodes %.2f, last %d %.2f (%d update rounds)", k, first, k, last, r.Updates)
	if !(last > first+2 && last > 1.5*first) {
		t.Fatalf("no learning: first %.2f last %.2f", first, last)
	}
	// Save/Load round trip keeps the policy.
	path := filepath.Join(t.TempDir(), "ck.json")
	if err := r.Save(path, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	r2, meta, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if meta["k"] != "v" || r2.Config != r.Config || len(r2.Returns) != len(r.Returns) {
		t.Fatal("checkpoint lost metadata, config or history")
	}
	o := make([]float64, env.BlueObsDim)
	o[0] = 0.3
	a, b := r.Model.Act(1, o), r2.Model.Act(1, o)
	if a[0] != b[0] || a[1] != b[1] {
		t.Fatalf("loaded policy acts %v, saved %v", b, a)
	}
}

func tinyConfig(v env.Variant, seed uint64) Config {
	cfg := PaperConfig(v, seed)
	cfg.Episodes = 300
	cfg.EpisodeLen = 25
	cfg.ExplorationEps = 200
	cfg.Batch = 128
	cfg.StepsPerUpdate = 25
	return cfg
}

// TestLossGradientsFiniteDifferences checks the critic and policy losses'
// gradients (through the centralized critic's action input, with both
// placements of the L2 penalty) by central differences.
func TestLossGradientsFiniteDifferences(t *testing.T) {
	for _, pre := range []bool{false, true} {
		h := DefaultHyper()
		h.Hidden = 6
		h.RegPreTanh = pre
		h.PolicyReg = 0.3 // large enough to matter in the check
		rng := rand.New(rand.NewPCG(9, 9))
		m := New([]int{3, 4}, 2, h, rng)
		for _, a := range m.Agents {
			for i := range a.Policy.Params {
				a.Policy.Params[i] = rng.NormFloat64() * 0.6
			}
			a.TargetCritic.Params[0] += 0.1
		}
		b := &Batch{N: 5, Done: make([]float64, 5)}
		for a, od := range []int{3, 4} {
			b.Obs = append(b.Obs, randSlice(rng, 5*od))
			b.Next = append(b.Next, randSlice(rng, 5*od))
			b.Act = append(b.Act, randSlice(rng, 10))
			b.Rew = append(b.Rew, randSlice(rng, 5))
			_ = a
		}
		b.Done[2] = 1
		for i := range m.Agents {
			for _, which := range []string{"critic", "policy"} {
				var p []float64
				f := func() (float64, []float64) { return m.CriticLossGrad(i, b) }
				if which == "critic" {
					p = m.Agents[i].Critic.Params
				} else {
					p = m.Agents[i].Policy.Params
					f = func() (float64, []float64) { return m.PolicyLossGrad(i, b) }
				}
				_, g := f()
				const eps = 1e-6
				for k := range p {
					old := p[k]
					p[k] = old + eps
					lp, _ := f()
					p[k] = old - eps
					lm, _ := f()
					p[k] = old
					num := (lp - lm) / (2 * eps)
					if math.Abs(num-g[k]) > 1e-6*math.Max(1, math.Abs(num)) {
						t.Fatalf("pre=%v agent %d %s param %d: analytic %.9g numeric %.9g", pre, i, which, k, g[k], num)
					}
				}
			}
		}
	}
}

func randSlice(rng *rand.Rand, n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = rng.Float64()*2 - 1
	}
	return s
}
