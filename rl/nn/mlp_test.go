package nn

import (
	"math"
	"math/rand/v2"
	"testing"
)

// lossOf is a scalar test loss: Σ c_y·y + Σ c1·h1 + Σ c2·h2 over the batch.
func lossOf(m *MLP, x []float64, n int, cy, cz, c1, c2 []float64) float64 {
	var c Cache
	y := m.Forward(x, n, &c)
	var l float64
	for i, v := range c.Z3 {
		l += cz[i] * v
	}
	for i, v := range y {
		l += cy[i] * v
	}
	for i, v := range c.H1 {
		l += c1[i] * v
	}
	for i, v := range c.H2 {
		l += c2[i] * v
	}
	return l
}

func randVec(rng *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

// TestBackwardFiniteDifferences checks parameter, input and hidden-layer
// gradients of both output kinds against central differences.
func TestBackwardFiniteDifferences(t *testing.T) {
	for _, tanh := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(1, 2))
		m := NewMLP(5, 7, 3, tanh, rng)
		if tanh { // larger last layer so tanh saturation is exercised
			for i := range m.Params {
				m.Params[i] = rng.NormFloat64() * 0.7
			}
		}
		n := 4
		x := randVec(rng, n*5)
		cy, cz, c1, c2 := randVec(rng, n*3), randVec(rng, n*3), randVec(rng, n*7), randVec(rng, n*7)
		var c Cache
		m.Forward(x, n, &c)
		g := make([]float64, len(m.Params))
		dx := make([]float64, len(x))
		m.BackwardPre(&c, cy, cz, c1, c2, g, dx)
		const h = 1e-6
		check := func(name string, p []float64, i int, analytic float64) {
			t.Helper()
			old := p[i]
			p[i] = old + h
			lp := lossOf(m, x, n, cy, cz, c1, c2)
			p[i] = old - h
			lm := lossOf(m, x, n, cy, cz, c1, c2)
			p[i] = old
			num := (lp - lm) / (2 * h)
			if math.Abs(num-analytic) > 1e-6*math.Max(1, math.Abs(num)) {
				t.Errorf("tanh=%v %s[%d]: analytic %.9g numeric %.9g", tanh, name, i, analytic, num)
			}
		}
		for i := range m.Params {
			check("param", m.Params, i, g[i])
		}
		for i := range x {
			check("x", x, i, dx[i])
		}
	}
}

func TestSoftUpdate(t *testing.T) {
	tg := []float64{1, 2, 3}
	SoftUpdate(tg, []float64{3, 2, 1}, 0.25)
	want := []float64{1.5, 2, 2.5}
	for i := range want {
		if math.Abs(tg[i]-want[i]) > 1e-15 {
			t.Fatalf("SoftUpdate = %v, want %v", tg, want)
		}
	}
	// Repeated updates converge to the source geometrically: (1−τ)^k.
	a, b := []float64{0}, []float64{1}
	for k := 0; k < 100; k++ {
		SoftUpdate(a, b, 0.01)
	}
	if want := 1 - math.Pow(0.99, 100); math.Abs(a[0]-want) > 1e-12 {
		t.Fatalf("after 100 updates got %v, want %v", a[0], want)
	}
}

func TestClipGradNorm(t *testing.T) {
	g := []float64{3, 4}
	if n := ClipGradNorm(g, 0.5); n != 5 {
		t.Fatalf("norm %v", n)
	}
	if got := math.Hypot(g[0], g[1]); math.Abs(got-0.5) > 1e-6 {
		t.Fatalf("clipped norm %v, want 0.5", got)
	}
	g = []float64{0.1, 0.1}
	ClipGradNorm(g, 0.5)
	if g[0] != 0.1 || g[1] != 0.1 {
		t.Fatalf("small gradient changed: %v", g)
	}
}

// TestAdamFirstStep: Adam's first step moves each parameter by lr·sign(g).
func TestAdamFirstStep(t *testing.T) {
	p := []float64{1, 1, 1}
	a := NewAdam(3, 0.01)
	a.Step(p, []float64{2, -0.5, 0})
	want := []float64{0.99, 1.01, 1}
	for i := range p {
		if math.Abs(p[i]-want[i]) > 1e-7 {
			t.Fatalf("p = %v, want %v", p, want)
		}
	}
}

func TestInitAndValidate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m := NewMLP(10, 64, 2, true, rng)
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	_, _, _, _, w3, _ := m.split(m.Params)
	for _, v := range w3 {
		if math.Abs(v) > 3e-3 {
			t.Fatalf("tanh output weight %v outside ±3e-3", v)
		}
	}
	m.Params = m.Params[1:]
	if m.Validate() == nil {
		t.Fatal("Validate accepted a short parameter slice")
	}
}
