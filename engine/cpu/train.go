package cpu

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// This file is the training path: a forward pass over whole sequences that
// records what the backward pass needs (a Tape), and the backward pass that
// turns the gradient of a loss with respect to captured activations into
// gradients for the LoRA A and B matrices. The base weights are frozen
// here; lmtrain.go builds full-parameter training (every weight's gradient,
// the language-model loss) on the same pieces.
// Each operation's backward sits next to the forward it undoes; the whole is
// checked against finite differences and the PyTorch reference's autograd.
//
// Every product, including the LoRA paths' small ones, runs on the
// executor's tile kernels (Executor.matmul), whose sums depend only on the
// reduction length, and every other loop is either serial or split over
// independent tokens or elements: a pass is bit-for-bit repeatable whatever
// the thread count or scheduling. The forward products with bf16 weights
// read their inputs rounded to bf16, as in inference; the backward pass
// treats that rounding as the identity (a straight-through gradient), as
// the PyTorch reference and the xla executor do.

// TrainOptions configures a training forward pass.
type TrainOptions struct {
	// Dropout is the LoRA input dropout probability (PEFT's lora_dropout).
	Dropout float64
	// Seed seeds the dropout masks.
	Seed uint64
	// Workspace, when set, supplies the pass's buffers (see Workspace);
	// nil allocates fresh ones.
	Workspace *Workspace
}

// Workspace keeps the buffers of training passes (activations, gradients,
// scratch) so that consecutive steps reuse them instead of allocating and
// faulting in tens of megabytes each. It serves one pass at a time:
// ForwardTrain with a Workspace invalidates the Tape of the previous pass
// that used it (the activations ForwardTrain returns are copies and stay
// valid). The zero value is ready to use; it is not safe for concurrent use.
type Workspace struct {
	bufs [][]float32
	next int
}

// take returns the pass's next buffer, of n floats with unspecified
// contents. A pass asks for the same sequence of sizes as the previous one
// whenever its shapes repeat, so buffer i is reused by request i; a buffer
// too small for its request is replaced by a larger one.
func (w *Workspace) take(n int) []float32 {
	if w.next == len(w.bufs) {
		w.bufs = append(w.bufs, nil)
	}
	b := w.bufs[w.next]
	if cap(b) < n {
		b = make([]float32, n)
		w.bufs[w.next] = b
	}
	w.next++
	return b[:n]
}

// fit returns *buf resized to n, first replacing it with a buffer from the
// workspace when its capacity is short: scratch that one pass uses over and
// over.
func (w *Workspace) fit(buf *[]float32, n int) []float32 {
	if cap(*buf) < n {
		*buf = w.take(n)
	}
	return (*buf)[:n]
}

// linTape records one projection's LoRA intermediates.
type linTape struct {
	in   []float32 // input x [N, In] (aliases another buffer of the layer)
	drop []float32 // dropout(x) when dropout is on; nil otherwise
	uT   []float32 // (A·dropout(x))ᵀ, [R, N]
}

// layerTape records one decoder layer's forward pass.
type layerTape struct {
	x        []float32 // input residual stream [N, d]
	xn1      []float32
	r1       []float32 // 1/rms per token for the attention norm
	q, k, v  []float32 // q, k after RoPE
	probs    []float32 // per (segment, KV head) blocks of probabilities (see attnScratch), concatenated
	capped   []float32 // soft-capped scores, laid out as probs (only with soft-capping)
	att      []float32
	o        []float32 // attn_out
	rAP      []float32 // 1/rms of the attention post-norm (gemma2)
	h        []float32 // residual after attention
	xn2      []float32
	r2       []float32
	g, up, a []float32
	den      []float32 // 1+e^-g, for silu's gradient (silu only)
	dn       []float32 // mlp_out
	rMP      []float32
	lin      [model.NumModules]linTape
	mlp      bool // whether the MLP half ran
}

// scratch is a pass's temporary storage.
type scratch struct {
	acc  []float32 // a product's result before it is added to its destination
	xT   []float32 // the transposed input of a group of projections
	lora [model.NumModules]loraScratch
	attn []attnScratch // per attention block
}

// Tape is a recorded training forward pass over one or more sequences, each
// starting at position 0.
type Tape struct {
	e       *Executor
	a       *lora.Adapter
	ws      *Workspace
	s       scratch
	segs    []int // token offset of each sequence; last entry = total
	n       int   // total tokens
	point   engine.Point
	layers  []layerTape
	cos     []float32
	sin     []float32
	dropout float64
	probOff [][]int // [segment][KV head] offset into layer probs
	// pad rounds the dimensions that attention's products sum over (a
	// block's keys, and its query rows for the key and value gradients) up
	// to a multiple of itself, with zeros, so that the tile kernels take
	// them whole instead of adding the last few products one by one. 1 (no
	// padding) for LoRA training, whose results stay as they were; 8 for
	// full-parameter training.
	pad int
	// slabs splits the base products by tokens instead of weight rows
	// (see Executor.matmulSlabs): full-parameter training's batches of
	// thousands of tokens.
	slabs bool
	// full, during a full-parameter backward pass (see LMLossGrad), receives
	// the gradients of every weight; nil for LoRA training.
	full *LMGrad
	lm   lmScratch
}

// f32Matrix is a [rows, cols] F32 matrix header over data, without a copy,
// so that activations and LoRA factors can go through Executor.matmul.
func f32Matrix(rows, cols int, data []float32) *model.Matrix {
	return &model.Matrix{Rows: rows, Cols: cols, DType: model.F32, F32: data[:rows*cols]}
}

// Grains of the parallel loops: enough work per chunk (tens of
// microseconds) to outweigh handing it to another thread.
const (
	tokGrain   = 32      // tokens of a per-token loop over hidden-sized rows
	cheapGrain = 1 << 17 // elements of a loop of a few operations each
	expGrain   = 1 << 13 // elements of a loop that takes an exponential each
)

// addTo computes dst += src.
func (e *Executor) addTo(dst, src []float32) {
	dst = dst[:len(src)]
	e.pool.run(len(src), cheapGrain, func(lo, hi int) {
		d, s := dst[lo:hi], src[lo:hi]
		for i, v := range s {
			d[i] += v
		}
	})
}

// sum writes dst = a + b.
func (e *Executor) sum(dst, a, b []float32) {
	dst, b = dst[:len(a)], b[:len(a)]
	e.pool.run(len(a), cheapGrain, func(lo, hi int) {
		d, x, y := dst[lo:hi], a[lo:hi], b[lo:hi]
		for i := range d {
			d[i] = x[i] + y[i]
		}
	})
}

