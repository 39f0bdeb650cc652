package cpu

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/hugepages"
)

// The matrix products of the executor are built from tiles: one call computes
// the dot products of T ≤ tileT input rows (tokens) with R ≤ tileR weight
// rows, each with one 8-lane accumulator that walks the first in&^7 elements
// in order, reduced by reduce8; the last in%8 products are then added one by
// one, then the bias. The summation order of one output element therefore
// depends only on the input length, never on the batch or on which tile the
// element lands in, so a row batched with others equals the row alone bit for
// bit.
//
// A product with bf16 weights multiplies inputs rounded to bf16 (to nearest,
// ties to even; subnormals to zero), as llama.cpp does on CPUs with
// AVX512_BF16: each product of two bf16 values is exact in float32 and the
// sums stay float32. On such CPUs one VDPBF16PS then does the work of
// widening the weights and two FMAs (tileB); elsewhere the float32 kernels
// read the rounded inputs. With Options.ExactBF16Inputs (kernelSet.exactBF16)
// the float32 kernels read the inputs unrounded, summing exactly as they do
// over the same weights stored f32.
const (
	tileT = 4 // tokens per tile
	tileR = 3 // weight rows per tile
	// smallBatch is the most tokens for which a product is treated as bound
	// by memory bandwidth: long weight streams over big chunks (see gemm,
	// Executor.matmuls).
	smallBatch = 16
	// tokBlock tokens' inputs stay in cache while a chunk of weight rows
	// streams past them, so each weight row is read from memory once per
	// tokBlock tokens.
	tokBlock = 64
)

// Weight storage types as indices of tileTab.
const (
	dtF32 = iota
	dtBF16
	dtF16
)

func dtIndex(d model.DType) int {
	switch d {
	case model.BF16:
		return dtBF16
	case model.F16:
		return dtF16
	}
	return dtF32
}

// kernelSet selects the implementation of the tile kernels: the AVX2/FMA
// assembly (with, where the CPU has AVX-512, kernels that run two tokens per
// 512-bit FMA for inputs packed in pairs, summing exactly as the AVX2 ones),
// or pure Go loops that compute the same sums in the same order (rounding
// products and sums separately instead of fusing them, so Go and assembly
// differ in the last bits).
//
// bf16dot adds, where the CPU has AVX512_BF16, the kernels that multiply bf16
// weights with one VDPBF16PS per 32 pairs (tileB). They sum in another order
// than the float32 kernels, so their results differ from the other sets' in
// the last bits.
//
// exactBF16 makes products with bf16 weights read their inputs unrounded
// (and so never on the bf16dot kernels).
type kernelSet struct{ asm, avx512, bf16dot, exactBF16 bool }

// native is the kernel set for this CPU; it is fixed at init.
var native = kernelSet{asm: haveAsm, avx512: haveAVX512, bf16dot: haveBF16Dot}

// tileP and tileRZ are the token pairs and weight rows of an AVX-512 tile.
const tileP, tileRZ = 4, 6

// tileTB and tileRB are the tokens and weight rows of an AVX512_BF16 tile.
const tileTB, tileRB = 8, 3

// packed is a product's input x[n, in] prepared once for the kernels that
// read it, for weights of type dt.
//
// For bf16 weights on a set with bf16dot, b16 holds token t's first k32
// inputs rounded to bf16 at b16[t*k32:]. For bf16 weights on other sets,
// round holds all of x rounded to bf16 values ([n, in], row-major), and the
// pairs below are packed from it.
//
// data holds the pairs the AVX-512 kernels read (nil if none): pair q
// (tokens 2q and 2q+1) at data[q*2*k8:], its chunk c (elements 8c..8c+7 of
// both tokens, side by side) at data[q*2*k8+16c:]. With perm, each token's
// eight elements of a chunk come in the order 0,2,4,6,1,3,5,7, the order the
// bf16 pair kernels widen weights in. A trailing odd token is not packed.
type packed struct {
	dt    int
	data  []float32
	k8    int
	perm  bool
	round []float32
	b16   []uint16
	k32   int
	buf   []float32 // the storage of all of the above, for reuse
}

