package cpu

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// kernelSets returns the implementations this machine can run: always pure Go,
// plus the assembly when the CPU has AVX2, FMA and F16C.
func kernelSets(t testing.TB) map[string]kernelSet {
	sets := map[string]kernelSet{"go": {asm: false}}
	if haveAsm {
		sets["asm"] = kernelSet{asm: true}
		if haveAVX512 {
			sets["avx512"] = kernelSet{asm: true, avx512: true}
			if haveBF16Dot {
				sets["bf16dot"] = kernelSet{asm: true, avx512: true, bf16dot: true}
			} else {
				t.Log("no AVX512_BF16 on this machine: the VDPBF16PS kernels are not tested")
			}
		} else {
			t.Log("no AVX-512 on this machine: the pair kernels are not tested")
		}
	} else {
		t.Log("no assembly kernels on this machine/build: testing pure Go only")
	}
	return sets
}

func randMatrix(rng *rand.Rand, dt model.DType, rows, cols int) *model.Matrix {
	m := &model.Matrix{Rows: rows, Cols: cols, DType: dt}
	f := make([]float32, rows*cols)
	for i := range f {
		f[i] = float32(rng.NormFloat64())
	}
	switch dt {
	case model.F32:
		m.F32 = f
	case model.BF16:
		m.U16 = make([]uint16, len(f))
		for i, v := range f {
			m.U16[i] = safetensors.F32ToBF16(v)
		}
	case model.F16:
		m.U16 = make([]uint16, len(f))
		for i, v := range f {
			m.U16[i] = safetensors.F32ToF16(v)
		}
	}
	return m
}

func randVec(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

var dtypes = []model.DType{model.F32, model.BF16, model.F16}

// refGemm computes the products in float64 from the decoded weights (with
// bf16 weights, of the inputs rounded to bf16).
func refGemm(w *model.Matrix, bias, x []float32, n int) []float64 {
	out := make([]float64, n*w.Rows)
	row := make([]float32, w.Cols)
	for r := 0; r < w.Rows; r++ {
		w.RowF32(r, row)
		for t := 0; t < n; t++ {
			var s float64
			for i, v := range row {
				xi := x[t*w.Cols+i]
				if w.DType == model.BF16 {
					xi = refBF16(xi)
				}
				s += float64(v) * float64(xi)
			}
			if bias != nil {
				s += float64(bias[r])
			}
			out[t*w.Rows+r] = s
		}
	}
	return out
}

// TestGemmMatchesReference checks every kernel set against float64 sums, and
// the assembly against pure Go, over tile remainders and input tails.
func TestGemmMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sets := kernelSets(t)
	for _, dt := range dtypes {
		for _, shape := range [][3]int{{1, 8, 1}, {7, 13, 5}, {10, 64, 9}, {5, 3, 2}, {33, 100, 70}, {12, 576, 4}, {9, 64, 19}, {40, 96, 130}} {
			rows, in, n := shape[0], shape[1], shape[2]
			w := randMatrix(rng, dt, rows, in)
			x := randVec(rng, n*in)
			bias := randVec(rng, rows)
			want := refGemm(w, bias, x, n)
			got := map[string][]float32{}
			for name, ks := range sets {
				out := make([]float32, n*rows)
				ks.gemm(matrixView(w), bias, x, in, n, in, out, rows, 0, rows, ks.pack(x, in, n, in, dtIndex(dt), nil, nil))
				got[name] = out
				for i, v := range out {
					if d := math.Abs(float64(v) - want[i]); d > 1e-5*math.Sqrt(float64(in))*4 {
						t.Fatalf("%s %v %v: out[%d] = %g, want %g", name, dt, shape, i, v, want[i])
					}
				}
			}
			if z, ok := got["avx512"]; ok && !slices.Equal(z, got["asm"]) {
				t.Fatalf("%v %v: the AVX-512 pair kernels differ from the AVX2 ones", dt, shape)
			}
			if a, ok := got["asm"]; ok {
				for i := range a {
					if d := math.Abs(float64(a[i] - got["go"][i])); d > 1e-5*math.Sqrt(float64(in)) {
						t.Fatalf("%v %v: asm %g vs go %g", dt, shape, a[i], got["go"][i])
					}
				}
			}
		}
	}
}