// transpose writes dst[c*rows+r] = src[r*cols+c] for a [rows, cols] src,
// split over the executor's threads by blocks of rows.
func (e *Executor) transpose(dst, src []float32, rows, cols int) {
	if rows*cols == 0 {
		return
	}
	_, _ = dst[rows*cols-1], src[rows*cols-1]
	blocks := (rows + 7) / 8
	grain := max(1, cheapGrain/(8*cols))
	e.pool.run(blocks, grain, func(lo, hi int) {
		transposeRows(dst, src, rows, cols, lo*8, min(hi*8, rows))
	})
}

// transposeRows is transpose for src rows [r0, r1): eight rows at a time,
// in 8×8 blocks with AVX2 (transpose8AVX2) where the CPU has it, the
// columns left over (and every column elsewhere) by transposeRowsGo.
func transposeRows(dst, src []float32, rows, cols, r0, r1 int) {
	if nb := cols / 8; haveAsm && nb > 0 {
		for ; r0+8 <= r1; r0 += 8 {
			_, _ = src[(r0+7)*cols+8*nb-1], dst[(8*nb-1)*rows+r0+7]
			transpose8AVX2(&dst[r0], rows, &src[r0*cols], cols, nb)
			for c := 8 * nb; c < cols; c++ {
				for r := r0; r < r0+8; r++ {
					dst[c*rows+r] = src[r*cols+c]
				}
			}
		}
	}
	transposeRowsGo(dst, src, rows, cols, r0, r1)
}

// transposeRowsGo is transposeRows in Go: eight rows at a time, so that
// each store is a run of eight floats.
func transposeRowsGo(dst, src []float32, rows, cols, r0, r1 int) {
	for ; r0+8 <= r1; r0 += 8 {
		s0 := src[r0*cols : (r0+1)*cols]
		s1 := src[(r0+1)*cols : (r0+2)*cols][:len(s0)]
		s2 := src[(r0+2)*cols : (r0+3)*cols][:len(s0)]
		s3 := src[(r0+3)*cols : (r0+4)*cols][:len(s0)]
		s4 := src[(r0+4)*cols : (r0+5)*cols][:len(s0)]
		s5 := src[(r0+5)*cols : (r0+6)*cols][:len(s0)]
		s6 := src[(r0+6)*cols : (r0+7)*cols][:len(s0)]
		s7 := src[(r0+7)*cols : (r0+8)*cols][:len(s0)]
		for c := range s0 {
			d := dst[c*rows+r0 : c*rows+r0+8 : c*rows+r0+8]
			d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s0[c], s1[c], s2[c], s3[c], s4[c], s5[c], s6[c], s7[c]
		}
	}
	for ; r0 < r1; r0++ {
		for c, v := range src[r0*cols : (r0+1)*cols] {
			dst[c*rows+r0] = v
		}
	}
}

// ForwardTrain runs seqs through layers 0..point.Layer with adapter a and
// returns the activations at point for each sequence ([len(seq), hidden])
// together with a Tape for Backward. Layers above point.Layer are not run.
func (e *Executor) ForwardTrain(ctx context.Context, a *lora.Adapter, seqs [][]int32, point engine.Point, opts TrainOptions) (*Tape, []engine.Tensor2D, error) {
	cfg := e.cfg
	if point.Layer < 0 || point.Layer >= cfg.Layers || point.Site >= engine.NumSites {
		return nil, nil, fmt.Errorf("cpu: train: capture point layer %d site %v out of range", point.Layer, point.Site)
	}
	if a != nil {
		if err := a.Validate(cfg); err != nil {
			return nil, nil, fmt.Errorf("cpu: train: %w", err)
		}
	}
	if opts.Dropout < 0 || opts.Dropout >= 1 {
		return nil, nil, fmt.Errorf("cpu: train: dropout %g outside [0, 1)", opts.Dropout)
	}
	ws := opts.Workspace
	if ws == nil {
		ws = new(Workspace)
	}
	ws.next = 0
	segs := []int{0}
	var toks []int32
	for i, s := range seqs {
		if len(s) == 0 || len(s) > e.maxCtx {
			return nil, nil, fmt.Errorf("cpu: train: sequence %d has %d tokens (want 1..%d)", i, len(s), e.maxCtx)
		}
		for _, t := range s {
			if t < 0 || int(t) >= cfg.VocabSize {
				return nil, nil, fmt.Errorf("cpu: train: sequence %d: token %d outside the vocabulary", i, t)
			}
		}
		toks = append(toks, s...)
		segs = append(segs, len(toks))
	}
	tp, x, off := e.beginTape(ws, toks, segs, 1)
	tp.a, tp.point, tp.dropout = a, point, opts.Dropout
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d))
	tp.layers = make([]layerTape, point.Layer+1)
	for l := 0; l <= point.Layer; l++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, fmt.Errorf("cpu: train: %w", err)
		}
		mlp := l < point.Layer || point.Site != engine.AttnOut
		x = tp.layerForward(l, x, mlp, rng, off)
	}
	lt := &tp.layers[point.Layer]
	var src []float32
	switch point.Site {
	case engine.AttnOut:
		src = lt.o
	case engine.MLPOut:
		src = lt.dn
	default:
		src = x
	}
	d := cfg.Hidden
	acts := make([]engine.Tensor2D, len(seqs))
	for si := range seqs {
		lo, hi := tp.segs[si], tp.segs[si+1]
		acts[si] = engine.Tensor2D{Rows: hi - lo, Cols: d, Data: append([]float32(nil), src[lo*d:hi*d]...)}
	}
	return tp, acts, nil
}

