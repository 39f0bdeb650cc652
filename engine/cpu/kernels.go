package cpu

import (
	"math"

	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// dot returns sum(a[i]*b[i]) with four independent accumulators. Its summation
// order depends only on len(a), so a row's result never depends on what else
// is in the batch.
func dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// axpy computes y += alpha*x.
func axpy(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += alpha * v
	}
}

// decodeRow writes row r of a bf16/f16 matrix into dst as float32.
func decodeRow(w *model.Matrix, r int, dst []float32) {
	src := w.U16[r*w.Cols : (r+1)*w.Cols]
	dst = dst[:len(src)]
	if w.DType == model.BF16 {
		for j, h := range src {
			dst[j] = math.Float32frombits(uint32(h) << 16)
		}
		return
	}
	for j, h := range src {
		dst[j] = safetensors.F16ToF32(h)
	}
}

// matmulRows computes out[n*outStride + r] = W[r]·x[n] (+ bias[r]) for weight
// rows r in [r0, r1) and all n input rows. scratch holds one decoded row.
func matmulRows(w *model.Matrix, bias []float32, x []float32, n int, out []float32, outStride, r0, r1 int, scratch []float32) {
	in := w.Cols
	for r := r0; r < r1; r++ {
		var row []float32
		if w.DType == model.F32 {
			row = w.F32[r*in : (r+1)*in]
		} else {
			row = scratch[:in]
			decodeRow(w, r, row)
		}
		var b float32
		if bias != nil {
			b = bias[r]
		}
		for t := 0; t < n; t++ {
			out[t*outStride+r] = dot(row, x[t*in:(t+1)*in]) + b
		}
	}
}

// rmsNorm writes x·rsqrt(mean(x²)+eps)·w into dst (dst may alias x).
func rmsNorm(dst, x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(len(x))+float64(eps)))
	for i, v := range x {
		dst[i] = v * inv * w[i]
	}
}

// rope rotates one head vector in place in the rotate_half layout.
func rope(x, cos, sin []float32) {
	half := len(x) / 2
	for i := 0; i < half; i++ {
		a, b := x[i], x[i+half]
		x[i] = a*cos[i] - b*sin[i]
		x[i+half] = b*cos[i] + a*sin[i]
	}
}

func silu(x float32) float32 { return x / (1 + float32(math.Exp(float64(-x)))) }

func geluTanh(x float32) float32 {
	const c = 0.7978845608028654 // sqrt(2/pi)
	xf := float64(x)
	return float32(0.5 * xf * (1 + math.Tanh(c*(xf+0.044715*xf*xf*xf))))
}

func softcap(x, c float32) float32 {
	return c * float32(math.Tanh(float64(x/c)))
}