// toBF16 rounds x to the nearest bf16, ties to even, as VCVTNEPS2BF16 does:
// subnormals become zero of the same sign, NaNs stay (quiet) NaNs.
func toBF16(x float32) uint16 {
	u := math.Float32bits(x)
	switch {
	case u&0x7f800000 == 0:
		return uint16(u>>16) & 0x8000
	case u&0x7fffffff > 0x7f800000:
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u >> 16 & 1)) >> 16)
}

// bf16Value returns x rounded to bf16 (toBF16), as a float32.
func bf16Value(x float32) float32 { return math.Float32frombits(uint32(toBF16(x)) << 16) }

// pack returns x prepared for this kernel set and weights of type dt (a dt*
// index), or nil where nothing needs preparing: inputs that are not rounded
// (weights other than bf16, or exactBF16) on a set without AVX-512 or with
// fewer than two tokens. buf is reused when large
// enough. fill, if not nil, runs the packing of units [u0, u1) of [0, nu)
// (across threads); nil packs them all here.
func (ks kernelSet) pack(x []float32, ldx, n, in, dt int, buf []float32, fill func(nu int, f func(u0, u1 int))) *packed {
	if n == 0 {
		return nil
	}
	run := func(nu int, f func(u0, u1 int)) {
		if fill != nil && nu > 1 {
			fill(nu, f)
		} else {
			f(0, nu)
		}
	}
	round := dt == dtBF16 && !ks.exactBF16
	if round && ks.bf16dot {
		k32 := in &^ 31
		size := (n*k32 + 1) / 2
		if cap(buf) < size {
			buf = make([]float32, size)
		}
		buf = buf[:cap(buf)]
		p := &packed{dt: dt, k32: k32, buf: buf}
		if k32 > 0 {
			p.b16 = unsafe.Slice((*uint16)(unsafe.Pointer(&buf[0])), 2*len(buf))[:n*k32]
		}
		if n*k32 <= 1<<14 {
			// A decode step's inputs: rounding them here beat handing
			// them to both threads (8-sequence bf16 steps, alternating in
			// one process: 1.5–3% faster), since the rounding takes less
			// than the threads take to meet.
			fill = nil
		}
		run(n, func(t0, t1 int) {
			for t := t0; t < t1; t++ {
				packBF16Asm(x[t*ldx:t*ldx+k32], p.b16[t*k32:(t+1)*k32])
			}
		})
		return p
	}
	k8 := in &^ 7
	pairs := ks.avx512 && n >= 2 && k8 > 0
	var size, np int
	if pairs {
		np = n / 2
		size = np * 2 * k8
	}
	if round {
		size += n * in
	} else if !pairs {
		return nil
	}
	if cap(buf) < size {
		buf = make([]float32, size)
	}
	p := &packed{dt: dt, k8: k8, perm: dt == dtBF16, buf: buf[:cap(buf)]}
	if round {
		p.round = buf[:n*in]
		run(n, func(t0, t1 int) {
			for t := t0; t < t1; t++ {
				src, dst := x[t*ldx:t*ldx+in], p.round[t*in:(t+1)*in]
				for i, v := range src {
					dst[i] = bf16Value(v)
				}
			}
		})
		x, ldx = p.round, in
	}
	if pairs {
		p.data = buf[size-np*2*k8 : size]
		run(np, func(q0, q1 int) { p.fill(x, ldx, q0, q1) })
	}
	return p
}

// fill packs pairs [q0, q1) of x into p.
func (p *packed) fill(x []float32, ldx, q0, q1 int) {
	k8 := p.k8
	var order [8]int // element of a chunk in each lane
	for i := range order {
		order[i] = i
		if p.perm {
			order[i] = i%4*2 + i/4
		}
	}
	for q := q0; q < q1; q++ {
		x0, x1 := x[2*q*ldx:2*q*ldx+k8], x[(2*q+1)*ldx:(2*q+1)*ldx+k8]
		dst := p.data[q*2*k8 : (q+1)*2*k8]
		for c := 0; c < k8; c += 8 {
			d, a, b := dst[2*c:2*c+16:2*c+16], x0[c:c+8:c+8], x1[c:c+8:c+8]
			for i, e := range order {
				d[i] = a[e&7]
				d[8+i] = b[e&7]
			}
		}
	}
}

