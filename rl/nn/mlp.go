// Package nn holds the small multilayer perceptrons of the MADDPG agents,
// with hand-written batched forward and backward passes in float64, the Adam
// optimizer, gradient-norm clipping and soft (Polyak) target updates.
//
// All parameters of a network live in one flat slice so that optimizers,
// target updates and checkpoints treat them uniformly.
package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// LeakySlope is the negative slope of the hidden leaky-ReLU (PyTorch default).
const LeakySlope = 0.01

// MLP is a 3-layer perceptron in → H → H → out with leaky-ReLU hidden units
// and either a tanh (policy) or identity (critic) output, as in the
// MADDPG-PyTorch MLPNetwork. The input BatchNorm of that network is not
// implemented (see RESULTS.md).
type MLP struct {
	In, Hidden, Out int
	Tanh            bool      // tanh output (policies)
	Params          []float64 // W1 (H×In), b1, W2 (H×H), b2, W3 (Out×H), b3
}

// NumParams returns the number of parameters of an In→H→H→Out network.
func NumParams(in, h, out int) int { return h*in + h + h*h + h + out*h + out }

// NewMLP returns a network initialised like torch.nn.Linear (weights and
// biases uniform in ±1/sqrt(fan_in)); with tanh output the last layer's
// weights are uniform in ±3e-3, as in MLPNetwork with constrain_out.
func NewMLP(in, hidden, out int, tanh bool, rng *rand.Rand) *MLP {
	m := &MLP{In: in, Hidden: hidden, Out: out, Tanh: tanh, Params: make([]float64, NumParams(in, hidden, out))}
	fill := func(s []float64, a float64) {
		for i := range s {
			s[i] = (2*rng.Float64() - 1) * a
		}
	}
	w1, b1, w2, b2, w3, b3 := m.split(m.Params)
	fill(w1, 1/math.Sqrt(float64(in)))
	fill(b1, 1/math.Sqrt(float64(in)))
	fill(w2, 1/math.Sqrt(float64(hidden)))
	fill(b2, 1/math.Sqrt(float64(hidden)))
	if tanh {
		fill(w3, 3e-3)
	} else {
		fill(w3, 1/math.Sqrt(float64(hidden)))
	}
	fill(b3, 1/math.Sqrt(float64(hidden)))
	return m
}

// Clone returns a deep copy.
func (m *MLP) Clone() *MLP {
	c := *m
	c.Params = append([]float64(nil), m.Params...)
	return &c
}

// Validate checks that the parameter slice matches the shape.
func (m *MLP) Validate() error {
	if m.In <= 0 || m.Hidden <= 0 || m.Out <= 0 {
		return fmt.Errorf("nn: bad shape %d→%d→%d", m.In, m.Hidden, m.Out)
	}
	if n := NumParams(m.In, m.Hidden, m.Out); len(m.Params) != n {
		return fmt.Errorf("nn: %d parameters, want %d for %d→%d→%d", len(m.Params), n, m.In, m.Hidden, m.Out)
	}
	return nil
}

func (m *MLP) split(p []float64) (w1, b1, w2, b2, w3, b3 []float64) {
	in, h, out := m.In, m.Hidden, m.Out
	o := 0
	take := func(n int) []float64 { s := p[o : o+n : o+n]; o += n; return s }
	w1, b1 = take(h*in), take(h)
	w2, b2 = take(h*h), take(h)
	w3, b3 = take(out*h), take(out)
	return
}

// Cache holds the activations of a batched forward pass, for Backward.
type Cache struct {
	N                 int
	X, Z1, H1, Z2, H2 []float64
	Z3                []float64 // output pre-activation (before tanh)
	Y                 []float64
}

func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	return s[:n]
}

// linear computes y[b,o] = Σ_i x[b,i]·w[o,i] + bias[o] for a batch of n rows.
func linear(y, x, w, bias []float64, n, in, out int) {
	for b := 0; b < n; b++ {
		xr := x[b*in : (b+1)*in]
		yr := y[b*out : (b+1)*out]
		for o := 0; o < out; o++ {
			yr[o] = bias[o] + dot(xr, w[o*in:(o+1)*in])
		}
	}
}

// linearBack accumulates dw += dyᵀx and db += Σ_b dy, and if dx is non-nil
// sets dx = dy·w.
func linearBack(dx, dw, db, dy, x, w []float64, n, in, out int) {
	if dx != nil {
		clear(dx[:n*in])
	}
	for b := 0; b < n; b++ {
		xr := x[b*in : (b+1)*in]
		dyr := dy[b*out : (b+1)*out]
		var dxr []float64
		if dx != nil {
			dxr = dx[b*in : (b+1)*in]
		}
		for o, g := range dyr {
			if g == 0 {
				continue
			}
			db[o] += g
			axpy(dw[o*in:(o+1)*in], g, xr)
			if dxr != nil {
				axpy(dxr, g, w[o*in:(o+1)*in])
			}
		}
	}
}

// dot returns Σ a[i]·b[i] (len(b) ≥ len(a)), with four accumulators.
func dot(a, b []float64) float64 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// axpy sets y[i] += g·x[i] for i < len(y) (len(x) ≥ len(y)).
func axpy(y []float64, g float64, x []float64) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		y[i] += g * x[i]
		y[i+1] += g * x[i+1]
		y[i+2] += g * x[i+2]
		y[i+3] += g * x[i+3]
	}
	for ; i < len(y); i++ {
		y[i] += g * x[i]
	}
}

