package training

import (
	"math"
	"testing"

	"github.com/sooserve/sooserve/engine"
)

// TestSOOLossGradient checks each pooling's analytic gradient by finite differences.
func TestSOOLossGradient(t *testing.T) {
	S := engine.Tensor2D{Rows: 3, Cols: 2, Data: []float32{1, 2, 3, 4, 5, 6}}
	O := engine.Tensor2D{Rows: 2, Cols: 2, Data: []float32{0.5, 1, -1, 2}}
	for _, p := range []Pooling{PoolFull, PoolMean, PoolLast} {
		_, dS, dO, err := SOOLoss(S, O, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, which := range []struct {
			x, g []float32
		}{{S.Data, dS.Data}, {O.Data, dO.Data}} {
			for i := range which.x {
				orig := which.x[i]
				const h = 1e-2
				which.x[i] = orig + h
				up, _, _, _ := SOOLoss(S, O, p)
				which.x[i] = orig - h
				down, _, _, _ := SOOLoss(S, O, p)
				which.x[i] = orig
				if fd := (up - down) / (2 * h); math.Abs(fd-float64(which.g[i])) > 1e-4*math.Max(1, math.Abs(fd)) {
					t.Errorf("%s: element %d: gradient %g, finite difference %g", p, i, which.g[i], fd)
				}
			}
		}
	}
	// Full pooling pads with zero rows: the third self row is compared with zeros.
	l, _, _, _ := SOOLoss(S, O, PoolFull)
	want := (0.25 + 1 + 16 + 4 + 25 + 36) / 6.0
	if math.Abs(l-want) > 1e-9 {
		t.Errorf("full loss %g, want %g", l, want)
	}
}
