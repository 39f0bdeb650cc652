package decision

import (
	"errors"
	"fmt"
	"math"
)

// Logistic is a fitted binary logistic-regression model: P(y=1 | x) =
// σ(W·x + B).
type Logistic struct {
	// W are the weights, one per feature.
	W []float64 `json:"w"`
	// B is the intercept (not penalised).
	B float64 `json:"b"`
	// Iterations is the number of Newton steps the fit took.
	Iterations int `json:"iterations"`
}

// Logit returns W·x + B.
func (m *Logistic) Logit(x []float64) float64 {
	s := m.B
	for j, w := range m.W {
		s += w * x[j]
	}
	return s
}

// Prob returns P(y=1 | x).
func (m *Logistic) Prob(x []float64) float64 { return sigmoid(m.Logit(x)) }

// Predict reports whether x is classified as positive (P(y=1 | x) > 0.5).
func (m *Logistic) Predict(x []float64) bool { return m.Logit(x) > 0 }

// Newton's method settings: the fit stops when every component of the
// gradient is below gradTol·(1+n), or after maxNewton steps.
const (
	maxNewton = 100
	gradTol   = 1e-11
	// minCurvature floors σ(z)(1-σ(z)) in the Hessian so that saturated
	// points keep it invertible (it changes the step, not the optimum).
	minCurvature = 1e-12
)

// FitLogistic fits an L2-regularised logistic regression in float64: it
// minimises Σ_i [log(1+e^{z_i}) − y_i z_i] + (λ/2)‖W‖², z_i = W·x_i + B,
// with the intercept B not penalised (λ/2 = 1/(2C) in scikit-learn's terms
// with C = 1/λ). The objective is strictly convex for λ > 0; the fit runs
// Newton's method with a backtracking line search from zero, so it is
// deterministic and converges to the unique optimum. With more features than
// samples it works in the samples' span (the optimal W is a combination of
// the x_i), so the cost is O(n³ + n²d) instead of O(d³).
func FitLogistic(X [][]float64, y []bool, lambda float64) (*Logistic, error) {
	n := len(X)
	if n == 0 {
		return nil, errors.New("decision: logistic regression: no samples")
	}
	if len(y) != n {
		return nil, fmt.Errorf("decision: logistic regression: %d samples but %d labels", n, len(y))
	}
	if !(lambda > 0) || math.IsInf(lambda, 0) {
		return nil, fmt.Errorf("decision: logistic regression: λ must be positive and finite, got %g", lambda)
	}
	d := len(X[0])
	for i, x := range X {
		if len(x) != d {
			return nil, fmt.Errorf("decision: logistic regression: sample %d has %d features, sample 0 has %d", i, len(x), d)
		}
		for _, v := range x {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("decision: logistic regression: sample %d has a value that is not finite", i)
			}
		}
	}
	yf := make([]float64, n)
	for i, v := range y {
		if v {
			yf[i] = 1
		}
	}
	if d > n {
		return fitDual(X, yf, lambda)
	}
	return fitPrimal(X, yf, lambda)
}

// converged reports whether a Newton step whose directional derivative is
// slope (minus the squared Newton decrement) can no longer lower the
// objective f beyond rounding.
func converged(slope, f float64) bool { return -slope <= 1e-22*(1+math.Abs(f)) }

// sigmoid is 1/(1+e^{-z}), computed without overflow.
func sigmoid(z float64) float64 {
	if z >= 0 {
		return 1 / (1 + math.Exp(-z))
	}
	e := math.Exp(z)
	return e / (1 + e)
}

// softplus is log(1+e^z), computed without overflow.
func softplus(z float64) float64 {
	return math.Max(z, 0) + math.Log1p(math.Exp(-math.Abs(z)))
}

// dataLoss is Σ_i softplus(z_i) − y_i z_i.
func dataLoss(z, y []float64) float64 {
	var s float64
	for i := range z {
		s += softplus(z[i]) - y[i]*z[i]
	}
	return s
}