// TestGemmBatchInvariant checks that an output element is bit-for-bit the same
// whether its token is computed alone or in a batch, and whatever row range
// (tile alignment) computes it, for every kernel set.
func TestGemmBatchInvariant(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for name, ks := range kernelSets(t) {
		for _, dt := range dtypes {
			const rows, in, n = 17, 75, 131 // crosses tokBlock, tile remainders and an input tail
			w := randMatrix(rng, dt, rows, in)
			x := randVec(rng, n*in)
			full := make([]float32, n*rows)
			ks.gemm(matrixView(w), nil, x, in, n, in, full, rows, 0, rows, ks.pack(x, in, n, in, dtIndex(dt), nil, nil))
			for tok := 0; tok < n; tok += 7 {
				alone := make([]float32, rows)
				ks.gemm(matrixView(w), nil, x[tok*in:], in, 1, in, alone, rows, 0, rows, ks.pack(x[tok*in:], in, 1, in, dtIndex(dt), nil, nil))
				if !slices.Equal(alone, full[tok*rows:(tok+1)*rows]) {
					t.Fatalf("%s %v: token %d alone differs from batched", name, dt, tok)
				}
			}
			// A different split of the rows (offset by one) gives the same bits.
			part := make([]float32, n*rows)
			ks.gemm(matrixView(w), nil, x, in, n, in, part, rows, 0, 1, ks.pack(x, in, n, in, dtIndex(dt), nil, nil))
			ks.gemm(matrixView(w), nil, x, in, n, in, part[1:], rows, 1, rows, ks.pack(x, in, n, in, dtIndex(dt), nil, nil))
			if !slices.Equal(part, full) {
				t.Fatalf("%s %v: row split changes results", name, dt)
			}
		}
	}
}

// TestMatmulThreads checks the threaded matmul against one thread, bit for bit.
func TestMatmulThreads(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, dt := range dtypes {
		w := randMatrix(rng, dt, 301, 96)
		x := randVec(rng, 37*96)
		a, b := make([]float32, 37*301), make([]float32, 37*301)
		(&Executor{threads: 1, pool: newWorkerPool(1)}).matmul(w, nil, x, 37, a)
		(&Executor{threads: 3, pool: newWorkerPool(3)}).matmul(w, nil, x, 37, b)
		if !slices.Equal(a, b) {
			t.Fatalf("%v: threads change results", dt)
		}
		one := make([]float32, 301)
		(&Executor{threads: 2, pool: newWorkerPool(2)}).matmul(w, nil, x[36*96:], 1, one)
		if !slices.Equal(one, a[36*301:]) {
			t.Fatalf("%v: decode row differs from prefill row", dt)
		}
	}
}

func TestWsum(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for name, ks := range kernelSets(t) {
		for _, c := range [][3]int{{0, 64, 64}, {1, 8, 8}, {5, 64, 192}, {37, 100, 130}, {3, 7, 9}, {9, 136, 136}} {
			n, cols, ldv := c[0], c[1], c[2]
			p, v := randVec(rng, n), randVec(rng, max(1, n*ldv))
			o := randVec(rng, cols) // overwritten
			ks.wsum(p, v, ldv, o)
			for col := range o {
				var want float64
				for j := range p {
					want += float64(p[j]) * float64(v[j*ldv+col])
				}
				if math.Abs(float64(o[col])-want) > 1e-5 {
					t.Fatalf("%s %v: o[%d] = %g, want %g", name, c, col, o[col], want)
				}
			}
		}
	}
}

