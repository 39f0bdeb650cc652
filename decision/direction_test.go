package decision

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/overlap"
)

func TestMeanDiffHandcrafted(t *testing.T) {
	conflict := [][]float64{{1, 0, 2}, {3, 0, 2}}
	self := [][]float64{{0, 1, 2}, {0, 1, 0}}
	got, err := MeanDiff(conflict, self)
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{2, -1, 1} // (2,0,2) − (0,1,1)
	for j := range want {
		if got[j] != want[j] {
			t.Fatalf("MeanDiff = %v, want %v", got, want)
		}
	}
	if _, err := MeanDiff(conflict, [][]float64{{1, 2}}); err == nil {
		t.Error("widths 3 and 2 accepted")
	}
	if _, err := MeanDiff(nil, self); err == nil {
		t.Error("an empty set accepted")
	}
}

func TestCosineHandcrafted(t *testing.T) {
	for _, tc := range []struct {
		a, b []float64
		want float64
	}{
		{[]float64{2, -1, 1}, []float64{4, -2, 2}, 1},
		{[]float64{2, -1, 1}, []float64{-2, 1, -1}, -1},
		{[]float64{1, 0, 0}, []float64{0, 3, 0}, 0},
		{[]float64{1, 1, 0}, []float64{1, 0, 0}, 1 / math.Sqrt2},
		{[]float64{3, 4}, []float64{4, 3}, 24.0 / 25},
		{[]float64{0, 0}, []float64{1, 2}, 0}, // no direction
	} {
		if got := Cosine(tc.a, tc.b); math.Abs(got-tc.want) > 1e-15 {
			t.Errorf("Cosine(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	if n := Norm([]float64{3, 4}); n != 5 {
		t.Errorf("Norm(3,4) = %v", n)
	}
}

func TestPairMSEMatchesOverlapCompare(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const pairs, d = 7, 9
	var self, other [][]float64
	var want float64
	for range pairs {
		// Two-token activations: overlap's "last" pooling reads row 1.
		S := engine.Tensor2D{Rows: 2, Cols: d, Data: make([]float32, 2*d)}
		O := engine.Tensor2D{Rows: 2, Cols: d, Data: make([]float32, 2*d)}
		for j := range S.Data {
			S.Data[j] = float32(rng.NormFloat64())
			O.Data[j] = float32(rng.NormFloat64())
		}
		r, err := overlap.Compare(S, O, overlap.PoolLast)
		if err != nil {
			t.Fatal(err)
		}
		want += r.MSE / pairs
		s, o := make([]float64, d), make([]float64, d)
		for j := range d {
			s[j], o[j] = float64(S.Row(1)[j]), float64(O.Row(1)[j])
		}
		self, other = append(self, s), append(other, o)
	}
	got, err := PairMSE(self, other)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-want) > 1e-12*want {
		t.Errorf("PairMSE = %.15g, overlap.Compare (last) mean = %.15g", got, want)
	}
	if m, _ := PairMSE([][]float64{{1, 2}}, [][]float64{{1, 4}}); m != 2 {
		t.Errorf("PairMSE((1,2),(1,4)) = %v, want 2", m)
	}
	if _, err := PairMSE(self, other[:3]); err == nil {
		t.Error("7 self and 3 other rows accepted")
	}
}