// beginTape starts a tape over toks, split into sequences at segs (token
// offsets, from 0 to len(toks)), each starting at position 0, with
// attention's products padded to multiples of pad (see Tape.pad): it builds
// the RoPE tables and the offsets of each (sequence, KV head) block of
// attention probabilities, and returns the embedded tokens [N, hidden] and
// the length of a layer's probabilities.
func (e *Executor) beginTape(ws *Workspace, toks []int32, segs []int, pad int) (*Tape, []float32, int) {
	cfg := e.cfg
	tp := &Tape{e: e, ws: ws, segs: segs, pad: pad}
	N, d := len(toks), cfg.Hidden
	tp.n = N
	half := cfg.HeadDim / 2
	tp.cos = ws.take(N * half)
	tp.sin = ws.take(N * half)
	// Each position's angles are computed once, for the longest sequence,
	// and copied to its tokens.
	longest := 0
	for si := 0; si+1 < len(segs); si++ {
		longest = max(longest, segs[si+1]-segs[si])
	}
	cosP, sinP := make([]float32, longest*half), make([]float32, longest*half)
	for pos := range longest {
		for f := 0; f < half; f++ {
			ang := float64(float32(pos) * float32(e.invFreq[f]))
			cosP[pos*half+f] = float32(math.Cos(ang))
			sinP[pos*half+f] = float32(math.Sin(ang))
		}
	}
	for si := 0; si+1 < len(tp.segs); si++ {
		n := tp.segs[si+1] - tp.segs[si]
		copy(tp.cos[tp.segs[si]*half:], cosP[:n*half])
		copy(tp.sin[tp.segs[si]*half:], sinP[:n*half])
	}
	nseg := len(segs) - 1
	tp.probOff = make([][]int, nseg)
	off := 0
	for si := range nseg {
		n := tp.segs[si+1] - tp.segs[si]
		tp.probOff[si] = make([]int, cfg.KVHeads)
		for kh := range cfg.KVHeads {
			tp.probOff[si][kh] = off
			off += tp.padded(n) * tp.padded(n*(cfg.Heads/cfg.KVHeads))
		}
	}
	x := ws.take(N * d)
	for t, tok := range toks {
		row := x[t*d : (t+1)*d]
		e.m.Embed.RowF32(int(tok), row)
		for k := range row {
			row[k] *= cfg.EmbedScale
		}
	}
	return tp, x, off
}

// normFwd applies RMSNorm per token and returns the 1/rms factors.
func (tp *Tape) normFwd(dst, x, w []float32) []float32 {
	d, eps := len(w), tp.e.cfg.NormEps
	r := tp.ws.take(tp.n)
	tp.e.pool.run(tp.n, tokGrain, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			xt, dt := x[t*d:(t+1)*d], dst[t*d:(t+1)*d]
			var ss float64
			for _, v := range xt {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
			r[t] = inv
			for i, v := range xt {
				dt[i] = v * inv * w[i]
			}
		}
	})
	return r
}

// normBwd maps dy, the gradient at y = x·r·w, to the gradient at x, adding
// it to dx when acc is set and writing it there otherwise.
func (tp *Tape) normBwd(dx, dy, x, w, r []float32, acc bool) {
	d := len(w)
	tp.e.pool.run(tp.n, tokGrain, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			xt, gt, dxt := x[t*d:(t+1)*d], dy[t*d:(t+1)*d], dx[t*d:(t+1)*d]
			var s float64
			for i := range xt {
				s += float64(gt[i]) * float64(w[i]) * float64(xt[i])
			}
			rt := r[t]
			c := float32(s/float64(d)) * rt * rt * rt
			if acc {
				for i := range xt {
					dxt[i] += rt*gt[i]*w[i] - c*xt[i]
				}
			} else {
				for i := range xt {
					dxt[i] = rt*gt[i]*w[i] - c*xt[i]
				}
			}
		}
	})
}

// projIO is one projection of a group that shares an input (q/k/v, gate/up):
// its output in the forward pass, its output's gradient in the backward one.
type projIO struct {
	mod model.Module
	y   []float32
}

// loraScratch is the temporary storage of one module's LoRA products; each
// module has its own, so the modules of a group run concurrently.
type loraScratch struct {
	u, tmp  []float32 // forward: u [N, R], s·u·Bᵀ [N, Out]
	xT, dyT []float32 // dropout(x)ᵀ [In, N] (with dropout only), dyᵀ [Out, N]
	dBT, bT []float32 // [R, Out]
	duT, du []float32 // [R, N], [N, R]
	dA, aT  []float32 // [R, In], [In, R]
	dxl     []float32 // du·A [N, In]
}

// loraTask is one module's LoRA work within a group.
type loraTask struct {
	p    *lora.Pair
	g    *lora.Pair // its gradient (backward)
	x    []float32  // dropout(x) [N, In]
	xT   []float32  // its transpose when shared by the group; nil to compute
	y    []float32  // forward: the output to add to; backward: dy
	rec  *linTape
	sc   *loraScratch
	back bool // backward: also compute dxl
}

// projsFwd computes y = x·Wᵀ + b + s·B(A·dropout(x)) over all N tokens for
// projections of layer l that share the input x. The base products run one
// after another, each split over the threads; then the modules' LoRA paths
// (two small products each: uᵀ = A·dropout(x)ᵀ and s·u·Bᵀ) run as one task
// per module, their dropout masks drawn first in module order.
func (tp *Tape) projsFwd(l int, x []float32, lt *layerTape, rng *rand.Rand, ps ...projIO) {
	e, N, ws := tp.e, tp.n, tp.ws
	for _, pi := range ps {
		lin := &e.m.Layers[l].Proj[pi.mod]
		tp.matmul(&lin.W, lin.Bias, x, N, pi.y)
	}
	var buf [3]loraTask
	tasks := buf[:0]
	for _, pi := range ps {
		p := tp.a.Get(l, pi.mod)
		if p == nil {
			continue
		}
		rec := &lt.lin[pi.mod]
		*rec = linTape{in: x}
		xin := x
		if tp.dropout > 0 {
			keep := float32(1 / (1 - tp.dropout))
			rec.drop = ws.take(len(x))
			for i, v := range x {
				if rng.Float64() >= tp.dropout {
					rec.drop[i] = v * keep
				} else {
					rec.drop[i] = 0
				}
			}
			xin = rec.drop
		}
		rec.uT = ws.take(p.R * N)
		sc := &tp.s.lora[pi.mod]
		sc.u = ws.fit(&sc.u, N*p.R)
		sc.tmp = ws.fit(&sc.tmp, N*p.Out)
		tasks = append(tasks, loraTask{p: p, x: xin, y: pi.y, rec: rec, sc: sc})
	}
	e.pool.run(len(tasks), 1, func(lo, hi int) {
		for _, t := range tasks[lo:hi] {
			tp.loraFwd(t)
		}
	})
}

// loraFwd is one module's LoRA forward: uᵀ = A·xᵀ (the tokens as the
// product's weight rows), then y += s·u·Bᵀ.
func (tp *Tape) loraFwd(t loraTask) {
	e, N, p, sc := tp.e, tp.n, t.p, t.sc
	e.matmul(f32Matrix(N, p.In, t.x), nil, p.A, p.R, t.rec.uT) // uT[j*N+t] = x[t]·A[j]
	e.transpose(sc.u, t.rec.uT, p.R, N)
	e.matmul(f32Matrix(p.Out, p.R, p.B), nil, sc.u, N, sc.tmp) // tmp[t*Out+o] = B[o]·u[t]
	s := p.Scale
	for i, v := range sc.tmp {
		t.y[i] += s * v
	}
}