// fitPrimal runs Newton's method on (W, B): d+1 unknowns.
func fitPrimal(X [][]float64, y []float64, lambda float64) (*Logistic, error) {
	n, d := len(X), len(X[0])
	w := make([]float64, d)
	var b float64
	z := make([]float64, n)
	g := make([]float64, n)
	grad := make([]float64, d+1)
	H := newMatrix(d+1, d+1)
	objective := func(w []float64, b float64) float64 {
		for i, x := range X {
			z[i] = dot(w, x) + b
		}
		return dataLoss(z, y) + lambda/2*dot(w, w)
	}
	f := objective(w, b)
	for it := 0; it < maxNewton; it++ {
		for i := range X {
			g[i] = sigmoid(z[i]) - y[i]
		}
		// Gradient: Xᵀg + λW, Σg.
		for j := range grad {
			grad[j] = 0
		}
		for i, x := range X {
			for j, v := range x {
				grad[j] += g[i] * v
			}
			grad[d] += g[i]
		}
		for j := range d {
			grad[j] += lambda * w[j]
		}
		if maxAbs(grad) <= gradTol*float64(1+n) {
			return &Logistic{W: w, B: b, Iterations: it}, nil
		}
		// Hessian: [XᵀDX + λI, XᵀD1; 1ᵀDX, 1ᵀD1].
		H.zero()
		for i, x := range X {
			p := sigmoid(z[i])
			c := math.Max(p*(1-p), minCurvature)
			for j, vj := range x {
				row := H.row(j)
				cv := c * vj
				for k := 0; k <= j; k++ {
					row[k] += cv * x[k]
				}
				H.add(d, j, cv)
			}
			H.add(d, d, c)
		}
		for j := range d {
			H.add(j, j, lambda)
			for k := 0; k < j; k++ {
				H.set(k, j, H.at(j, k))
			}
			H.set(j, d, H.at(d, j))
		}
		step := make([]float64, d+1)
		for j := range step {
			step[j] = -grad[j]
		}
		if err := solve(H, step); err != nil {
			return nil, fmt.Errorf("decision: logistic regression: Newton step %d: %w", it, err)
		}
		slope := dot(grad, step)
		if converged(slope, f) {
			return &Logistic{W: w, B: b, Iterations: it}, nil
		}
		t := 1.0
		nw := make([]float64, d)
		var nb, nf float64
		for range 60 {
			for j := range d {
				nw[j] = w[j] + t*step[j]
			}
			nb = b + t*step[d]
			nf = objective(nw, nb)
			if nf <= f+1e-4*t*slope {
				break
			}
			t /= 2
		}
		if !(nf <= f) { // no decrease at any step size: at the optimum to rounding
			return &Logistic{W: w, B: b, Iterations: it}, nil
		}
		w, b, f = nw, nb, nf
	}
	return &Logistic{W: w, B: b, Iterations: maxNewton}, nil
}

// fitDual runs Newton's method on W = Xᵀa: with K = XXᵀ, z = Ka + B and
// ‖W‖² = aᵀKa, the Hessian in (a, B) is diag(K, 1)·M with
// M = [DK + λI, D1; 1ᵀDK, 1ᵀD1], so solving M·Δ = −(g + λa, Σg) gives a
// Newton step (the part of Δa in K's null space leaves W unchanged). M is
// invertible when D > 0.
func fitDual(X [][]float64, y []float64, lambda float64) (*Logistic, error) {
	n, d := len(X), len(X[0])
	K := newMatrix(n, n)
	for i := range n {
		for j := 0; j <= i; j++ {
			v := dot(X[i], X[j])
			K.set(i, j, v)
			K.set(j, i, v)
		}
	}
	a := make([]float64, n)
	var b float64
	z := make([]float64, n)
	Ka := make([]float64, n)
	g := make([]float64, n)
	w := make([]float64, d)
	M := newMatrix(n+1, n+1)
	// objective evaluates the loss at (a, b), leaving Ka and z filled.
	objective := func(a []float64, b float64) float64 {
		for i := range n {
			Ka[i] = dot(K.row(i), a)
			z[i] = Ka[i] + b
		}
		return dataLoss(z, y) + lambda/2*dot(a, Ka)
	}
	weights := func(a []float64) []float64 {
		out := make([]float64, d)
		for i, x := range X {
			for j, v := range x {
				out[j] += a[i] * v
			}
		}
		return out
	}
	f := objective(a, b)
	for it := 0; it < maxNewton; it++ {
		var sg float64
		for i := range n {
			g[i] = sigmoid(z[i]) - y[i]
			sg += g[i]
		}
		// Stop on the gradient in (W, B): Xᵀg + λW and Σg.
		w = weights(a)
		gw := weights(g)
		for j := range gw {
			gw[j] += lambda * w[j]
		}
		if math.Max(maxAbs(gw), math.Abs(sg)) <= gradTol*float64(1+n) {
			return &Logistic{W: w, B: b, Iterations: it}, nil
		}
		M.zero()
		rhs := make([]float64, n+1)
		for i := range n {
			p := sigmoid(z[i])
			c := math.Max(p*(1-p), minCurvature)
			row := M.row(i)
			Ki := K.row(i)
			for j := range n {
				row[j] = c * Ki[j]
			}
			row[i] += lambda
			row[n] = c
			last := M.row(n)
			for j := range n {
				last[j] += c * Ki[j]
			}
			last[n] += c
			rhs[i] = -(g[i] + lambda*a[i])
		}
		rhs[n] = -sg
		if err := solve(M, rhs); err != nil {
			return nil, fmt.Errorf("decision: logistic regression: Newton step %d: %w", it, err)
		}
		// Directional derivative of the objective along the step: the
		// gradient in (a, B) is (K(g + λa), Σg).
		var slope float64
		for i := range n {
			slope += (g[i] + lambda*a[i]) * dot(K.row(i), rhs[:n])
		}
		slope += sg * rhs[n]
		if converged(slope, f) {
			return &Logistic{W: weights(a), B: b, Iterations: it}, nil
		}
		t := 1.0
		na := make([]float64, n)
		var nb, nf float64
		for range 60 {
			for i := range n {
				na[i] = a[i] + t*rhs[i]
			}
			nb = b + t*rhs[n]
			nf = objective(na, nb)
			if nf <= f+1e-4*t*slope {
				break
			}
			t /= 2
		}
		if !(nf <= f) {
			return &Logistic{W: weights(a), B: b, Iterations: it}, nil
		}
		a, b, f = na, nb, nf
	}
	return &Logistic{W: weights(a), B: b, Iterations: maxNewton}, nil
}

