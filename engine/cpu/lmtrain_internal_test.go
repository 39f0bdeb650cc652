package cpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sooserve/sooserve/engine/model"
)

// TestExpfsMatchesExpf checks that expfs computes expf bit for bit, for
// both signs, over a sweep of the range, its edges and special values.
func TestExpfsMatchesExpf(t *testing.T) {
	var xs []float32
	for x := float32(-100); x < 100; x += 0.0137 {
		xs = append(xs, x)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		xs = append(xs, math.Float32frombits(rng.Uint32()))
	}
	xs = append(xs, 0, float32(math.Copysign(0, -1)), 88, -88, 87.3, -87.3, math.Nextafter32(88, 100), math.Nextafter32(-87.3, -100),
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 1e-45, -1e-45)
	for _, f := range []struct {
		name string
		fn   func(dst, src []float32, s, sub float32)
	}{{"expfs", expfs}, {"expfsGo", expfsGo}} {
		for _, s := range []float32{1, -1} {
			for _, sub := range []float32{0, 0.75, -3} {
				got := make([]float32, len(xs))
				f.fn(got, xs, s, sub)
				for i, x := range xs {
					want := expf(x*s - sub)
					if math.Float32bits(got[i]) != math.Float32bits(want) {
						t.Fatalf("%s(%g·%g - %g) = %g, expf gives %g", f.name, s, x, sub, got[i], want)
					}
				}
			}
		}
	}
}

// TestTransposeRowsMatchesGo checks the AVX2 transpose against its Go twin
// on shapes with and without whole 8×8 blocks, and on a range of rows.
func TestTransposeRowsMatchesGo(t *testing.T) {
	for _, s := range [][4]int{{16, 16, 0, 16}, {512, 344, 0, 512}, {37, 13, 0, 37}, {64, 7, 0, 64}, {100, 40, 8, 93}, {8, 1024, 0, 8}} {
		rows, cols, r0, r1 := s[0], s[1], s[2], s[3]
		src := make([]float32, rows*cols)
		for i := range src {
			src[i] = float32(i) + 0.5
		}
		got, want := make([]float32, rows*cols), make([]float32, rows*cols)
		transposeRows(got, src, rows, cols, r0, r1)
		transposeRowsGo(want, src, rows, cols, r0, r1)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%v: element %d is %g, want %g", s, i, got[i], want[i])
			}
		}
		for r := r0; r < r1; r++ {
			for c := range cols {
				if want[c*rows+r] != src[r*cols+c] {
					t.Fatalf("%v: the Go twin is wrong at (%d, %d)", s, r, c)
				}
			}
		}
	}
}

// TestMatmulSlabsMatchesMatmul checks that splitting a product by tokens
// sums every element as matmul does, bit for bit, with and without a bias
// and with token counts that leave a partial slab.
func TestMatmulSlabsMatchesMatmul(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, threads := range []int{1, 2, 3} {
		e := &Executor{threads: threads, pool: newWorkerPool(threads), ks: native}
		for _, s := range [][3]int{{128, 128, 100}, {37, 344, 65}, {1024, 128, 33}, {5, 13, 1}} {
			rows, cols, n := s[0], s[1], s[2]
			w := randMatrix(rng, model.F32, rows, cols)
			x := randVec(rng, n*cols)
			for _, bias := range [][]float32{nil, randVec(rng, rows)} {
				want, got := make([]float32, n*rows), make([]float32, n*rows)
				e.matmul(w, bias, x, n, want)
				e.matmulSlabs(w, bias, x, n, got)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("threads %d, %v, bias %v: element %d is %g, matmul gives %g", threads, s, bias != nil, i, got[i], want[i])
					}
				}
			}
		}
		e.pool.stop()
	}
}