// projsBwd maps the output gradients of projections of layer l that share
// their input to the gradient at that input, written to dx (nothing when dx
// is nil), and accumulates their LoRA gradients. With u = A·x'
// (x' = dropout(x)) and du = s·dy·B:
//
//	dB += s·dyᵀ·u,  dA += duᵀ·x',  dx = Σ dy·W + du·A (through the mask).
//
// The base products run one after another, each split over the threads;
// the LoRA products run as one task per module, and their dx terms are
// added in module order afterwards. During a full-parameter pass (tp.full
// set) it also adds the projections' weight and bias gradients.
func (tp *Tape) projsBwd(l int, dx []float32, lt *layerTape, grad *lora.Adapter, ps ...projIO) {
	e, N, ws := tp.e, tp.n, tp.ws
	if dx != nil {
		for i, pi := range ps {
			tp.matmulBwd(l, pi.mod, pi.y, dx, i > 0)
		}
	}
	if tp.full != nil {
		tp.weightGrads(l, lt, ps)
	}
	var buf [3]loraTask
	tasks := buf[:0]
	var shared []float32 // xᵀ, when the modules share it (no dropout)
	for _, pi := range ps {
		p := tp.a.Get(l, pi.mod)
		if p == nil {
			continue
		}
		R, In, Out := p.R, p.In, p.Out
		rec := &lt.lin[pi.mod]
		sc := &tp.s.lora[pi.mod]
		sc.dyT = ws.fit(&sc.dyT, Out*N)
		sc.dBT = ws.fit(&sc.dBT, R*Out)
		sc.bT = ws.fit(&sc.bT, R*Out)
		sc.duT = ws.fit(&sc.duT, R*N)
		sc.dA = ws.fit(&sc.dA, R*In)
		if dx != nil {
			sc.du = ws.fit(&sc.du, N*R)
			sc.aT = ws.fit(&sc.aT, In*R)
			sc.dxl = ws.fit(&sc.dxl, N*In)
		}
		t := loraTask{p: p, g: grad.Get(l, pi.mod), x: rec.in, y: pi.y, rec: rec, sc: sc, back: dx != nil}
		if rec.drop != nil {
			t.x = rec.drop
			sc.xT = ws.fit(&sc.xT, In*N)
		} else {
			if shared == nil {
				shared = ws.fit(&tp.s.xT, In*N)
				e.transpose(shared, rec.in, N, In)
			}
			t.xT = shared
		}
		tasks = append(tasks, t)
	}
	e.pool.run(len(tasks), 1, func(lo, hi int) {
		for _, t := range tasks[lo:hi] {
			tp.loraBwd(t)
		}
	})
	if dx == nil {
		return
	}
	for _, t := range tasks {
		if t.rec.drop == nil {
			e.addTo(dx, t.sc.dxl)
			continue
		}
		// d dropout(x)/dx is the kept mask scaled by 1/(1-p).
		keep := float32(1 / (1 - tp.dropout))
		xin, in, dxl := t.rec.drop, t.rec.in, t.sc.dxl
		e.pool.run(len(dxl), cheapGrain, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				if xin[i] != 0 || in[i] == 0 {
					dx[i] += dxl[i] * keep
				}
			}
		})
	}
}

// loraBwd is one module's LoRA backward (see projsBwd), each sum over
// tokens a product over transposed activations.
func (tp *Tape) loraBwd(t loraTask) {
	e, N, p, g, sc := tp.e, tp.n, t.p, t.g, t.sc
	R, In, Out, s := p.R, p.In, p.Out, p.Scale
	// dBᵀ[j, o] = Σ_t u[t, j]·dy[t, o]
	e.transpose(sc.dyT, t.y, N, Out)
	e.matmul(f32Matrix(Out, N, sc.dyT), nil, t.rec.uT, R, sc.dBT)
	for j := 0; j < R; j++ {
		for o, v := range sc.dBT[j*Out : (j+1)*Out] {
			g.B[o*R+j] += s * v
		}
	}
	// duᵀ[j, t] = s·Σ_o B[o, j]·dy[t, o]
	e.transpose(sc.bT, p.B, Out, R)
	e.matmul(f32Matrix(N, Out, t.y), nil, sc.bT, R, sc.duT)
	for i := range sc.duT {
		sc.duT[i] *= s
	}
	// dA[j, i] = Σ_t du[t, j]·x'[t, i]
	xT := t.xT
	if xT == nil {
		xT = sc.xT
		e.transpose(xT, t.x, N, In)
	}
	e.matmul(f32Matrix(In, N, xT), nil, sc.duT, R, sc.dA)
	for i, v := range sc.dA {
		g.A[i] += v
	}
	if !t.back {
		return
	}
	// dxl = du·A
	e.transpose(sc.du, sc.duT, R, N)
	e.transpose(sc.aT, p.A, R, In)
	e.matmul(f32Matrix(In, R, sc.aT), nil, sc.du, N, sc.dxl)
}

// matmulBwd maps dy [N, W.Rows] to dy·W [N, W.Cols], adding it to dx when
// acc is set and writing it there otherwise. It runs the forward kernels
// over Wᵀ, which is built once per weight and kept (training trades that
// memory for backward passes as fast as forward ones).
func (tp *Tape) matmulBwd(l int, mod model.Module, dy, dx []float32, acc bool) {
	e := tp.e
	var wt *model.Matrix
	if tp.full != nil {
		wt = tp.weightT(&e.m.Layers[l].Proj[mod].W) // the weights change between passes
	} else {
		wt = e.wT.get(&e.m.Layers[l].Proj[mod].W, l, mod)
	}
	if !acc {
		tp.matmul(wt, nil, dy, tp.n, dx)
		return
	}
	tmp := tp.ws.fit(&tp.s.acc, tp.n*wt.Rows)
	tp.s.acc = tmp
	tp.matmul(wt, nil, dy, tp.n, tmp)
	e.addTo(dx, tmp)
}

// matmul is Executor.matmul, or Executor.matmulSlabs on a tape that
// splits its products by tokens; both sum every element alike.
func (tp *Tape) matmul(w *model.Matrix, bias, x []float32, n int, out []float32) {
	if tp.slabs {
		tp.e.matmulSlabs(w, bias, x, n, out)
		return
	}
	tp.e.matmul(w, bias, x, n, out)
}

// transposeCache holds f32 transposes of weight matrices, per (layer, module).
type transposeCache struct {
	mu sync.Mutex
	m  [][model.NumModules]*model.Matrix
}