// Probe is a logistic regression on standardised features: each feature is
// centred and scaled by the mean and standard deviation of the training
// samples before the model sees it, so λ weighs every direction alike
// whatever the activations' scale.
type Probe struct {
	// Mean and Scale standardise a sample: (x − Mean) / Scale.
	Mean  []float64 `json:"mean"`
	Scale []float64 `json:"scale"`
	// Model is the regression on the standardised features.
	Model *Logistic `json:"model"`
}

// TrainProbe standardises X (features with no spread get scale 1) and fits
// FitLogistic on it.
func TrainProbe(X [][]float64, y []bool, lambda float64) (*Probe, error) {
	if len(X) == 0 {
		return nil, errors.New("decision: probe: no samples")
	}
	d := len(X[0])
	mean := make([]float64, d)
	scale := make([]float64, d)
	for _, x := range X {
		if len(x) != d {
			return nil, fmt.Errorf("decision: probe: samples of %d and %d features", d, len(x))
		}
		for j, v := range x {
			mean[j] += v
		}
	}
	nf := float64(len(X))
	for j := range mean {
		mean[j] /= nf
	}
	for _, x := range X {
		for j, v := range x {
			scale[j] += (v - mean[j]) * (v - mean[j])
		}
	}
	for j := range scale {
		s := math.Sqrt(scale[j] / nf)
		if !(s > 1e-12*(1+math.Abs(mean[j]))) {
			s = 1 // a constant feature: centred to zero, left unscaled
		}
		scale[j] = s
	}
	p := &Probe{Mean: mean, Scale: scale}
	Z := make([][]float64, len(X))
	for i, x := range X {
		Z[i] = p.standardize(x)
	}
	m, err := FitLogistic(Z, y, lambda)
	if err != nil {
		return nil, err
	}
	p.Model = m
	return p, nil
}

// standardize returns (x − Mean) / Scale.
func (p *Probe) standardize(x []float64) []float64 {
	z := make([]float64, len(x))
	for j, v := range x {
		z[j] = (v - p.Mean[j]) / p.Scale[j]
	}
	return z
}

// Prob returns P(positive | x).
func (p *Probe) Prob(x []float64) float64 { return p.Model.Prob(p.standardize(x)) }

// Predict reports whether x is classified as positive.
func (p *Probe) Predict(x []float64) bool { return p.Model.Predict(p.standardize(x)) }

// Fraction returns the fraction of xs that p classifies as positive (0 for
// none).
func (p *Probe) Fraction(xs [][]float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var k int
	for _, x := range xs {
		if p.Predict(x) {
			k++
		}
	}
	return float64(k) / float64(len(xs))
}

