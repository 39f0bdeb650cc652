package decision

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// clusters draws n points per class from unit Gaussians in d dimensions
// centred at ±sep/2 along every axis; positives first.
func clusters(seed uint64, n, d int, sep float64) ([][]float64, []bool) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var X [][]float64
	var y []bool
	for _, pos := range []bool{true, false} {
		c := -sep / 2
		if pos {
			c = sep / 2
		}
		for range n {
			x := make([]float64, d)
			for j := range x {
				x[j] = c + rng.NormFloat64()
			}
			X = append(X, x)
			y = append(y, pos)
		}
	}
	return X, y
}

func TestFitLogisticSeparable(t *testing.T) {
	for _, d := range []int{3, 200} { // primal (d < n) and dual (d > n) paths
		X, y := clusters(7, 40, d, 8)
		m, err := FitLogistic(X, y, 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range X {
			if m.Predict(x) != y[i] {
				t.Errorf("d=%d: sample %d misclassified (p=%.4f)", d, i, m.Prob(x))
			}
		}
		acc, err := CrossValidate(X, y, 5, 1)
		if err != nil {
			t.Fatal(err)
		}
		if acc != 1 {
			t.Errorf("d=%d: held-out accuracy %.3f on separable clusters, want 1", d, acc)
		}
	}
}

// newtonReference fits the same objective as FitLogistic on 2-D data by
// plain Newton iterations with the 3×3 Hessian inverted by its adjugate: an
// implementation that shares no code with the package.
func newtonReference(X [][2]float64, y []float64, lambda float64) (w [2]float64, b float64) {
	for range 50 {
		var g [3]float64
		var H [3][3]float64
		for i, x := range X {
			z := w[0]*x[0] + w[1]*x[1] + b
			p := 1 / (1 + math.Exp(-z))
			v := [3]float64{x[0], x[1], 1}
			for r := range 3 {
				g[r] += (p - y[i]) * v[r]
				for c := range 3 {
					H[r][c] += p * (1 - p) * v[r] * v[c]
				}
			}
		}
		g[0] += lambda * w[0]
		g[1] += lambda * w[1]
		H[0][0] += lambda
		H[1][1] += lambda
		det := H[0][0]*(H[1][1]*H[2][2]-H[1][2]*H[2][1]) - H[0][1]*(H[1][0]*H[2][2]-H[1][2]*H[2][0]) +
			H[0][2]*(H[1][0]*H[2][1]-H[1][1]*H[2][0])
		var inv [3][3]float64
		for r := range 3 {
			for c := range 3 {
				// inverse = adjugate / det; adj[r][c] = cofactor[c][r].
				r1, r2 := (c+1)%3, (c+2)%3
				c1, c2 := (r+1)%3, (r+2)%3
				inv[r][c] = (H[r1][c1]*H[r2][c2] - H[r1][c2]*H[r2][c1]) / det
			}
		}
		var step [3]float64
		for r := range 3 {
			for c := range 3 {
				step[r] -= inv[r][c] * g[c]
			}
		}
		w[0] += step[0]
		w[1] += step[1]
		b += step[2]
	}
	return w, b
}

func TestFitLogisticMatchesNewtonReference(t *testing.T) {
	// A small overlapping (not separable) 2-D dataset.
	X := [][2]float64{{0.5, 1.2}, {1.1, 0.3}, {1.9, 2.2}, {2.5, 0.9}, {3.1, 1.8}, {0.2, -0.4},
		{-0.7, 0.8}, {-1.3, -0.2}, {-0.4, -1.5}, {0.9, -0.8}, {-2.1, 0.4}, {1.4, 1.9}, {-0.2, 0.1}}
	Y := []float64{1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1}
	rows := make([][]float64, len(X))
	labels := make([]bool, len(X))
	for i, x := range X {
		rows[i] = []float64{x[0], x[1]}
		labels[i] = Y[i] == 1
	}
	for _, lambda := range []float64{0.1, 1, 10} {
		wantW, wantB := newtonReference(X, Y, lambda)
		m, err := FitLogistic(rows, labels, lambda)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(m.W[0]-wantW[0]) > 1e-6 || math.Abs(m.W[1]-wantW[1]) > 1e-6 || math.Abs(m.B-wantB) > 1e-6 {
			t.Errorf("λ=%g: got w=%v b=%.9f, Newton reference w=%v b=%.9f", lambda, m.W, m.B, wantW, wantB)
		}
		// Stationarity, from first principles: Σ(p−y)x + λw = 0, Σ(p−y) = 0.
		var g0, g1, gb float64
		for i, x := range rows {
			r := m.Prob(x) - Y[i]
			g0 += r * x[0]
			g1 += r * x[1]
			gb += r
		}
		g0 += lambda * m.W[0]
		g1 += lambda * m.W[1]
		if math.Abs(g0) > 1e-8 || math.Abs(g1) > 1e-8 || math.Abs(gb) > 1e-8 {
			t.Errorf("λ=%g: gradient at the fit (%g, %g, %g), want 0", lambda, g0, g1, gb)
		}
	}
}

func TestFitLogisticDualMatchesPrimal(t *testing.T) {
	// More features than samples, labels not separable by construction
	// in every direction: the span-of-samples fit must find the primal's
	// optimum.
	rng := rand.New(rand.NewPCG(3, 4))
	n, d := 14, 40
	X := make([][]float64, n)
	y := make([]float64, n)
	for i := range X {
		X[i] = make([]float64, d)
		for j := range X[i] {
			X[i][j] = rng.NormFloat64()
		}
		if rng.IntN(2) == 1 {
			y[i] = 1
		}
	}
	for _, lambda := range []float64{0.5, 3} {
		p, err := fitPrimal(X, y, lambda)
		if err != nil {
			t.Fatal(err)
		}
		q, err := fitDual(X, y, lambda)
		if err != nil {
			t.Fatal(err)
		}
		for j := range p.W {
			if math.Abs(p.W[j]-q.W[j]) > 1e-8 {
				t.Fatalf("λ=%g: w[%d] primal %.12f dual %.12f", lambda, j, p.W[j], q.W[j])
			}
		}
		if math.Abs(p.B-q.B) > 1e-8 {
			t.Errorf("λ=%g: b primal %.12f dual %.12f", lambda, p.B, q.B)
		}
	}
}

func TestFitLogisticDeterministic(t *testing.T) {
	X, y := clusters(11, 30, 60, 1)
	a, err := FitLogistic(X, y, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := FitLogistic(X, y, 1)
	for j := range a.W {
		if a.W[j] != b.W[j] {
			t.Fatalf("w[%d] differs between two fits: %v and %v", j, a.W[j], b.W[j])
		}
	}
}

func TestCrossValidateIsHeldOut(t *testing.T) {
	// Random labels on random points with more features than samples: the
	// training fit separates them, the held-out accuracy stays near chance.
	rng := rand.New(rand.NewPCG(5, 6))
	n, d := 40, 100
	X := make([][]float64, n)
	y := make([]bool, n)
	for i := range X {
		X[i] = make([]float64, d)
		for j := range X[i] {
			X[i][j] = rng.NormFloat64()
		}
		y[i] = i%2 == 0
	}
	p, err := TrainProbe(X, y, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	var train int
	for i, x := range X {
		if p.Predict(x) == y[i] {
			train++
		}
	}
	if train != n {
		t.Errorf("training accuracy %d/%d, want all (d > n)", train, n)
	}
	acc, err := CrossValidate(X, y, 5, 0.01)
	if err != nil {
		t.Fatal(err)
	}
	if acc > 0.8 {
		t.Errorf("held-out accuracy %.3f on random labels, want near chance", acc)
	}
}

func TestFolds(t *testing.T) {
	y := []bool{true, true, true, true, true, true, false, false, false, false, false, false, false}
	f, err := Folds(y, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []int{0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 1, 2, 2}
	for i := range want {
		if f[i] != want[i] {
			t.Fatalf("folds %v, want %v", f, want)
		}
	}
	if _, err := Folds(y, 7); err == nil || !strings.Contains(err.Error(), "at least 7 samples of each class") {
		t.Errorf("7 folds of 6 positives: %v", err)
	}
	if _, err := Folds(y, 1); err == nil {
		t.Error("1 fold accepted")
	}
}

func TestProbeStandardizes(t *testing.T) {
	// One informative feature at a scale of 1e4 beside a noise feature: the
	// probe must give the same predictions as on the rescaled data.
	X, y := clusters(9, 20, 2, 3)
	big := make([][]float64, len(X))
	for i, x := range X {
		big[i] = []float64{x[0] * 1e4, x[1] + 1e3}
	}
	a, err := TrainProbe(X, y, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := TrainProbe(big, y, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range X {
		if pa, pb := a.Prob(X[i]), b.Prob(big[i]); math.Abs(pa-pb) > 1e-9 {
			t.Fatalf("sample %d: p %.12f unscaled, %.12f scaled", i, pa, pb)
		}
	}
}

func TestFitLogisticErrors(t *testing.T) {
	for _, tc := range []struct {
		X      [][]float64
		y      []bool
		lambda float64
		msg    string
	}{
		{nil, nil, 1, "no samples"},
		{[][]float64{{1}}, []bool{true, false}, 1, "labels"},
		{[][]float64{{1}, {2}}, []bool{true, false}, 0, "λ must be positive"},
		{[][]float64{{1}, {2, 3}}, []bool{true, false}, 1, "features"},
		{[][]float64{{1}, {math.NaN()}}, []bool{true, false}, 1, "not finite"},
	} {
		if _, err := FitLogistic(tc.X, tc.y, tc.lambda); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: error %v, want %q", tc.X, err, tc.msg)
		}
	}
}