// wmat is a strided view of a weight matrix: row r starts at element r*ld of
// f32 (dt == dtF32) or u16.
type wmat struct {
	dt  int
	f32 []float32
	u16 []uint16
	ld  int
}

func matrixView(w *model.Matrix) wmat {
	return wmat{dt: dtIndex(w.DType), f32: w.F32, u16: w.U16, ld: w.Cols}
}

// at returns element (r, i) as float32.
func (w *wmat) at(r, i int) float32 {
	switch w.dt {
	case dtBF16:
		return math.Float32frombits(uint32(w.u16[r*w.ld+i]) << 16)
	case dtF16:
		return f16ToF32(w.u16[r*w.ld+i])
	}
	return w.f32[r*w.ld+i]
}

// rows returns a pointer to row r for a kernel that reads the first k8
// elements of rows r, r+rs, ..., r+(R-1)*rs, after checking they lie inside w.
func (w *wmat) rows(r, R, rs, k8 int) unsafe.Pointer {
	last := (r+(R-1)*rs)*w.ld + k8 - 1
	if w.dt == dtF32 {
		_ = w.f32[last]
		return unsafe.Pointer(&w.f32[r*w.ld])
	}
	_ = w.u16[last]
	return unsafe.Pointer(&w.u16[r*w.ld])
}

// f16ToF32 widens an IEEE half, as VCVTPH2PS does.
func f16ToF32(h uint16) float32 { return safetensors.F16ToF32(h) }

// gemm computes out[t*ldo + r-r0] = W[r]·x[t] (+ bias[r]) for tokens t < n
// and weight rows r in [r0, r1), where x[t] = x[t*ldx : t*ldx+in]. xp is nil
// or x packed by ks.pack, which the AVX-512 kernels then read.
//
// A tile's weight rows (tileR of them, tileRZ for the AVX-512 kernels) are
// not neighbours but lie m = (r1-r0)/rows-per-tile apart, and consecutive
// tiles move one row on, so the tiles read the range as a few long
// sequential streams. Neighbouring rows would make streams of one row each
// (2.3 KB at the 135M shape), too short for the hardware prefetcher:
// measured here, a 1-token product over the 49152×576 head streamed at
// 15 GB/s per core that way and 28 GB/s as long streams.
//
// With bf16 weights x is first rounded to bf16 (from xp, packed for bf16
// weights, or packed here when xp is not).
func (ks kernelSet) gemm(w wmat, bias, x []float32, ldx, n, in int, out []float32, ldo, r0, r1 int, xp *packed) {
	if n == 0 || r0 >= r1 {
		return
	}
	if w.dt == dtBF16 && !ks.exactBF16 {
		if xp == nil || xp.dt != dtBF16 {
			xp = ks.pack(x, ldx, n, in, dtBF16, nil, nil)
		}
		if ks.bf16dot {
			ks.gemmB(w, bias, x, ldx, n, in, out, ldo, r0, r1, xp)
			return
		}
		x, ldx = xp.round, in
	} else if xp != nil && (xp.dt == dtBF16) != (w.dt == dtBF16) {
		xp = nil // packed for weights of another type
	}
	if xp != nil && xp.data == nil {
		xp = nil
	}
	k8 := in &^ 7
	// Three streams read memory faster than six (40 vs 36 GB/s on one core
	// here), which is what counts for a token or a few; from about 8 tokens
	// six rows per AVX-512 tile, reusing each input load twice as often, win
	// (8-sequence decode: bf16 476–496 -> 522–537 tok/s, f32 320–362 ->
	// 368–391, same runs).
	RT := tileR
	if xp != nil && n > tileT {
		RT = tileRZ
	}
	m := (r1 - r0) / RT
	tail := r0 + m*RT
	for tb := 0; tb < n; tb += tokBlock {
		te := min(tb+tokBlock, n)
		full, rem := (te-tb)/tileT, (te-tb)%tileT
		// narrow runs T-token tiles over R ≤ tileR rows at a time.
		narrow := func(r, R, rs, t, T, nt int, o []float32) {
			for rr := 0; rr < R; rr += tileR {
				ks.tile(&w, r+rr*rs, min(tileR, R-rr), rs, x, ldx, t, T, nt, k8, o[rr*rs:], ldo)
			}
		}
		tiles := func(r, R, rs int) {
			o := out[r-r0:]
			if xp != nil { // tb is even: tokBlock is
				np := (te - tb) / 2
				if fp := np / tileP; fp > 0 {
					ks.tileZ(&w, r, R, rs, xp, tb/2, tileP, fp, o, ldo)
				}
				if rp := np % tileP; rp > 0 {
					ks.tileZ(&w, r, R, rs, xp, tb/2+np/tileP*tileP, rp, 1, o, ldo)
				}
				if (te-tb)%2 == 1 {
					narrow(r, R, rs, te-1, 1, 1, o)
				}
				return
			}
			if full > 0 {
				narrow(r, R, rs, tb, tileT, full, o)
			}
			if rem > 0 {
				narrow(r, R, rs, tb+full*tileT, rem, 1, o)
			}
		}
		for j := 0; j < m; j++ {
			tiles(r0+j, RT, m)
		}
		if tail < r1 {
			tiles(tail, r1-tail, 1)
		}
	}
	addTail(w, bias, x, ldx, n, in, k8, out, ldo, r0, r1, false)
}