func TestExpf(t *testing.T) {
	for x := float32(-87); x < 88; x += 0.0137 {
		got, want := float64(expf(x)), math.Exp(float64(x))
		if math.Abs(got-want) > 3e-7*want {
			t.Fatalf("expf(%g) = %g, want %g", x, got, want)
		}
	}
	if expf(-100) != 0 || !math.IsInf(float64(expf(100)), 1) || expf(0) != 1 {
		t.Fatalf("expf edge cases: %g %g %g", expf(-100), expf(100), expf(0))
	}
	if v := expf(float32(math.NaN())); v == v {
		t.Fatal("expf(NaN) is not NaN")
	}
	if s := silu(-200); s != 0 {
		t.Fatalf("silu(-200) = %g", s)
	}
}

// TestSiluMul holds the vectorised SwiGLU to the scalar silu bit for bit,
// over a sweep of the input range and its edges (expf's cut-offs, zeros,
// infinities, NaN), with lengths that leave a scalar tail.
func TestSiluMul(t *testing.T) {
	var g []float32
	for x := float32(-100); x < 100; x += 0.0731 {
		g = append(g, x)
	}
	inf := float32(math.Inf(1))
	g = append(g, 0, float32(math.Copysign(0, -1)), 88, 88.0001, -88, -88.0001, 87.3, -87.3, 87.2999, 87.3001, 1e-30, -1e-30, inf, -inf, float32(math.NaN()), 3, 5)
	rng := rand.New(rand.NewPCG(3, 4))
	u := make([]float32, len(g))
	for i := range u {
		u[i] = float32(rng.NormFloat64())
	}
	for _, n := range []int{len(g), len(g) - 3, 7, 8, 0} {
		got := slices.Clone(g[:n])
		siluMul(got, u)
		for i, x := range g[:n] {
			want := silu(x) * u[i]
			if math.Float32bits(got[i]) != math.Float32bits(want) && !(got[i] != got[i] && want != want) {
				t.Fatalf("n %d: silu(%g)*%g = %g (%#x), scalar %g (%#x)", n, x, u[i], got[i], math.Float32bits(got[i]), want, math.Float32bits(want))
			}
		}
	}
}

