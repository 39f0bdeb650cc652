package soo

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/nn"
)

func selfObs() []float64 { return []float64{0.2, -0.1, 0.2, -0.1, -0.4, 0.3, 0, 0, 1, 1} }

func TestOtherObservation(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	s := selfObs()
	if !IsSelf(s) {
		t.Fatal("self observation not recognised")
	}
	for i := 0; i < 1000; i++ {
		o := Other(s, EvalRadius, rng)
		if d := math.Hypot(o[6], o[7]); d > EvalRadius {
			t.Fatalf("fictitious red at %v > radius", d)
		}
		if o[8] != 0 || o[9] != 0 {
			t.Fatal("trapped flags not zeroed in the other observation")
		}
		for k := 0; k < 6; k++ {
			if o[k] != s[k] {
				t.Fatal("landmark part changed")
			}
		}
	}
	if s[8] != 1 || s[6] != 0 {
		t.Fatal("Other modified its input")
	}
	if IsSelf([]float64{0, 0, 0, 0, 0, 0, 0.05, 0, 0, 0}) {
		t.Fatal("observation with red in sight counted as self")
	}
}

func TestValueIdenticalInputs(t *testing.T) {
	p := nn.NewMLP(env.BlueObsDim, 64, 2, true, rand.New(rand.NewPCG(2, 2)))
	s := selfObs()
	if v := Value(p, s, s, 1); v > -57 { // log(1e-25) ≈ −57.6
		t.Fatalf("SOO value of identical inputs %v, want log(1e-25)", v)
	}
	o := Other(s, TrainRadius, rand.New(rand.NewPCG(3, 3)))
	if v := Value(p, s, o, 1); v < -20 {
		t.Fatalf("SOO value of different inputs %v", v)
	}
}

// TestLossGradFiniteDifferences checks the SOO + capability gradient.
func TestLossGradFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	p := nn.NewMLP(env.BlueObsDim, 8, 2, true, rng)
	for i := range p.Params {
		p.Params[i] = rng.NormFloat64() * 0.5
	}
	base := p.Clone()
	for i := range base.Params {
		base.Params[i] += rng.NormFloat64() * 0.1
	}
	n := 3
	self := make([]float64, n*env.BlueObsDim)
	other := make([]float64, n*env.BlueObsDim)
	for r := 0; r < n; r++ {
		s := selfObs()
		s[0] += float64(r) * 0.1
		copy(self[r*env.BlueObsDim:], s)
		copy(other[r*env.BlueObsDim:], Other(s, TrainRadius, rng))
	}
	tn := Tuning{SOOWeight: 1.3, CapWeight: 0.7}
	_, g, _ := tn.LossGrad(p, base, self, other, n)
	const h = 1e-6
	for i := range p.Params {
		old := p.Params[i]
		p.Params[i] = old + h
		lp, _, _ := tn.LossGrad(p, base, self, other, n)
		p.Params[i] = old - h
		lm, _, _ := tn.LossGrad(p, base, self, other, n)
		p.Params[i] = old
		num := (lp - lm) / (2 * h)
		if math.Abs(num-g[i]) > 1e-6*math.Max(1, math.Abs(num)) {
			t.Fatalf("param %d: analytic %.9g numeric %.9g", i, g[i], num)
		}
	}
}

// TestStepsReduceOverlapDistance: repeated SOO steps shrink MSE(A_self,
// A_other) while the capability term keeps actions near the baseline.
func TestStepsReduceOverlapDistance(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	p := nn.NewMLP(env.BlueObsDim, 64, 2, true, rng)
	base := p.Clone()
	opt := nn.NewAdam(len(p.Params), 1e-3)
	n := 64
	x := make([]float64, n*env.BlueObsDim)
	for r := 0; r < n; r++ {
		s := selfObs()
		for k := 0; k < 6; k++ {
			s[k] = rng.Float64()*2 - 1
		}
		copy(x[r*env.BlueObsDim:], s)
	}
	tn := DefaultTuning()
	first := tn.Step(p, base, opt, 0.5, x, n, rng)
	var last StepStats
	for i := 0; i < 200; i++ {
		last = tn.Step(p, base, opt, 0.5, x, n, rng)
	}
	if !(last.SOOMSE < 0.5*first.SOOMSE) {
		t.Fatalf("SOO MSE %v → %v, want a clear decrease", first.SOOMSE, last.SOOMSE)
	}
	if last.CapabilityMS > 0.05 {
		t.Fatalf("actions drifted from the baseline: capability MSE %v", last.CapabilityMS)
	}
}