func (c *transposeCache) get(w *model.Matrix, l int, mod model.Module) *model.Matrix {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.m[l][mod]; t != nil {
		return t
	}
	t := &model.Matrix{Rows: w.Cols, Cols: w.Rows, DType: model.F32, F32: make([]float32, w.Rows*w.Cols)}
	// Blocks of 16 rows are decoded and then written out column by column,
	// so each store run is 16 contiguous floats.
	const b = 16
	blk := make([]float32, b*w.Cols)
	for o0 := 0; o0 < w.Rows; o0 += b {
		nb := min(b, w.Rows-o0)
		for k := range nb {
			w.RowF32(o0+k, blk[k*w.Cols:(k+1)*w.Cols])
		}
		for i := 0; i < w.Cols; i++ {
			dst := t.F32[i*w.Rows+o0 : i*w.Rows+o0+nb]
			for k := range dst {
				dst[k] = blk[k*w.Cols+i]
			}
		}
	}
	c.m[l][mod] = t
	return t
}

// rope rotates the q and k heads of every token in place (inverse when inv
// is set, for their gradients).
func (tp *Tape) rope(q, k []float32, inv bool) {
	cfg := tp.e.cfg
	hd, half := cfg.HeadDim, cfg.HeadDim/2
	f := rope
	if inv {
		f = ropeBwd
	}
	tp.e.pool.run(tp.n, tokGrain, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			c, s := tp.cos[t*half:(t+1)*half], tp.sin[t*half:(t+1)*half]
			for h := 0; h < cfg.Heads; h++ {
				f(q[(t*cfg.Heads+h)*hd:(t*cfg.Heads+h+1)*hd], c, s)
			}
			for h := 0; h < cfg.KVHeads; h++ {
				f(k[(t*cfg.KVHeads+h)*hd:(t*cfg.KVHeads+h+1)*hd], c, s)
			}
		}
	})
}

func (tp *Tape) layerForward(l int, x []float32, mlp bool, rng *rand.Rand, probLen int) []float32 {
	e, cfg, ws := tp.e, tp.e.cfg, tp.ws
	L := &e.m.Layers[l]
	N, d := tp.n, cfg.Hidden
	lt := &tp.layers[l]
	lt.x = x
	lt.xn1 = ws.take(N * d)
	lt.r1 = tp.normFwd(lt.xn1, x, L.AttnNorm)
	lt.q = ws.take(N * cfg.QDim())
	lt.k = ws.take(N * cfg.KVDim())
	lt.v = ws.take(N * cfg.KVDim())
	tp.projsFwd(l, lt.xn1, lt, rng, projIO{model.Q, lt.q}, projIO{model.K, lt.k}, projIO{model.V, lt.v})
	tp.rope(lt.q, lt.k, false)
	lt.probs = ws.take(probLen)
	if cfg.AttnSoftcap > 0 {
		lt.capped = ws.take(probLen)
	}
	lt.att = ws.take(N * cfg.QDim())
	tp.attnFwd(l, lt)
	lt.o = ws.take(N * d)
	tp.projsFwd(l, lt.att, lt, rng, projIO{model.O, lt.o})
	on := lt.o
	if L.AttnPostNorm != nil {
		on = ws.take(N * d)
		lt.rAP = tp.normFwd(on, lt.o, L.AttnPostNorm)
	}
	lt.h = ws.take(N * d)
	e.sum(lt.h, x, on)
	if !mlp {
		return lt.h
	}
	lt.mlp = true
	lt.xn2 = ws.take(N * d)
	lt.r2 = tp.normFwd(lt.xn2, lt.h, L.MLPNorm)
	I := cfg.Intermediate
	lt.g, lt.up, lt.a = ws.take(N*I), ws.take(N*I), ws.take(N*I)
	tp.projsFwd(l, lt.xn2, lt, rng, projIO{model.Gate, lt.g}, projIO{model.Up, lt.up})
	if cfg.Act == model.GELUTanh {
		e.pool.run(N*I, expGrain, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				lt.a[i] = geluTanh(lt.g[i]) * lt.up[i]
			}
		})
	} else {
		// silu(g) = g/den with den = 1+e^-g, as silu computes it; den is
		// kept for the backward pass.
		lt.den = ws.take(N * I)
		e.pool.run(N*I, expGrain, func(lo, hi int) {
			expfs(lt.den[lo:hi], lt.g[lo:hi], -1, 0)
			for i := lo; i < hi; i++ {
				g := lt.g[i]
				den := 1 + lt.den[i]
				lt.den[i] = den
				lt.a[i] = g / den * lt.up[i]
			}
		})
	}
	lt.dn = ws.take(N * d)
	tp.projsFwd(l, lt.a, lt, rng, projIO{model.Down, lt.dn})
	dnn := lt.dn
	if L.MLPPostNorm != nil {
		dnn = ws.take(N * d)
		lt.rMP = tp.normFwd(dnn, lt.dn, L.MLPPostNorm)
	}
	out := ws.take(N * d)
	e.sum(out, lt.h, dnn)
	return out
}

// attnScratch holds one (segment, KV head) block's attention operands, packed
// contiguous for the tile kernels; the query heads of the group are rows
// r = i·G + g (token i, head g of the group) of G·n-row matrices. With a
// Tape's padding the key dimension is np = padded(n) and the query rows
// mp = padded(G·n), the rows and columns past n or G·n held at zero.
type attnScratch struct {
	q, k, v, o      []float32 // [mp, hd], [np, hd], [np, hd], [mp, hd]
	kT, vT, qT, doT []float32 // transposes of k, v, q, do
	dp, ds, pT, dsT []float32 // [mp, np] and transposes
	dkv             []float32 // dk or dv of the block, [np, hd]
}

// padded rounds n up to a multiple of the tape's padding.
func (tp *Tape) padded(n int) int {
	if tp.pad <= 1 {
		return n
	}
	return (n + tp.pad - 1) / tp.pad * tp.pad
}

// attnBlock is one (segment, KV head) block: the segment's first token and
// length, the KV head, and the block's offset into a layer's probabilities.
type attnBlock struct{ s0, n, kh, off int }

// gatherCols copies columns [c0, c0+w) of rows s0..s0+n-1 of x (rows of ld
// floats) into dst [n, w].
func gatherCols(dst, x []float32, ld, s0, n, c0, w int) {
	for i := range n {
		copy(dst[i*w:(i+1)*w], x[(s0+i)*ld+c0:(s0+i)*ld+c0+w])
	}
}

// scatterCols is gatherCols' inverse: it writes src [n, w] into those columns of x.
func scatterCols(x, src []float32, ld, s0, n, c0, w int) {
	for i := range n {
		copy(x[(s0+i)*ld+c0:(s0+i)*ld+c0+w], src[i*w:(i+1)*w])
	}
}