// Folds assigns each sample to one of k cross-validation folds, stratified
// by label: the samples of each class, in input order, are cut into k
// contiguous blocks of near-equal size, so neighbouring samples (such as
// the two room orders of one world item) stay in one fold. Each class needs
// at least k samples.
func Folds(y []bool, k int) ([]int, error) {
	if k < 2 {
		return nil, fmt.Errorf("decision: cross-validation needs at least 2 folds, got %d", k)
	}
	var pos, neg []int
	for i, v := range y {
		if v {
			pos = append(pos, i)
		} else {
			neg = append(neg, i)
		}
	}
	if len(pos) < k || len(neg) < k {
		return nil, fmt.Errorf("decision: %d-fold cross-validation needs at least %d samples of each class, have %d and %d", k, k, len(pos), len(neg))
	}
	fold := make([]int, len(y))
	for _, cls := range [][]int{pos, neg} {
		m := len(cls)
		for j, i := range cls {
			fold[i] = j * k / m
		}
	}
	return fold, nil
}

// CrossValidate returns the k-fold held-out accuracy of TrainProbe on (X, y)
// with the folds of Folds: the fraction of samples classified correctly by
// the probe trained without their fold.
func CrossValidate(X [][]float64, y []bool, k int, lambda float64) (float64, error) {
	if len(X) != len(y) {
		return 0, fmt.Errorf("decision: cross-validation: %d samples but %d labels", len(X), len(y))
	}
	fold, err := Folds(y, k)
	if err != nil {
		return 0, err
	}
	var correct int
	for f := range k {
		var trX [][]float64
		var trY []bool
		for i := range X {
			if fold[i] != f {
				trX = append(trX, X[i])
				trY = append(trY, y[i])
			}
		}
		p, err := TrainProbe(trX, trY, lambda)
		if err != nil {
			return 0, fmt.Errorf("decision: cross-validation fold %d: %w", f, err)
		}
		for i := range X {
			if fold[i] == f && p.Predict(X[i]) == y[i] {
				correct++
			}
		}
	}
	return float64(correct) / float64(len(X)), nil
}

// matrix is a dense row-major square or rectangular float64 matrix.
type matrix struct {
	rows, cols int
	data       []float64
}

func newMatrix(rows, cols int) *matrix {
	return &matrix{rows: rows, cols: cols, data: make([]float64, rows*cols)}
}

func (m *matrix) row(i int) []float64     { return m.data[i*m.cols : (i+1)*m.cols] }
func (m *matrix) at(i, j int) float64     { return m.data[i*m.cols+j] }
func (m *matrix) set(i, j int, v float64) { m.data[i*m.cols+j] = v }
func (m *matrix) add(i, j int, v float64) { m.data[i*m.cols+j] += v }
func (m *matrix) zero() {
	for i := range m.data {
		m.data[i] = 0
	}
}

// solve overwrites b with the solution of A·x = b by Gaussian elimination
// with partial pivoting; A is overwritten.
func solve(A *matrix, b []float64) error {
	n := A.rows
	for c := range n {
		p := c
		for r := c + 1; r < n; r++ {
			if math.Abs(A.at(r, c)) > math.Abs(A.at(p, c)) {
				p = r
			}
		}
		if A.at(p, c) == 0 {
			return errors.New("singular system")
		}
		if p != c {
			rp, rc := A.row(p), A.row(c)
			for j := range rp {
				rp[j], rc[j] = rc[j], rp[j]
			}
			b[p], b[c] = b[c], b[p]
		}
		rc := A.row(c)
		piv := rc[c]
		for r := c + 1; r < n; r++ {
			rr := A.row(r)
			f := rr[c] / piv
			if f == 0 {
				continue
			}
			for j := c; j < n; j++ {
				rr[j] -= f * rc[j]
			}
			b[r] -= f * b[c]
		}
	}
	for c := n - 1; c >= 0; c-- {
		rc := A.row(c)
		s := b[c]
		for j := c + 1; j < n; j++ {
			s -= rc[j] * b[j]
		}
		b[c] = s / rc[c]
	}
	return nil
}

func dot(a, b []float64) float64 {
	var s float64
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

func maxAbs(v []float64) float64 {
	var m float64
	for _, x := range v {
		m = math.Max(m, math.Abs(x))
	}
	return m
}