// gemmB is gemm for bf16 weights on a set with bf16dot, xp holding the
// inputs rounded to bf16: tiles of up to tileTB tokens × tileRB rows, rows
// m apart as in gemm.
func (ks kernelSet) gemmB(w wmat, bias, x []float32, ldx, n, in int, out []float32, ldo, r0, r1 int, xp *packed) {
	m := (r1 - r0) / tileRB
	tail := r0 + m*tileRB
	for tb := 0; tb < n; tb += tokBlock {
		te := min(tb+tokBlock, n)
		full, rem := (te-tb)/tileTB, (te-tb)%tileTB
		tiles := func(r, R, rs int) {
			o := out[r-r0:]
			if full > 0 {
				ks.tileB(&w, r, R, rs, xp, tb, tileTB, full, o, ldo)
			}
			if rem > 0 {
				ks.tileB(&w, r, R, rs, xp, tb+full*tileTB, rem, 1, o, ldo)
			}
		}
		for j := 0; j < m; j++ {
			tiles(r0+j, tileRB, m)
		}
		if tail < r1 {
			tiles(tail, r1-tail, 1)
		}
	}
	addTail(w, bias, x, ldx, n, in, xp.k32, out, ldo, r0, r1, true)
}

// addTail adds to out[t*ldo + r-r0] the products of elements [k, in) of
// weight row r and token t, one by one (with the input rounded to bf16 if
// round), then the bias.
func addTail(w wmat, bias, x []float32, ldx, n, in, k int, out []float32, ldo, r0, r1 int, round bool) {
	if k == in && bias == nil {
		return
	}
	for t := 0; t < n; t++ {
		xt := x[t*ldx : t*ldx+in]
		o := out[t*ldo : t*ldo+r1-r0]
		for j := range o {
			s := o[j]
			for i := k; i < in; i++ {
				v := xt[i]
				if round {
					v = bf16Value(v)
				}
				s += w.at(r0+j, i) * v
			}
			if bias != nil {
				s += bias[r0+j]
			}
			o[j] = s
		}
	}
}

