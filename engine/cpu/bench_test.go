package cpu

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/sooserve/sooserve/engine/model"
)

// benchMatmul times out = x·Wᵀ for n tokens with W [rows, cols] of dtype dt
// on all threads, and reports the weight bytes streamed per second.
func benchMatmul(b *testing.B, dt model.DType, rows, cols, n int) {
	rng := rand.New(rand.NewPCG(1, 1))
	w := randMatrix(rng, dt, rows, cols)
	x := randVec(rng, n*cols)
	out := make([]float32, n*rows)
	e := &Executor{threads: runtime.GOMAXPROCS(0), pool: newWorkerPool(runtime.GOMAXPROCS(0))}
	defer e.pool.stop()
	b.SetBytes(w.Bytes())
	b.ResetTimer()
	for b.Loop() {
		e.matmul(w, nil, x, n, out)
	}
	b.ReportMetric(float64(2*rows*cols*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkMatVec is the decode product (one token) at the 135M shapes:
// [out, in] = 1536x576 (gate/up), 576x1536 (down), 49152x576 (LM head).
func BenchmarkMatVec(b *testing.B) {
	for _, dt := range dtypes {
		for _, s := range [][2]int{{1536, 576}, {576, 1536}, {49152, 576}} {
			b.Run(fmt.Sprintf("%v/%dx%d", dt, s[0], s[1]), func(b *testing.B) { benchMatmul(b, dt, s[0], s[1], 1) })
		}
	}
}

// BenchmarkMatVecBatch8 is batched decode: 8 tokens share one weight stream.
func BenchmarkMatVecBatch8(b *testing.B) {
	for _, dt := range dtypes {
		b.Run(fmt.Sprintf("%v/1536x576", dt), func(b *testing.B) { benchMatmul(b, dt, 1536, 576, 8) })
	}
}

// BenchmarkMatMul128 is prefill: 128 tokens.
func BenchmarkMatMul128(b *testing.B) {
	for _, dt := range dtypes {
		for _, s := range [][2]int{{1536, 576}, {576, 1536}} {
			b.Run(fmt.Sprintf("%v/%dx%d", dt, s[0], s[1]), func(b *testing.B) { benchMatmul(b, dt, s[0], s[1], 128) })
		}
	}
}