// attnBlocks runs fn on every attention block, one task per block across
// the threads (the blocks write disjoint parts of their outputs), each with
// its own scratch, sized beforehand (bwd: for the backward pass).
func (tp *Tape) attnBlocks(bwd bool, fn func(b attnBlock, as *attnScratch)) {
	cfg, ws := tp.e.cfg, tp.ws
	G, hd := cfg.Heads/cfg.KVHeads, cfg.HeadDim
	var blocks []attnBlock
	for si := 0; si+1 < len(tp.segs); si++ {
		for kh := range cfg.KVHeads {
			blocks = append(blocks, attnBlock{tp.segs[si], tp.segs[si+1] - tp.segs[si], kh, tp.probOff[si][kh]})
		}
	}
	if len(tp.s.attn) < len(blocks) {
		tp.s.attn = append(tp.s.attn, make([]attnScratch, len(blocks)-len(tp.s.attn))...)
	}
	for i, b := range blocks {
		as, np, mp := &tp.s.attn[i], tp.padded(b.n), tp.padded(G*b.n)
		as.q, as.k, as.v = ws.fit(&as.q, mp*hd), ws.fit(&as.k, np*hd), ws.fit(&as.v, np*hd)
		as.o, as.vT = ws.fit(&as.o, mp*hd), ws.fit(&as.vT, hd*np)
		if bwd {
			as.kT, as.qT, as.doT = ws.fit(&as.kT, hd*np), ws.fit(&as.qT, hd*mp), ws.fit(&as.doT, hd*mp)
			as.dp, as.ds = ws.fit(&as.dp, mp*np), ws.fit(&as.ds, mp*np)
			as.pT, as.dsT = ws.fit(&as.pT, np*mp), ws.fit(&as.dsT, np*mp)
			as.dkv = ws.fit(&as.dkv, np*hd)
		}
	}
	tp.e.pool.run(len(blocks), 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			fn(blocks[i], &tp.s.attn[i])
		}
	})
}

// attnSpan returns the first key token i attends to (the last is i).
func attnSpan(i, window int) int {
	if window > 0 {
		return max(0, i-window+1)
	}
	return 0
}

// attnChunk is how many tokens of an attention block a product takes at a
// time with padding (see Tape.pad): products over query tokens [i0, i1)
// stop at key padded(i1), and those over key tokens [j0, j1) start at query
// row G·j0, skipping the block's causally masked half. The skipped terms are
// zeros and the chunks' bounds multiples of 8, so every sum comes out as
// the whole block's would. Without padding a block is one chunk.
const attnChunk = 16

// chunk returns the tokens per product in a block of n tokens.
func (tp *Tape) chunk(n int) int {
	if tp.pad > 1 {
		return attnChunk
	}
	return n
}

// mmBlock computes out[t*ldo+r] = Σ_{i<in} w[r*ldw+i]·x[t*ldx+i] for t < n
// and r < rows on the tile kernels, in the calling goroutine (attention's
// blocks already run in parallel); each element is summed as
// Executor.matmul sums it.
func (e *Executor) mmBlock(w []float32, ldw, rows int, x []float32, ldx, n, in int, out []float32, ldo int) {
	e.ks.gemm(wmat{dt: dtF32, f32: w, ld: ldw}, nil, x, ldx, n, in, out, ldo, 0, rows, nil)
}

// attnFwd computes causal (optionally windowed, soft-capped) attention per
// segment and KV head, recording the probabilities. Scores and the weighted
// sums of values are products on the tile kernels over the n×n block (np
// columns with padding, in chunks, see attnChunk); the probabilities
// outside the causal window, and in the padding, are zero.
func (tp *Tape) attnFwd(l int, lt *layerTape) {
	e, cfg := tp.e, tp.e.cfg
	G, hd, qd, kvd := cfg.Heads/cfg.KVHeads, cfg.HeadDim, cfg.QDim(), cfg.KVDim()
	window := cfg.Window(l)
	tp.attnBlocks(false, func(b attnBlock, as *attnScratch) {
		s0, n, kh, off := b.s0, b.n, b.kh, b.off
		np, mp, C := tp.padded(n), tp.padded(G*n), tp.chunk(n)
		P := lt.probs[off : off+mp*np]
		gatherCols(as.q, lt.q, qd, s0, n, kh*G*hd, G*hd)
		gatherCols(as.k, lt.k, kvd, s0, n, kh*hd, hd)
		clear(as.k[n*hd : np*hd])
		for i0 := 0; i0 < n; i0 += C { // P[r*np+j] = q[r]·k[j]
			i1 := min(i0+C, n)
			e.mmBlock(as.k, hd, min(np, tp.padded(i1)), as.q[G*i0*hd:], hd, G*(i1-i0), hd, P[G*i0*np:], np)
		}
		for r := 0; r < G*n; r++ {
			i := r / G
			jlo := attnSpan(i, window)
			row := P[r*np : (r+1)*np]
			maxS := float32(math.Inf(-1))
			for j := jlo; j <= i; j++ {
				sc := row[j] * cfg.AttnScale
				if cfg.AttnSoftcap > 0 {
					sc = softcap(sc, cfg.AttnSoftcap)
					lt.capped[off+r*np+j] = sc
				}
				row[j] = sc
				maxS = max(maxS, sc)
			}
			expfs(row[jlo:i+1], row[jlo:i+1], 1, maxS)
			var sum float32
			for j := jlo; j <= i; j++ {
				sum += row[j]
			}
			for j := jlo; j <= i; j++ {
				row[j] /= sum
			}
			clear(row[:jlo])
			clear(row[i+1:])
		}
		clear(P[G*n*np:])
		gatherCols(as.v, lt.v, kvd, s0, n, kh*hd, hd)
		clear(as.v[n*hd : np*hd])
		e.transpose(as.vT, as.v, np, hd)
		for i0 := 0; i0 < n; i0 += C { // o[r*hd+c] = Σ_j P[r, j]·v[j, c]
			i1 := min(i0+C, n)
			e.mmBlock(as.vT, np, hd, P[G*i0*np:], np, G*(i1-i0), min(np, tp.padded(i1)), as.o[G*i0*hd:], hd)
		}
		scatterCols(lt.att, as.o, qd, s0, n, kh*G*hd, G*hd)
	})
}