// tile writes out[tt*ldo+rr*rs] = the 8-lane dot product of the first k8
// elements of weight row r+rr*rs and token t+tt, for rr < R and tt < T*nt.
func (ks kernelSet) tile(w *wmat, r, R, rs int, x []float32, ldx, t, T, nt, k8 int, out []float32, ldo int) {
	nT := T * nt
	last := (t+nT-1)*ldo + (R-1)*rs // last element of out written
	if k8 == 0 {
		for tt := 0; tt < nT; tt++ {
			for rr := range R {
				out[(t+tt)*ldo+rr*rs] = 0
			}
		}
		return
	}
	if ks.asm {
		_ = x[(t+nT-1)*ldx+k8-1] // bounds
		_ = out[last]
		tileAsm(w.dt, T, R, w.rows(r, R, rs, k8), rs*w.ld, &x[t*ldx], ldx, k8, &out[t*ldo], ldo, nt, rs)
		return
	}
	for tt := 0; tt < nT; tt++ {
		xt := x[(t+tt)*ldx : (t+tt)*ldx+k8]
		o := out[(t+tt)*ldo:]
		for rr := range R {
			o[rr*rs] = dot8Go(w, r+rr*rs, xt)
		}
	}
}

// tileB is tile for the AVX512_BF16 kernels: nt tiles of T tokens from
// token t of xp.
func (ks kernelSet) tileB(w *wmat, r, R, rs int, xp *packed, t, T, nt int, out []float32, ldo int) {
	nT := T * nt
	k32 := xp.k32
	if k32 == 0 {
		for tt := t; tt < t+nT; tt++ {
			for rr := range R {
				out[tt*ldo+rr*rs] = 0
			}
		}
		return
	}
	_ = xp.b16[(t+nT)*k32-1]
	_ = out[(t+nT-1)*ldo+(R-1)*rs]
	tileBAsm(T, R, w.rows(r, R, rs, k32), rs*w.ld, &xp.b16[t*k32], k32, k32, &out[t*ldo], ldo, nt, rs)
}

// tileZ is tile for the AVX-512 pair kernels: nt tiles of P pairs from pair
// q of xp.
func (ks kernelSet) tileZ(w *wmat, r, R, rs int, xp *packed, q, P, nt int, out []float32, ldo int) {
	nP := P * nt
	ld := 2 * xp.k8
	_ = xp.data[(q+nP)*ld-1]
	_ = out[(2*(q+nP)-1)*ldo+(R-1)*rs]
	tileZAsm(w.dt, P, R, w.rows(r, R, rs, xp.k8), rs*w.ld, &xp.data[q*ld], ld, xp.k8, &out[2*q*ldo], ldo, nt, rs)
}

// dot8Go is the pure-Go tile kernel for one (row, token) pair.
func dot8Go(w *wmat, r int, x []float32) float32 {
	var acc [8]float32
	k8 := len(x)
	base := r * w.ld
	switch w.dt {
	case dtF32:
		row := w.f32[base : base+k8]
		for i := 0; i < k8; i += 8 {
			a, b := row[i:i+8:i+8], x[i:i+8:i+8]
			for l := range 8 {
				acc[l] += a[l] * b[l]
			}
		}
	case dtBF16:
		row := w.u16[base : base+k8]
		for i := 0; i < k8; i += 8 {
			a, b := row[i:i+8:i+8], x[i:i+8:i+8]
			for l := range 8 {
				acc[l] += math.Float32frombits(uint32(a[l])<<16) * b[l]
			}
		}
	default:
		row := w.u16[base : base+k8]
		for i := 0; i < k8; i += 8 {
			a, b := row[i:i+8:i+8], x[i:i+8:i+8]
			for l := range 8 {
				acc[l] += f16ToF32(a[l]) * b[l]
			}
		}
	}
	return reduce8(&acc)
}