func leaky(h, z []float64) {
	for i, v := range z {
		if v < 0 {
			v *= LeakySlope
		}
		h[i] = v
	}
}

// Forward runs a batch of n rows (x is n×In, row-major) and returns the n×Out
// outputs. If c is non-nil the activations are kept in it for Backward (the
// returned slice then aliases c.Y); otherwise scratch memory is used.
func (m *MLP) Forward(x []float64, n int, c *Cache) []float64 {
	if c == nil {
		c = &Cache{}
	}
	w1, b1, w2, b2, w3, b3 := m.split(m.Params)
	h, out := m.Hidden, m.Out
	c.N = n
	c.X = x[:n*m.In]
	c.Z1, c.H1 = grow(c.Z1, n*h), grow(c.H1, n*h)
	c.Z2, c.H2 = grow(c.Z2, n*h), grow(c.H2, n*h)
	c.Z3, c.Y = grow(c.Z3, n*out), grow(c.Y, n*out)
	linear(c.Z1, c.X, w1, b1, n, m.In, h)
	leaky(c.H1, c.Z1)
	linear(c.Z2, c.H1, w2, b2, n, h, h)
	leaky(c.H2, c.Z2)
	linear(c.Z3, c.H2, w3, b3, n, h, out)
	for i, v := range c.Z3 {
		if m.Tanh {
			v = math.Tanh(v)
		}
		c.Y[i] = v
	}
	return c.Y
}

// Backward accumulates into grad (len(Params)) the gradient of a loss whose
// gradient with respect to the outputs is dy (n×Out). dh1 and dh2, if
// non-nil, are extra gradients with respect to the hidden activations H1 and
// H2 (n×Hidden each; used by the SOO loss). If dx is non-nil it receives the
// gradient with respect to the input (n×In).
func (m *MLP) Backward(c *Cache, dy, dh1, dh2, grad, dx []float64) {
	m.BackwardPre(c, dy, nil, dh1, dh2, grad, dx)
}

// BackwardPre is Backward with dz, if non-nil, an extra gradient with
// respect to the output pre-activation Z3 (before tanh), n×Out.
func (m *MLP) BackwardPre(c *Cache, dy, dz, dh1, dh2, grad, dx []float64) {
	n, in, h, out := c.N, m.In, m.Hidden, m.Out
	w1, _, w2, _, w3, _ := m.split(m.Params)
	gw1, gb1, gw2, gb2, gw3, gb3 := m.split(grad)
	dz3 := make([]float64, n*out)
	copy(dz3, dy[:n*out])
	if m.Tanh {
		for i, y := range c.Y {
			dz3[i] *= 1 - y*y
		}
	}
	if dz != nil {
		for i := range dz3 {
			dz3[i] += dz[i]
		}
	}
	dH2 := make([]float64, n*h)
	linearBack(dH2, gw3, gb3, dz3, c.H2, w3, n, h, out)
	if dh2 != nil {
		for i := range dH2 {
			dH2[i] += dh2[i]
		}
	}
	leakyBack(dH2, c.Z2)
	dH1 := make([]float64, n*h)
	linearBack(dH1, gw2, gb2, dH2, c.H1, w2, n, h, h)
	if dh1 != nil {
		for i := range dH1 {
			dH1[i] += dh1[i]
		}
	}
	leakyBack(dH1, c.Z1)
	linearBack(dx, gw1, gb1, dH1, c.X, w1, n, in, h)
}

func leakyBack(d, z []float64) {
	for i, v := range z {
		if v < 0 {
			d[i] *= LeakySlope
		}
	}
}

// SoftUpdate moves target toward src: t ← (1−tau)·t + tau·s.
func SoftUpdate(target, src []float64, tau float64) {
	for i, s := range src {
		target[i] = (1-tau)*target[i] + tau*s
	}
}

// ClipGradNorm scales g so that its L2 norm is at most maxNorm, like
// torch.nn.utils.clip_grad_norm_ (factor maxNorm/(norm+1e-6)), and returns
// the norm before clipping.
func ClipGradNorm(g []float64, maxNorm float64) float64 {
	var ss float64
	for _, v := range g {
		ss += v * v
	}
	norm := math.Sqrt(ss)
	if coef := maxNorm / (norm + 1e-6); coef < 1 {
		for i := range g {
			g[i] *= coef
		}
	}
	return norm
}

// Adam is the Adam optimizer with PyTorch's defaults (β1 0.9, β2 0.999,
// ε 1e-8, no weight decay).
type Adam struct {
	LR     float64
	M, V   []float64
	T      int
	B1, B2 float64
	Eps    float64
}

// NewAdam returns an Adam optimizer for n parameters.
func NewAdam(n int, lr float64) *Adam {
	return &Adam{LR: lr, M: make([]float64, n), V: make([]float64, n), B1: 0.9, B2: 0.999, Eps: 1e-8}
}

// Step applies one update to p with gradient g.
func (a *Adam) Step(p, g []float64) {
	a.T++
	bc1 := 1 - math.Pow(a.B1, float64(a.T))
	bc2 := 1 - math.Pow(a.B2, float64(a.T))
	step := a.LR / bc1
	for i, gi := range g {
		a.M[i] = a.B1*a.M[i] + (1-a.B1)*gi
		a.V[i] = a.B2*a.V[i] + (1-a.B2)*gi*gi
		p[i] -= step * a.M[i] / (math.Sqrt(a.V[i]/bc2) + a.Eps)
	}
}