// attnBwd turns d att into dq, dk, dv (each written whole). Per block, with
// dS = P ⊙ (dP - rowsum(P ⊙ dP)) (times the soft-cap's derivative and the
// score scale) and dP = dO·Vᵀ: dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q.
func (tp *Tape) attnBwd(l int, lt *layerTape, datt, dq, dk, dv []float32) {
	e, cfg := tp.e, tp.e.cfg
	G, hd, qd, kvd := cfg.Heads/cfg.KVHeads, cfg.HeadDim, cfg.QDim(), cfg.KVDim()
	window := cfg.Window(l)
	tp.attnBlocks(true, func(b attnBlock, as *attnScratch) {
		s0, n, kh, off := b.s0, b.n, b.kh, b.off
		np, mp, C := tp.padded(n), tp.padded(G*n), tp.chunk(n)
		P := lt.probs[off : off+mp*np]
		do := as.o
		gatherCols(do, datt, qd, s0, n, kh*G*hd, G*hd)
		clear(do[G*n*hd : mp*hd])
		gatherCols(as.v, lt.v, kvd, s0, n, kh*hd, hd)
		clear(as.v[n*hd : np*hd])
		for i0 := 0; i0 < n; i0 += C { // dP[r*np+j] = do[r]·v[j]
			i1 := min(i0+C, n)
			e.mmBlock(as.v, hd, min(np, tp.padded(i1)), do[G*i0*hd:], hd, G*(i1-i0), hd, as.dp[G*i0*np:], np)
		}
		for r := 0; r < G*n; r++ {
			i := r / G
			jlo := attnSpan(i, window)
			p, dp, ds := P[r*np:(r+1)*np], as.dp[r*np:(r+1)*np], as.ds[r*np:(r+1)*np]
			var sum float32
			for j := jlo; j <= i; j++ {
				sum += p[j] * dp[j]
			}
			for j := jlo; j <= i; j++ {
				g := p[j] * (dp[j] - sum)
				if cfg.AttnSoftcap > 0 {
					th := lt.capped[off+r*np+j] / cfg.AttnSoftcap
					g *= 1 - th*th
				}
				ds[j] = g * cfg.AttnScale
			}
			clear(ds[:jlo])
			clear(ds[i+1:])
		}
		clear(as.ds[G*n*np : mp*np])
		// dV[j, c] = Σ_r P[r, j]·do[r, c], over the rows r ≥ G·j0 of key
		// chunk [j0, j1)
		e.transpose(as.doT, do, mp, hd)
		e.transpose(as.pT, P, mp, np)
		for j0 := 0; j0 < n; j0 += C {
			j1 := min(j0+C, n)
			e.mmBlock(as.doT[G*j0:], mp, hd, as.pT[j0*mp+G*j0:], mp, j1-j0, mp-G*j0, as.dkv[j0*hd:], hd)
		}
		scatterCols(dv, as.dkv, kvd, s0, n, kh*hd, hd)
		// dQ[r, c] = Σ_j dS[r, j]·k[j, c]
		gatherCols(as.k, lt.k, kvd, s0, n, kh*hd, hd)
		clear(as.k[n*hd : np*hd])
		e.transpose(as.kT, as.k, np, hd)
		dqg := as.o // do is no longer needed
		for i0 := 0; i0 < n; i0 += C {
			i1 := min(i0+C, n)
			e.mmBlock(as.kT, np, hd, as.ds[G*i0*np:], np, G*(i1-i0), min(np, tp.padded(i1)), dqg[G*i0*hd:], hd)
		}
		scatterCols(dq, dqg, qd, s0, n, kh*G*hd, G*hd)
		// dK[j, c] = Σ_r dS[r, j]·q[r, c]
		gatherCols(as.q, lt.q, qd, s0, n, kh*G*hd, G*hd)
		clear(as.q[G*n*hd : mp*hd])
		e.transpose(as.qT, as.q, mp, hd)
		e.transpose(as.dsT, as.ds, mp, np)
		for j0 := 0; j0 < n; j0 += C {
			j1 := min(j0+C, n)
			e.mmBlock(as.qT[G*j0:], mp, hd, as.dsT[j0*mp+G*j0:], mp, j1-j0, mp-G*j0, as.dkv[j0*hd:], hd)
		}
		scatterCols(dk, as.dkv, kvd, s0, n, kh*hd, hd)
	})
}

// expfs sets dst[i] = expf(s·src[i] - sub) for s = ±1 (dst may be src),
// bit for bit: eight at a time with AVX2 (expfsAVX2) where the CPU has it,
// the rest by expfsGo.
func expfs(dst, src []float32, s, sub float32) {
	dst = dst[:len(src)]
	n8 := len(src) &^ 7
	if haveAsm && n8 > 0 {
		expfsAVX2(&dst[0], &src[0], n8, s, sub)
	} else {
		n8 = 0
	}
	expfsGo(dst[n8:], src[n8:], s, sub)
}

// expfsGo is expfs in Go: expf's operations with its body in the loop,
// where consecutive elements' chains of dependent operations overlap (a
// call per element ran 1.4 times slower).
func expfsGo(dst, src []float32, s, sub float32) {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
		magic = 12582912 // 1.5·2²³: adding it rounds to an integer
	)
	dst = dst[:len(src)]
	for i, v := range src {
		x := v*s - sub
		var y float32
		switch {
		case x > 88:
			y = float32(math.Inf(1))
		case !(x >= -87.3): // also NaN
			if x != x {
				y = x
			}
		default:
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
			e := float32(float32(p*float32(r*r))+r) + 1
			y = math.Float32frombits(uint32(int32(math.Float32bits(e)) + k<<23))
		}
		dst[i] = y
	}
}

// ropeBwd applies the inverse rotation to a gradient (in place).
func ropeBwd(g, cos, sin []float32) {
	half := len(g) / 2
	for i := 0; i < half; i++ {
		a, b := g[i], g[i+half]
		g[i] = a*cos[i] + b*sin[i]
		g[i+half] = b*cos[i] - a*sin[i]
	}
}

// siluGrad returns silu(x) and its derivative σ(x)·(1 + x·(1-σ(x))) given
// den = 1+e^-x as the forward pass computed it.
func siluGrad(x, den float32) (float32, float32) {
	s := 1 / den
	return x / den, s * (1 + x*(1-s))
}

func geluTanhGrad(x float32) float32 {
	const c = 0.7978845608028654
	xf := float64(x)
	u := c * (xf + 0.044715*xf*xf*xf)
	th := math.Tanh(u)
	return float32(0.5*(1+th) + 0.5*xf*(1-th*th)*c*(1+3*0.044715*xf*xf))
}

// NewGrad returns a zero gradient shaped like a.
func NewGrad(a *lora.Adapter) *lora.Adapter { return a.ZerosLike() }

// bwdBufs are the per-layer gradient buffers of a backward pass, reused by
// every layer in turn.
type bwdBufs struct {
	dh            [2][]float32 // the gradient at the residual stream, alternating between layers
	ddn, do, dxn1 []float32    // [N, d]
	dxn2          []float32    // [N, d]
	da, dg, dup   []float32    // [N, I]
	datt, dq      []float32    // [N, QDim]
	dk, dv        []float32    // [N, KVDim]
}