// expSum sets p[i] = expf(p[i]-m) and returns the sum of the new p: lane
// i%8 adds p[i] in order for i < len(p)&^7, the lanes add as reduce8 does,
// then the rest follow one by one, so the sum's order depends only on
// len(p). The assembly computes the same bits (expf's very operations, no
// fused multiply-adds).
func (ks kernelSet) expSum(p []float32, m float32) float32 {
	var lanes [8]float32
	n8 := len(p) &^ 7
	i := 0
	if n16 := len(p) &^ 15; ks.avx512 && n16 > 0 {
		expSumZAVX(&p[0], n16, m, &lanes)
		i = n16
	}
	if ks.asm && n8 > i {
		expSumAVX(&p[i], n8-i, m, &lanes)
		i = n8
	}
	for ; i < n8; i++ {
		e := expf(p[i] - m)
		p[i] = e
		lanes[i%8] += e
	}
	s := reduce8(&lanes)
	for ; i < len(p); i++ {
		e := expf(p[i] - m)
		p[i] = e
		s += e
	}
	return s
}

// maxOf returns the largest element of v (-Inf if v is empty). Without NaNs
// it is a loop in order's result (max is exact, so chains and lanes change
// nothing but a zero's sign); with the assembly a NaN may or may not win,
// fixed by len(v).
func (ks kernelSet) maxOf(v []float32) float32 {
	inf := float32(math.Inf(-1))
	m := [4]float32{inf, inf, inf, inf}
	i := 0
	if n := len(v) &^ 31; ks.asm && n > 0 {
		m[0] = maxAVX(&v[0], n)
		i = n
	}
	for ; i+4 <= len(v); i += 4 {
		m[0], m[1], m[2], m[3] = max(m[0], v[i]), max(m[1], v[i+1]), max(m[2], v[i+2]), max(m[3], v[i+3])
	}
	for ; i < len(v); i++ {
		m[0] = max(m[0], v[i])
	}
	return max(max(m[0], m[1]), max(m[2], m[3]))
}