// TestTileZEveryShape runs every AVX-512 pair kernel (1-4 pairs × 1-6 rows,
// one and two tiles) with strided rows and outputs, and checks each sum is
// the AVX2 kernel's bit for bit and nothing else in out is written.
func TestTileZEveryShape(t *testing.T) {
	if !haveAVX512 {
		t.Skip("no AVX-512 on this machine")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	avx2, avx512 := kernelSet{asm: true}, kernelSet{asm: true, avx512: true}
	const in, rs, ldo = 40, 3, 29 // rows rs apart, outputs ldo apart per token
	for _, dt := range dtypes {
		w := randMatrix(rng, dt, 6*rs, in)
		wv := matrixView(w)
		for P := 1; P <= tileP; P++ {
			for R := 1; R <= tileRZ; R++ {
				for nt := 1; nt <= 2; nt++ {
					n := 2 * P * nt
					x := randVec(rng, n*in)
					if dt == model.BF16 { // the pack rounds; the AVX2 kernel reads x as is
						for i, v := range x {
							x[i] = bf16Value(v)
						}
					}
					xp := avx512.pack(x, in, n, in, dtIndex(dt), nil, nil)
					got := make([]float32, n*ldo)
					want := make([]float32, n*ldo)
					for i := range got {
						got[i] = -1e30 // never a sum here
						want[i] = -1e30
					}
					avx512.tileZ(&wv, 0, R, rs, xp, 0, P, nt, got, ldo)
					for rr := 0; rr < R; rr += tileR {
						avx2.tile(&wv, rr*rs, min(tileR, R-rr), rs, x, in, 0, 1, n, in&^7, want[rr*rs:], ldo)
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%v P=%d R=%d nt=%d: pair kernel\n%v\nwant\n%v", dt, P, R, nt, got, want)
					}
				}
			}
		}
	}
}

// TestLoRAB checks the LoRA up-projection against a float64 reference, the
// assembly against pure Go, and that out is added to, for ranks with and
// without a multiple-of-8 part and row counts around the 8-row blocks.
func TestLoRAB(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for name, ks := range kernelSets(t) {
		for _, r := range []int{1, 4, 8, 12, 16, 64} {
			for _, rows := range []int{1, 7, 8, 9, 17, 64} {
				b, u := randVec(rng, rows*r), randVec(rng, r)
				base := randVec(rng, rows)
				out := slices.Clone(base)
				ks.addLoRAB(b, r, u, out, 0.5)
				goOut := slices.Clone(base)
				loraBGo(b, r, u, goOut, 0.5)
				for o := range out {
					var want float64
					for i := range r {
						want += float64(b[o*r+i]) * float64(u[i])
					}
					want = float64(base[o]) + 0.5*want
					if d := math.Abs(float64(out[o]) - want); d > 1e-5*(1+math.Abs(want))*math.Sqrt(float64(r)) {
						t.Fatalf("%s r=%d rows=%d: out[%d] = %g, want %g", name, r, rows, o, out[o], want)
					}
					if d := math.Abs(float64(out[o] - goOut[o])); d > 1e-5*(1+math.Abs(want)) {
						t.Fatalf("%s r=%d rows=%d: out[%d] = %g, pure Go %g", name, r, rows, o, out[o], goOut[o])
					}
				}
				// A bf16 B: the same sums as over its values in float32, bit for bit.
				b16 := make([]uint16, len(b))
				for i, v := range b {
					b16[i] = toBF16(v)
					b[i] = math.Float32frombits(uint32(b16[i]) << 16)
				}
				want32, got16 := slices.Clone(base), slices.Clone(base)
				ks.addLoRAB(b, r, u, want32, 0.5)
				ks.addLoRAB16(b16, r, u, got16, 0.5)
				if !slices.Equal(got16, want32) {
					t.Fatalf("%s r=%d rows=%d: addLoRAB16 %v, addLoRAB over the same values %v", name, r, rows, got16, want32)
				}
			}
		}
	}
}

// refBF16 rounds x to the nearest bf16 value, ties to even, by comparing the
// two neighbouring bf16 values in float64 (an implementation independent of
// toBF16); subnormals flush to zero and NaN stays NaN.
func refBF16(x float32) float32 {
	if x != x {
		return x
	}
	if math.Abs(float64(x)) < 0x1p-126 {
		return float32(math.Copysign(0, float64(x)))
	}
	u := math.Float32bits(x)
	lo := math.Float32frombits(u &^ 0xffff)
	hi := math.Float32frombits(u&^0xffff + 0x10000) // the next bf16 away from zero (or Inf)
	dl, dh := math.Abs(float64(x)-float64(lo)), math.Abs(float64(hi)-float64(x))
	if math.IsInf(float64(hi), 0) {
		dh = 0x1p128 - math.Abs(float64(x)) // Inf is where 2¹²⁸ would be
	}
	if dl < dh || dl == dh && (u>>16)&1 == 0 {
		return lo
	}
	return hi
}

// TestToBF16 checks the rounding of inputs for bf16 products against
// refBF16 and at its edges: ties to even, overflow to infinity, NaN,
// subnormals.
func TestToBF16(t *testing.T) {
	for _, c := range []struct{ in, want uint32 }{
		{0x3f800000, 0x3f80}, {0x3f808000, 0x3f80}, {0x3f818000, 0x3f82}, {0x3f808001, 0x3f81},
		{0xbf818000, 0xbf82}, {0x7f7fffff, 0x7f80}, {0x7f800000, 0x7f80}, {0xff800000, 0xff80},
		{0x00000001, 0x0000}, {0x807fffff, 0x8000}, {0x00800000, 0x0080},
	} {
		if got := toBF16(math.Float32frombits(c.in)); uint32(got) != c.want {
			t.Errorf("toBF16(%#08x) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if v := bf16Value(math.Float32frombits(0x7f800001)); v == v {
		t.Errorf("NaN rounds to %g", v)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	// The vector rounding (VCVTNE2PS2BF16 where the CPU has it) is toBF16,
	// NaNs, infinities and subnormals included, over a length with a tail.
	x := make([]float32, 1<<16+13)
	for i := range x {
		x[i] = math.Float32frombits(rng.Uint32())
		if i%7 == 0 { // subnormals and NaNs are rare among random bits
			x[i] = math.Float32frombits(rng.Uint32()&0x807fffff | uint32(rng.IntN(2))*0x7f800000)
		}
	}
	got := make([]uint16, len(x))
	packBF16Asm(x, got)
	for i, v := range x {
		if want := toBF16(v); got[i] != want {
			t.Fatalf("packBF16Asm(%#08x) = %#04x, toBF16 %#04x", math.Float32bits(v), got[i], want)
		}
	}
	for range 1 << 20 {
		x := math.Float32frombits(rng.Uint32())
		if x != x {
			continue
		}
		if got, want := bf16Value(x), refBF16(x); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("bf16(%g = %#08x) = %#08x, want %#08x", x, math.Float32bits(x), math.Float32bits(got), math.Float32bits(want))
		}
	}
}

// dotBF16Go is the sum the AVX512_BF16 kernels compute for one weight row
// and one token over the first k32 elements (a multiple of 32), both bf16:
// lane i of 16 adds, per chunk of 32, the products of elements 2i+1 and
// then 2i (VDPBF16PS's order; each product of two bf16 values is exact in
// float32, so only the adds round), then lane i and i+8 add and reduce8
// sums the eight.
func dotBF16Go(w, x []uint16, k32 int) float32 {
	var acc [16]float32
	f := func(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }
	for c := 0; c < k32; c += 32 {
		for i := range acc {
			acc[i] += f(w[c+2*i+1]) * f(x[c+2*i+1])
			acc[i] += f(w[c+2*i]) * f(x[c+2*i])
		}
	}
	var a [8]float32
	for i := range a {
		a[i] = acc[i] + acc[i+8]
	}
	return reduce8(&a)
}

// TestTileBEveryShape runs every AVX512_BF16 kernel (1-8 tokens × 1-3
// rows, one and two tiles) with strided rows and outputs, and checks each
// sum is dotBF16Go's bit for bit and nothing else in out is written. It
// then checks whole products (tails, bias, row splits) against the same
// sums.
func TestTileBEveryShape(t *testing.T) {
	if !haveBF16Dot {
		t.Skip("no AVX512_BF16 on this machine")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	ks := kernelSet{asm: true, avx512: true, bf16dot: true}
	const in, rs, ldo = 96, 3, 29
	w := randMatrix(rng, model.BF16, 3*rs, in)
	wv := matrixView(w)
	for T := 1; T <= tileTB; T++ {
		for R := 1; R <= tileRB; R++ {
			for nt := 1; nt <= 2; nt++ {
				n := T * nt
				x := randVec(rng, n*in)
				xp := ks.pack(x, in, n, in, dtBF16, nil, nil)
				got := make([]float32, n*ldo)
				want := make([]float32, n*ldo)
				for i := range got {
					got[i], want[i] = -1e30, -1e30 // never a sum here
				}
				ks.tileB(&wv, 0, R, rs, xp, 0, T, nt, got, ldo)
				for tt := 0; tt < n; tt++ {
					for r := 0; r < R; r++ {
						want[tt*ldo+r*rs] = dotBF16Go(w.U16[r*rs*in:], xp.b16[tt*in:], in)
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("T=%d R=%d nt=%d:\n%v\nwant\n%v", T, R, nt, got, want)
				}
			}
		}
	}
	for _, shape := range [][3]int{{1, 32, 1}, {7, 45, 5}, {10, 64, 9}, {5, 3, 2}, {13, 100, 70}, {12, 576, 8}, {4, 31, 3}} {
		rows, in, n := shape[0], shape[1], shape[2]
		w := randMatrix(rng, model.BF16, rows, in)
		x, bias := randVec(rng, n*in), randVec(rng, rows)
		out := make([]float32, n*rows)
		ks.gemm(matrixView(w), bias, x, in, n, in, out, rows, 0, rows, nil)
		xb := make([]uint16, len(x))
		for i, v := range x {
			xb[i] = toBF16(v)
		}
		k32 := in &^ 31
		for tt := 0; tt < n; tt++ {
			for r := 0; r < rows; r++ {
				s := dotBF16Go(w.U16[r*in:], xb[tt*in:], k32)
				for i := k32; i < in; i++ {
					s += math.Float32frombits(uint32(w.U16[r*in+i])<<16) * math.Float32frombits(uint32(xb[tt*in+i])<<16)
				}
				s += bias[r]
				if got := out[tt*rows+r]; math.Float32bits(got) != math.Float32bits(s) {
					t.Fatalf("%v: out[%d, %d] = %g, want %g", shape, tt, r, got, s)
				}
			}
		}
	}
}

// TestGemmExactBF16 checks that with exactBF16 a product over bf16 weights
// reads its inputs unrounded: it equals, bit for bit, the same kernel set's
// product over those weights stored f32, and differs from the rounded one.
func TestGemmExactBF16(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for name, ks := range kernelSets(t) {
		ks.exactBF16, ks.bf16dot = true, false
		for _, shape := range [][3]int{{1, 8, 1}, {7, 13, 5}, {33, 100, 70}, {12, 576, 8}, {10, 1100, 9}} {
			rows, in, n := shape[0], shape[1], shape[2]
			w := randMatrix(rng, model.BF16, rows, in)
			w32 := &model.Matrix{Rows: rows, Cols: in, DType: model.F32, F32: make([]float32, rows*in)}
			for r := range rows {
				w.RowF32(r, w32.F32[r*in:(r+1)*in])
			}
			x, bias := randVec(rng, n*in), randVec(rng, rows)
			got, want, rounded := make([]float32, n*rows), make([]float32, n*rows), make([]float32, n*rows)
			ks.gemm(matrixView(w), bias, x, in, n, in, got, rows, 0, rows, ks.pack(x, in, n, in, dtBF16, nil, nil))
			ks.gemm(matrixView(w32), bias, x, in, n, in, want, rows, 0, rows, ks.pack(x, in, n, in, dtF32, nil, nil))
			if !slices.Equal(got, want) {
				t.Fatalf("%s %v: exact bf16 product differs from the f32 one (max |Δ| %g)", name, shape, refcaseMaxAbsDiff(got, want))
			}
			native.gemm(matrixView(w), bias, x, in, n, in, rounded, rows, 0, rows, nil)
			if slices.Equal(got, rounded) {
				t.Fatalf("%s %v: exact and rounded inputs gave the same product", name, shape)
			}
		}
	}
}

func refcaseMaxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
	}
	return d
}

// TestExpSum checks the softmax's exponentials and their sum: the kernel
// sets are bit for bit the scalar loop in expSum's order (expf per element,
// eight lanes, reduce8, then the tail), and that sum is within float32
// rounding of a float64 one; maxOf is the sequential maximum.
func TestExpSum(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 64, 97, 1001} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 8)
		}
		if n > 2 {
			x[1] = -200 // underflows to 0
		}
		if n == 33 { // around expf's underflow cut (y < -87.3 gives 0), in both kernels' lanes
			x[0], x[5], x[6], x[20], x[21] = 60, 60-87.2, 60-87.4, 60-87.3, 60-87.35
		}
		seq := float32(math.Inf(-1))
		for _, v := range x {
			seq = max(seq, v)
		}
		for name, ks := range kernelSets(t) {
			if m := ks.maxOf(x); m != seq {
				t.Fatalf("%s n %d: maxOf %g, sequential %g", name, n, m, seq)
			}
			for p := range x { // the largest element in every lane and chain
				v := x[p]
				x[p] = 1e4
				if m := ks.maxOf(x); m != 1e4 {
					t.Fatalf("%s n %d: maxOf %g with 1e4 at %d", name, n, m, p)
				}
				x[p] = v
			}
		}
		m := seq
		var lanes [8]float32
		want := make([]float32, n)
		for i, v := range x {
			want[i] = expf(v - m)
		}
		for i := 0; i < n&^7; i++ {
			lanes[i%8] += want[i]
		}
		wantSum := reduce8(&lanes)
		for i := n &^ 7; i < n; i++ {
			wantSum += want[i]
		}
		var ref float64
		for i := range x {
			ref += math.Exp(float64(x[i] - m))
		}
		for name, ks := range kernelSets(t) {
			p := slices.Clone(x)
			got := ks.expSum(p, m)
			if math.Float32bits(got) != math.Float32bits(wantSum) || !slices.Equal(p, want) {
				t.Fatalf("%s n %d: sum %g, want %g (or elements differ)", name, n, got, wantSum)
			}
			if d := math.Abs(float64(got) - ref); d > 1e-6*max(ref, 1)*float64(n+1) {
				t.Fatalf("%s n %d: sum %g, float64 %g", name, n, got, ref)
			}
		}
	}
	if v := (kernelSet{}).maxOf([]float32{1, float32(math.NaN()), 3, 2, 5}); v == v {
		t.Errorf("maxOf with a NaN = %g", v)
	}
}