// Backward accumulates into grad (shaped like the tape's adapter, see
// NewGrad) the gradient of a loss whose gradient with respect to the
// captured activations is dActs (one [len(seq), hidden] per sequence).
func (tp *Tape) Backward(ctx context.Context, dActs []engine.Tensor2D, grad *lora.Adapter) error {
	cfg, ws := tp.e.cfg, tp.ws
	if tp.a == nil {
		return fmt.Errorf("cpu: backward: the tape has no adapter to differentiate")
	}
	if len(dActs) != len(tp.segs)-1 {
		return fmt.Errorf("cpu: backward: %d gradients for %d sequences", len(dActs), len(tp.segs)-1)
	}
	N, d := tp.n, cfg.Hidden
	for si, g := range dActs {
		lo, hi := tp.segs[si], tp.segs[si+1]
		if g.Rows != hi-lo || g.Cols != d || len(g.Data) != g.Rows*d {
			return fmt.Errorf("cpu: backward: gradient %d is [%d,%d], want [%d,%d]", si, g.Rows, g.Cols, hi-lo, d)
		}
	}
	dEntry := ws.take(N * d)
	for si, g := range dActs {
		copy(dEntry[tp.segs[si]*d:], g.Data)
	}
	I, qd, kvd := cfg.Intermediate, cfg.QDim(), cfg.KVDim()
	b := &bwdBufs{dh: [2][]float32{ws.take(N * d), ws.take(N * d)},
		ddn: ws.take(N * d), do: ws.take(N * d), dxn1: ws.take(N * d), dxn2: ws.take(N * d),
		da: ws.take(N * I), dg: ws.take(N * I), dup: ws.take(N * I),
		datt: ws.take(N * qd), dq: ws.take(N * qd), dk: ws.take(N * kvd), dv: ws.take(N * kvd)}
	// Below the lowest adapted layer nothing needs a gradient, and that
	// layer needs none at its input.
	low := 0
	for low < tp.point.Layer && !slices.ContainsFunc(tp.a.Layers[low][:], func(p *lora.Pair) bool { return p != nil }) {
		low++
	}
	var dx []float32 // gradient w.r.t. the residual stream leaving the current layer
	for l := tp.point.Layer; l >= low; l-- {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("cpu: backward: %w", err)
		}
		var inject []float32
		site := engine.NumSites
		if l == tp.point.Layer {
			inject, site = dEntry, tp.point.Site
			if site == engine.ResidPost {
				dx, inject = dEntry, nil
			}
		}
		dh := b.dh[l%2]
		tp.layerBackward(l, dx, inject, site, grad, b, dh, l > low)
		dx = dh
	}
	return nil
}

// layerBackward maps the gradient at the layer's output (dOut, nil for zero)
// plus an optional injected gradient at attn_out or mlp_out to the gradient at
// the layer's input, written to dh (which must not alias dOut) when needIn is
// set, accumulating LoRA gradients.
func (tp *Tape) layerBackward(l int, dOut, inject []float32, site engine.Site, grad *lora.Adapter, b *bwdBufs, dh []float32, needIn bool) {
	e, cfg := tp.e, tp.e.cfg
	L := &e.m.Layers[l]
	lt := &tp.layers[l]
	if dOut != nil {
		copy(dh, dOut)
	} else {
		clear(dh)
	}
	if lt.mlp && (dOut != nil || site == engine.MLPOut) {
		ddn := b.ddn
		switch {
		case dOut == nil:
			clear(ddn)
		case L.MLPPostNorm != nil:
			tp.normBwd(ddn, dOut, lt.dn, L.MLPPostNorm, lt.rMP, false)
			if tp.full != nil {
				tp.normWeightGrad(tp.full.Layers[l].MLPPostNorm, dOut, lt.dn, lt.rMP)
			}
		default:
			copy(ddn, dOut)
		}
		if site == engine.MLPOut {
			e.addTo(ddn, inject)
		}
		tp.projsBwd(l, b.da, lt, grad, projIO{model.Down, ddn})
		gelu := cfg.Act == model.GELUTanh
		da, dg, dup := b.da, b.dg, b.dup
		e.pool.run(len(da), expGrain, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				var act, grad float32
				if gelu {
					act, grad = geluTanh(lt.g[i]), geluTanhGrad(lt.g[i])
				} else {
					act, grad = siluGrad(lt.g[i], lt.den[i])
				}
				dg[i] = da[i] * lt.up[i] * grad
				dup[i] = da[i] * act
			}
		})
		tp.projsBwd(l, b.dxn2, lt, grad, projIO{model.Gate, dg}, projIO{model.Up, dup})
		if tp.full != nil {
			tp.normWeightGrad(tp.full.Layers[l].MLPNorm, b.dxn2, lt.h, lt.r2)
		}
		tp.normBwd(dh, b.dxn2, lt.h, L.MLPNorm, lt.r2, true)
	}
	do := dh // read-only below, until normBwd updates dh after the last use
	if L.AttnPostNorm != nil {
		do = b.do
		tp.normBwd(do, dh, lt.o, L.AttnPostNorm, lt.rAP, false)
		if tp.full != nil {
			tp.normWeightGrad(tp.full.Layers[l].AttnPostNorm, dh, lt.o, lt.rAP)
		}
	}
	if site == engine.AttnOut {
		if L.AttnPostNorm == nil {
			do = b.do
			copy(do, dh)
		}
		e.addTo(do, inject)
	}
	var dxn1 []float32
	if needIn {
		dxn1 = b.dxn1
	} else if tp.a.Get(l, model.Q) == nil && tp.a.Get(l, model.K) == nil && tp.a.Get(l, model.V) == nil {
		tp.projsBwd(l, nil, lt, grad, projIO{model.O, do})
		return
	}
	tp.projsBwd(l, b.datt, lt, grad, projIO{model.O, do})
	dq, dk, dv := b.dq, b.dk, b.dv
	tp.attnBwd(l, lt, b.datt, dq, dk, dv)
	tp.rope(dq, dk, true)
	tp.projsBwd(l, dxn1, lt, grad, projIO{model.Q, dq}, projIO{model.K, dk}, projIO{model.V, dv})
	if needIn {
		if tp.full != nil {
			tp.normWeightGrad(tp.full.Layers[l].AttnNorm, dxn1, lt.x, lt.r1)
		}
		tp.normBwd(dh, dxn1, lt.x, L.AttnNorm, lt.r1, true)
	}
}