// reduce8 sums eight lanes in the order the assembly kernels use.
func reduce8(a *[8]float32) float32 {
	return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

// wsum writes o[c] = Σ_j p[j]·v[j*ldv+c] for c < len(o), summing over j in
// order (the attention's probability-weighted sum of value rows).
func (ks kernelSet) wsum(p, v []float32, ldv int, o []float32) {
	c := 0
	if ks.asm {
		c = wsumAsm(p, v, ldv, o)
		if c == len(o) {
			return
		}
	}
	rest := o[c:]
	clear(rest)
	for j, pj := range p {
		vj := v[j*ldv+c : j*ldv+c+len(rest)]
		for i := range rest {
			rest[i] += pj * vj[i]
		}
	}
}

// scoresKT writes o[g*ldo+j] = Σ_c q[g*hd+c]·kt[c*ldk+j] for heads g < G
// and keys j < 16*nb: the attention scores of G query heads (rows of hd in
// q) against keys stored transposed (element c of key j at kt[c*ldk+j]).
// Every score sums over c in order, with fused multiply-adds in the
// assembly (AVX-512 and AVX2 give the same bits) and rounded products in
// pure Go. The keys lie along the vector lanes, so nothing is reduced
// across lanes, which is what the row-major tile kernels spent most of
// their time on for 64-element rows.
func (ks kernelSet) scoresKT(q []float32, G, hd int, kt []float32, ldk int, o []float32, ldo, nb int) {
	if G == 0 || nb == 0 || hd == 0 {
		return
	}
	_ = q[G*hd-1]
	_ = kt[(hd-1)*ldk+16*nb-1]
	_ = o[(G-1)*ldo+16*nb-1]
	step := 4
	if ks.avx512 {
		step = maxSG
	}
	for g0 := 0; g0 < G; g0 += step {
		gn := min(step, G-g0)
		qg, og := &q[g0*hd], &o[g0*ldo]
		switch {
		case ks.avx512:
			if n4 := nb / 4; n4 > 0 {
				scoresZAsm(gn, 4, qg, hd, &kt[0], ldk, og, ldo, n4)
			}
			if r := nb % 4; r > 0 {
				j := 64 * (nb / 4)
				scoresZAsm(gn, r, qg, hd, &kt[j], ldk, &o[g0*ldo+j], ldo, 1)
			}
		case ks.asm:
			scoresYAsm(gn, qg, hd, &kt[0], ldk, og, ldo, nb)
		default:
			for g := g0; g < g0+gn; g++ {
				og := o[g*ldo : g*ldo+16*nb]
				clear(og)
				for c, qc := range q[g*hd : (g+1)*hd] {
					row := kt[c*ldk : c*ldk+16*nb]
					for j, k := range row {
						og[j] += qc * k
					}
				}
			}
		}
	}
}

// maxWG and maxWW are the most heads and 16-column vectors of an AVX-512
// weighted-sum kernel (wsumZTab); maxSG the most heads of an AVX-512 score
// kernel (scoresZTab; the AVX2 ones take up to 4).
const maxWG, maxWW, maxSG = 6, 4, 6

// wsumG is wsum for G heads at once: o[g*ldo+c] = Σ_j p[g*ldp+j]·v[j*ldv+c]
// for g < G, j < n, c < hd, each column summed exactly as wsum sums it. The
// AVX-512 kernels load each value row once for up to four heads (wsum
// alone would read it once per head).
func (ks kernelSet) wsumG(p []float32, ldp, G int, v []float32, ldv, n int, o []float32, ldo, hd int) {
	c := 0
	if ks.avx512 && n > 0 && hd >= 16 {
		for g0 := 0; g0 < G; g0 += maxWG {
			gn := min(maxWG, G-g0)
			_ = p[(g0+gn-1)*ldp+n-1]
			for c = 0; c+16 <= hd; {
				w := min(maxWW, (hd-c)/16)
				_ = v[(n-1)*ldv+c+16*w-1]
				_ = o[(g0+gn-1)*ldo+c+16*w-1]
				wsumZAsm(gn, w, &p[g0*ldp], ldp, &v[c], ldv, n, &o[g0*ldo+c], ldo)
				c += 16 * w
			}
		}
	}
	if c < hd {
		for g := range G {
			ks.wsum(p[g*ldp:g*ldp+n], v[c:], ldv, o[g*ldo+c:g*ldo+hd])
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
	w = w[:len(x)]
	dst = dst[:len(x)]
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

// expf returns e**x in float32 to within 2 ulp (Cephes' expf polynomial),
// 0 below -87.3 and +Inf above 88.
func expf(x float32) float32 {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
		magic = 12582912 // 1.5·2²³: adding it rounds to an integer
	)
	if x > 88 {
		return float32(math.Inf(1))
	}
	if !(x >= -87.3) { // also NaN
		if x != x {
			return x
		}
		return 0
	}
	t := float32(x*log2e) + magic
	k := int32(math.Float32bits(t) - math.Float32bits(magic))
	fk := float32(t - magic)
	r := float32(x - float32(fk*ln2hi))
	r = float32(r - float32(fk*ln2lo))
	p := float32(1.9875691500e-4)
	p = float32(p*r) + 1.3981999507e-3
	p = float32(p*r) + 8.3334519073e-3
	p = float32(p*r) + 4.1665795894e-2
	p = float32(p*r) + 1.6666665459e-1
	p = float32(p*r) + 5.0000001201e-1
	y := float32(float32(p*float32(r*r))+r) + 1
	return math.Float32frombits(uint32(int32(math.Float32bits(y)) + k<<23))
}

func silu(x float32) float32 { return x / (1 + expf(-x)) }

func geluTanh(x float32) float32 {
	const c = 0.7978845608028654 // sqrt(2/pi)
	xf := float64(x)
	return float32(0.5 * xf * (1 + math.Tanh(c*(xf+0.044715*xf*xf*xf))))
}

func softcap(x, c float32) float32 {
	return c * float32(math.Tanh(float64(x/c)))
}

// ReadBandwidth measures this machine's memory read bandwidth in bytes per
// second: threads goroutines each sum their share of a buffer of the given
// size with vector loads; it returns the best of passes passes. The buffer
// is in huge pages where the system has them, like the weights of a model
// moved there (model.MoveToHugePages), so the bound it gives is the one
// such weights can reach.
func ReadBandwidth(size int64, threads, passes int) float64 {
	p := NewBandwidthProbe(size)
	defer p.Close()
	return p.Measure(threads, passes)
}

// BandwidthProbe measures read bandwidth repeatedly over one buffer, so
// measurements between other work do not allocate and fault in a new one.
type BandwidthProbe struct {
	buf    []float32
	region *hugepages.Region
}

// NewBandwidthProbe allocates a probe over size bytes (in huge pages where
// the system has them).
func NewBandwidthProbe(size int64) *BandwidthProbe {
	p := &BandwidthProbe{}
	if r, err := hugepages.Alloc(int(size/4) * 4); err == nil && size >= 4 {
		p.region = r
		p.buf = unsafe.Slice((*float32)(unsafe.Pointer(&r.Bytes[0])), size/4)
	} else {
		p.buf = make([]float32, size/4)
	}
	for i := range p.buf {
		p.buf[i] = 1
	}
	return p
}

// Close frees the probe's buffer.
func (p *BandwidthProbe) Close() error {
	p.buf = nil
	return p.region.Free()
}

// Measure returns the best read bandwidth, in bytes per second, of passes
// passes of threads goroutines each summing their share of the buffer.
func (p *BandwidthProbe) Measure(threads, passes int) float64 {
	threads = max(threads, 1)
	buf := p.buf
	chunk := (len(buf) + threads - 1) / threads
	best := 0.0
	var sink atomic.Uint32
	for range max(passes, 1) {
		start := time.Now()
		var wg sync.WaitGroup
		for lo := 0; lo < len(buf); lo += chunk {
			part := buf[lo:min(lo+chunk, len(buf))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				sink.Add(math.Float32bits(sumLoad(part)))
			}()
		}
		wg.Wait()
		best = max(best, float64(len(buf)*4)/time.Since(start).Seconds())
	}
	return best
}

// addLoRAB adds scale·(B[o]·u) to out[o] for every row o of B (row-major,
// len(out) rows of r elements): one token's LoRA up-projection. The
// assembly takes eight rows at a time where r is a multiple of 8; every dot
// product is summed as loraBGo sums it.
func (ks kernelSet) addLoRAB(b []float32, r int, u, out []float32, scale float32) {
	done := 0
	if n8 := len(out) / 8; ks.asm && r > 0 && r%8 == 0 && n8 > 0 {
		_ = b[n8*8*r-1]
		_ = u[r-1]
		loraBAVX(&b[0], r, &u[0], &out[0], n8, scale)
		done = 8 * n8
	}
	loraBGo(b[done*r:], r, u, out[done:], scale)
}

// addLoRAB16 is addLoRAB over a bf16 B (bit patterns): the same sums of
// the widened values, bit for bit.
func (ks kernelSet) addLoRAB16(b []uint16, r int, u, out []float32, scale float32) {
	done := 0
	if n8 := len(out) / 8; ks.asm && r > 0 && r%8 == 0 && n8 > 0 {
		_ = b[n8*8*r-1]
		_ = u[r-1]
		loraB16AVX(&b[0], r, &u[0], &out[0], n8, scale)
		done = 8 * n8
	}
	if done == len(out) {
		return
	}
	row := make([]float32, r)
	for o := done; o < len(out); o++ {
		for i, v := range b[o*r : (o+1)*r] {
			row[i] = math.Float32frombits(uint32(v) << 16)
		}
		loraBGo(row, r, u, out[o:o+1], scale)
	}
}

// loraBGo adds scale·(B[o]·u) to out[o]: lane j of eight sums the products
// of elements j, j+8, ... in order, the lanes add as ((0+1)+(2+3)) +
// ((4+5)+(6+7)), and elements past the last multiple of 8 follow one by one.
func loraBGo(b []float32, r int, u, out []float32, scale float32) {
	r8 := r &^ 7
	for o := range out {
		row := b[o*r : (o+1)*r]
		var l [8]float32
		for c := 0; c < r8; c += 8 {
			for j := range l {
				l[j] += row[c+j] * u[c+j]
			}
		}
		s := ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
		for i := r8; i < r; i++ {
			s += row[i] * u[i]
		}
		out[o] += scale * s
	}
}