// TestWsumG checks the several-head weighted sum against wsum head by head,
// bit for bit, for head counts around the kernels' four, head sizes with
// and without a 16-column part and a tail, and strided rows.
func TestWsumG(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	for name, ks := range kernelSets(t) {
		for _, G := range []int{1, 2, 3, 4, 5, 6, 9, 12} {
			for _, hd := range []int{8, 16, 24, 64, 100, 128} {
				for _, n := range []int{0, 1, 7, 33} {
					ldv, ldp, ldo := hd+5, n+3, hd+2
					v := randVec(rng, max(n, 1)*ldv)
					p := randVec(rng, G*ldp)
					got := make([]float32, G*ldo)
					for i := range got {
						got[i] = -1e30
					}
					want := slices.Clone(got)
					ks.wsumG(p, ldp, G, v, ldv, n, got, ldo, hd)
					for g := range G {
						ks.wsum(p[g*ldp:g*ldp+n], v, ldv, want[g*ldo:g*ldo+hd])
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%s G=%d hd=%d n=%d: differs from wsum per head", name, G, hd, n)
					}
				}
			}
		}
	}
}

// TestScoresKT checks the key-transposed score kernels against a float64
// reference, and the AVX-512 and AVX2 ones against each other bit for bit,
// for head counts around the kernels' four, block counts around their four
// and head sizes from 1 to 128; nothing outside the scores is written.
func TestScoresKT(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	sets := kernelSets(t)
	for _, G := range []int{1, 2, 3, 4, 5, 6, 9, 12} {
		for _, hd := range []int{1, 16, 24, 64, 128} {
			for _, nb := range []int{1, 2, 3, 4, 5, 9} {
				ldk, ldo := 16*nb+7, 16*nb+3
				q, kt := randVec(rng, G*hd), randVec(rng, hd*ldk)
				got := map[string][]float32{}
				for name, ks := range sets {
					o := make([]float32, G*ldo)
					for i := range o {
						o[i] = -1e30
					}
					ks.scoresKT(q, G, hd, kt, ldk, o, ldo, nb)
					for g := range G {
						for j := range ldo {
							v := o[g*ldo+j]
							if j >= 16*nb {
								if v != -1e30 {
									t.Fatalf("%s G=%d hd=%d nb=%d: o[%d, %d] written", name, G, hd, nb, g, j)
								}
								continue
							}
							var ref float64
							for c := range hd {
								ref += float64(q[g*hd+c]) * float64(kt[c*ldk+j])
							}
							if d := math.Abs(float64(v) - ref); d > 1e-5*math.Sqrt(float64(hd))*4 {
								t.Fatalf("%s G=%d hd=%d nb=%d: score[%d, %d] = %g, want %g", name, G, hd, nb, g, j, v, ref)
							}
						}
					}
					got[name] = o
				}
				if z, ok := got["avx512"]; ok && !slices.Equal(z, got["asm"]) {
					t.Fatalf("G=%d hd=%d nb=%d: AVX-512 and AVX2 score kernels differ", G, hd, nb)
				}
			}
		}
	}
}

// TestBF16DotSubnormalWeights pins down what VDPBF16PS does with subnormal
// bf16 weights: it reads them as zero (inputs never are subnormal: toBF16
// flushes them). The widening kernels (AVX-512 and AVX2 over f32 inputs, and
// pure Go) multiply them as they are. Each subnormal weight w moves a sum by
// |w·x| < 1.2e-38·|x|: row 0, all subnormal, against inputs near 1e30 sums
// to about 1e-9 on the widening kernels and to exactly 0 on VDPBF16PS.
func TestBF16DotSubnormalWeights(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	const rows, in, n = 6, 96, 3
	w := randMatrix(rng, model.BF16, rows, in)
	flushed := slices.Clone(w.U16)
	for i := range w.U16 {
		if i < in || i%3 == 0 { // row 0 and a third of the rest: subnormal, either sign
			w.U16[i] = uint16(1+rng.IntN(0x7f)) | uint16(rng.IntN(2))<<15
			flushed[i] = 0
		}
	}
	x := randVec(rng, n*in)
	xb := make([]uint16, len(x))
	for i := range x {
		x[i] *= 1e30
		xb[i] = toBF16(x[i])
	}
	f := func(b uint16) float64 { return float64(math.Float32frombits(uint32(b) << 16)) }
	run := func(ks kernelSet) []float32 {
		out := make([]float32, n*rows)
		ks.gemm(matrixView(w), nil, x, in, n, in, out, rows, 0, rows, nil)
		return out
	}
	// The widening kernel sets convert the weights to f32 and multiply.
	for _, ks := range []kernelSet{{}, {asm: haveAsm}, {asm: haveAsm, avx512: haveAVX512}} {
		widened := run(ks)
		for tt := range n {
			for r := range rows {
				var ref, mag float64
				for i := range in {
					p := f(w.U16[r*in+i]) * f(xb[tt*in+i])
					ref, mag = ref+p, mag+math.Abs(p)
				}
				if g := float64(widened[tt*rows+r]); math.Abs(g-ref) > 1e-6*mag || r == 0 && g == 0 {
					t.Errorf("%+v: out[%d, %d] = %g, want %g (subnormal weights multiplied)", ks, tt, r, g, ref)
				}
			}
		}
	}
	if !haveBF16Dot {
		t.Skip("no AVX512_BF16 on this machine")
	}
	got := run(kernelSet{asm: true, avx512: true, bf16dot: true})
	for tt := range n {
		for r := range rows {
			want := dotBF16Go(flushed[r*in:], xb[tt*in:], in)
			if g := got[tt*rows+r]; math.Float32bits(g) != math.Float32bits(want) || r == 0 && g != 0 {
				t.Errorf("VDPBF16PS out[%d, %d] = %g, want %g (the sum with subnormal weights read as zero)", tt, r, g, want)
			}
		}
	}
}
