package cpu

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// This file is the training path: a forward pass over whole sequences that
// records what the backward pass needs (a Tape), and the backward pass that
// turns the gradient of a loss with respect to captured activations into
// gradients for the LoRA A and B matrices. The base weights are frozen.
// Each operation's backward sits next to the forward it undoes; the whole is
// checked against finite differences and the PyTorch reference's autograd.

// TrainOptions configures a training forward pass.
type TrainOptions struct {
	// Dropout is the LoRA input dropout probability (PEFT's lora_dropout).
	Dropout float64
	// Seed seeds the dropout masks.
	Seed uint64
}

// linTape records one projection's LoRA intermediates.
type linTape struct {
	in   []float32 // input x [N, In] (aliases another buffer of the layer)
	drop []float32 // dropout(x) when dropout is on; nil otherwise
	u    []float32 // A·dropout(x), [N, R]
}

// layerTape records one decoder layer's forward pass.
type layerTape struct {
	x        []float32 // input residual stream [N, d]
	xn1      []float32
	r1       []float32 // 1/rms per token for the attention norm
	q, k, v  []float32 // q, k after RoPE
	probs    []float32 // per (segment, head) probability matrices, concatenated
	capped   []float32 // soft-capped scores (only with soft-capping)
	att      []float32
	o        []float32 // attn_out
	rAP      []float32 // 1/rms of the attention post-norm (gemma2)
	h        []float32 // residual after attention
	xn2      []float32
	r2       []float32
	g, up, a []float32
	dn       []float32 // mlp_out
	rMP      []float32
	lin      [model.NumModules]linTape
	mlp      bool // whether the MLP half ran
}

// Tape is a recorded training forward pass over one or more sequences, each
// starting at position 0.
type Tape struct {
	e       *Executor
	a       *lora.Adapter
	segs    []int // token offset of each sequence; last entry = total
	point   engine.Point
	layers  []layerTape
	cos     []float32
	sin     []float32
	dropout float64
	probOff [][]int // [segment][head] offset into layer probs
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
	tp := &Tape{e: e, a: a, point: point, dropout: opts.Dropout, segs: []int{0}}
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
		tp.segs = append(tp.segs, len(toks))
	}
	N, d := len(toks), cfg.Hidden
	half := cfg.HeadDim / 2
	tp.cos = make([]float32, N*half)
	tp.sin = make([]float32, N*half)
	for si := 0; si+1 < len(tp.segs); si++ {
		for t := tp.segs[si]; t < tp.segs[si+1]; t++ {
			pos := float32(t - tp.segs[si])
			for f := 0; f < half; f++ {
				ang := float64(pos * float32(e.invFreq[f]))
				tp.cos[t*half+f] = float32(math.Cos(ang))
				tp.sin[t*half+f] = float32(math.Sin(ang))
			}
		}
	}
	tp.probOff = make([][]int, len(seqs))
	off := 0
	for si := range seqs {
		n := tp.segs[si+1] - tp.segs[si]
		tp.probOff[si] = make([]int, cfg.Heads)
		for h := range cfg.Heads {
			tp.probOff[si][h] = off
			off += n * n
		}
	}
	x := make([]float32, N*d)
	for t, tok := range toks {
		row := x[t*d : (t+1)*d]
		e.m.Embed.RowF32(int(tok), row)
		for k := range row {
			row[k] *= cfg.EmbedScale
		}
	}
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
	acts := make([]engine.Tensor2D, len(seqs))
	for si := range seqs {
		lo, hi := tp.segs[si], tp.segs[si+1]
		acts[si] = engine.Tensor2D{Rows: hi - lo, Cols: d, Data: append([]float32(nil), src[lo*d:hi*d]...)}
	}
	return tp, acts, nil
}

// normFwd applies RMSNorm per token and returns the 1/rms factors.
func normFwd(dst, x, w []float32, eps float32, n int) []float32 {
	d := len(w)
	r := make([]float32, n)
	for t := 0; t < n; t++ {
		xt := x[t*d : (t+1)*d]
		var ss float64
		for _, v := range xt {
			ss += float64(v) * float64(v)
		}
		inv := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
		r[t] = inv
		for i, v := range xt {
			dst[t*d+i] = v * inv * w[i]
		}
	}
	return r
}

// normBwd accumulates into dx the gradient through y = x·r·w given dy.
func normBwd(dx, dy, x, w, r []float32, n int) {
	d := len(w)
	for t := 0; t < n; t++ {
		xt, gt, dxt := x[t*d:(t+1)*d], dy[t*d:(t+1)*d], dx[t*d:(t+1)*d]
		var s float64
		for i := range xt {
			s += float64(gt[i]) * float64(w[i]) * float64(xt[i])
		}
		rt := r[t]
		c := float32(s/float64(d)) * rt * rt * rt
		for i := range xt {
			dxt[i] += rt*gt[i]*w[i] - c*xt[i]
		}
	}
}

// projFwd computes out = x·Wᵀ + b + s·B(A·dropout(x)) over all N tokens.
func (tp *Tape) projFwd(l int, mod model.Module, x []float32, out []float32, lt *layerTape, rng *rand.Rand) {
	e := tp.e
	N := tp.segs[len(tp.segs)-1]
	lin := &e.m.Layers[l].Proj[mod]
	e.matmul(&lin.W, lin.Bias, x, N, out)
	p := tp.a.Get(l, mod)
	if p == nil {
		return
	}
	rec := linTape{in: x}
	xin := x
	if tp.dropout > 0 {
		keep := float32(1 / (1 - tp.dropout))
		rec.drop = make([]float32, len(x))
		for i, v := range x {
			if rng.Float64() >= tp.dropout {
				rec.drop[i] = v * keep
			}
		}
		xin = rec.drop
	}
	rec.u = make([]float32, N*p.R)
	for t := 0; t < N; t++ {
		xt := xin[t*p.In : (t+1)*p.In]
		for j := 0; j < p.R; j++ {
			rec.u[t*p.R+j] = dot(p.A[j*p.In:(j+1)*p.In], xt)
		}
		ot := out[t*p.Out : (t+1)*p.Out]
		ut := rec.u[t*p.R : (t+1)*p.R]
		for o := range ot {
			ot[o] += p.Scale * dot(p.B[o*p.R:(o+1)*p.R], ut)
		}
	}
	lt.lin[mod] = rec
}

// projBwd accumulates dx += dy·W (+ the LoRA path) and the LoRA gradients.
func (tp *Tape) projBwd(l int, mod model.Module, dy, dx []float32, lt *layerTape, grad *lora.Adapter) {
	e := tp.e
	N := tp.segs[len(tp.segs)-1]
	e.matmulBwd(l, mod, dy, N, dx)
	p := tp.a.Get(l, mod)
	if p == nil {
		return
	}
	rec := &lt.lin[mod]
	g := grad.Get(l, mod)
	xin := rec.in
	if rec.drop != nil {
		xin = rec.drop
	}
	du := make([]float32, p.R)
	dxl := make([]float32, p.In)
	for t := 0; t < N; t++ {
		dyt := dy[t*p.Out : (t+1)*p.Out]
		ut := rec.u[t*p.R : (t+1)*p.R]
		clear(du)
		for o, gy := range dyt {
			if gy == 0 {
				continue
			}
			gs := gy * p.Scale
			axpy(gs, ut, g.B[o*p.R:(o+1)*p.R])
			axpy(gs, p.B[o*p.R:(o+1)*p.R], du)
		}
		xt := xin[t*p.In : (t+1)*p.In]
		clear(dxl)
		for j, gu := range du {
			axpy(gu, xt, g.A[j*p.In:(j+1)*p.In])
			axpy(gu, p.A[j*p.In:(j+1)*p.In], dxl)
		}
		dxt := dx[t*p.In : (t+1)*p.In]
		if rec.drop != nil {
			// d dropout(x)/dx is the kept mask scaled by 1/(1-p).
			keep := float32(1 / (1 - tp.dropout))
			for i, v := range dxl {
				if xin[t*p.In+i] != 0 || rec.in[t*p.In+i] == 0 {
					dxt[i] += v * keep
				}
			}
		} else {
			for i, v := range dxl {
				dxt[i] += v
			}
		}
	}
}

// matmulBwd accumulates dx[n, W.Cols] += dy[n, W.Rows]·W. It runs the
// forward kernels over Wᵀ, which is built once per weight and kept (training
// trades that memory for backward passes as fast as forward ones).
func (e *Executor) matmulBwd(l int, mod model.Module, dy []float32, n int, dx []float32) {
	wt := e.wT.get(&e.m.Layers[l].Proj[mod].W, l, mod)
	tmp := make([]float32, n*wt.Rows)
	e.matmul(wt, nil, dy, n, tmp)
	for i, v := range tmp {
		dx[i] += v
	}
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
	row := make([]float32, w.Cols)
	for o := 0; o < w.Rows; o++ {
		w.RowF32(o, row)
		for i, v := range row {
			t.F32[i*w.Rows+o] = v
		}
	}
	c.m[l][mod] = t
	return t
}

func (tp *Tape) layerForward(l int, x []float32, mlp bool, rng *rand.Rand, probLen int) []float32 {
	e, cfg := tp.e, tp.e.cfg
	L := &e.m.Layers[l]
	N, d := tp.segs[len(tp.segs)-1], cfg.Hidden
	lt := &tp.layers[l]
	lt.x = x
	lt.xn1 = make([]float32, N*d)
	lt.r1 = normFwd(lt.xn1, x, L.AttnNorm, cfg.NormEps, N)
	lt.q = make([]float32, N*cfg.QDim())
	lt.k = make([]float32, N*cfg.KVDim())
	lt.v = make([]float32, N*cfg.KVDim())
	tp.projFwd(l, model.Q, lt.xn1, lt.q, lt, rng)
	tp.projFwd(l, model.K, lt.xn1, lt.k, lt, rng)
	tp.projFwd(l, model.V, lt.xn1, lt.v, lt, rng)
	hd, half := cfg.HeadDim, cfg.HeadDim/2
	for t := 0; t < N; t++ {
		c, s := tp.cos[t*half:(t+1)*half], tp.sin[t*half:(t+1)*half]
		for h := 0; h < cfg.Heads; h++ {
			rope(lt.q[(t*cfg.Heads+h)*hd:(t*cfg.Heads+h+1)*hd], c, s)
		}
		for h := 0; h < cfg.KVHeads; h++ {
			rope(lt.k[(t*cfg.KVHeads+h)*hd:(t*cfg.KVHeads+h+1)*hd], c, s)
		}
	}
	lt.probs = make([]float32, probLen)
	if cfg.AttnSoftcap > 0 {
		lt.capped = make([]float32, probLen)
	}
	lt.att = make([]float32, N*cfg.QDim())
	tp.attnFwd(l, lt)
	lt.o = make([]float32, N*d)
	tp.projFwd(l, model.O, lt.att, lt.o, lt, rng)
	on := lt.o
	if L.AttnPostNorm != nil {
		on = make([]float32, N*d)
		lt.rAP = normFwd(on, lt.o, L.AttnPostNorm, cfg.NormEps, N)
	}
	lt.h = make([]float32, N*d)
	for i := range lt.h {
		lt.h[i] = x[i] + on[i]
	}
	if !mlp {
		return lt.h
	}
	lt.mlp = true
	lt.xn2 = make([]float32, N*d)
	lt.r2 = normFwd(lt.xn2, lt.h, L.MLPNorm, cfg.NormEps, N)
	I := cfg.Intermediate
	lt.g, lt.up, lt.a = make([]float32, N*I), make([]float32, N*I), make([]float32, N*I)
	tp.projFwd(l, model.Gate, lt.xn2, lt.g, lt, rng)
	tp.projFwd(l, model.Up, lt.xn2, lt.up, lt, rng)
	act := silu
	if cfg.Act == model.GELUTanh {
		act = geluTanh
	}
	for i, g := range lt.g {
		lt.a[i] = act(g) * lt.up[i]
	}
	lt.dn = make([]float32, N*d)
	tp.projFwd(l, model.Down, lt.a, lt.dn, lt, rng)
	dnn := lt.dn
	if L.MLPPostNorm != nil {
		dnn = make([]float32, N*d)
		lt.rMP = normFwd(dnn, lt.dn, L.MLPPostNorm, cfg.NormEps, N)
	}
	out := make([]float32, N*d)
	for i := range out {
		out[i] = lt.h[i] + dnn[i]
	}
	return out
}

// attnFwd computes causal (optionally windowed, soft-capped) attention per
// segment and head, recording the probabilities.
func (tp *Tape) attnFwd(l int, lt *layerTape) {
	cfg := tp.e.cfg
	H, hd, kvd := cfg.Heads, cfg.HeadDim, cfg.KVDim()
	group := H / cfg.KVHeads
	window := cfg.Window(l)
	nseg := len(tp.segs) - 1
	parallel(tp.e.threads, nseg*H, 1, func(lo, hi int) {
		for task := lo; task < hi; task++ {
			si, h := task/H, task%H
			s0, n := tp.segs[si], tp.segs[si+1]-tp.segs[si]
			kh := h / group
			P := lt.probs[tp.probOff[si][h] : tp.probOff[si][h]+n*n]
			for i := 0; i < n; i++ {
				qi := lt.q[((s0+i)*H+h)*hd : ((s0+i)*H+h+1)*hd]
				jlo := 0
				if window > 0 {
					jlo = max(0, i-window+1)
				}
				row := P[i*n : (i+1)*n]
				maxS := float32(math.Inf(-1))
				for j := jlo; j <= i; j++ {
					sc := dot(qi, lt.k[(s0+j)*kvd+kh*hd:(s0+j)*kvd+(kh+1)*hd]) * cfg.AttnScale
					if cfg.AttnSoftcap > 0 {
						sc = softcap(sc, cfg.AttnSoftcap)
						lt.capped[tp.probOff[si][h]+i*n+j] = sc
					}
					row[j] = sc
					maxS = max(maxS, sc)
				}
				var sum float32
				for j := jlo; j <= i; j++ {
					row[j] = float32(math.Exp(float64(row[j] - maxS)))
					sum += row[j]
				}
				o := lt.att[((s0+i)*H+h)*hd : ((s0+i)*H+h+1)*hd]
				for j := jlo; j <= i; j++ {
					row[j] /= sum
					axpy(row[j], lt.v[(s0+j)*kvd+kh*hd:(s0+j)*kvd+(kh+1)*hd], o)
				}
			}
		}
	})
}

// attnBwd turns d att into dq, dk, dv (dk/dv accumulate over the GQA group).
func (tp *Tape) attnBwd(l int, lt *layerTape, datt, dq, dk, dv []float32) {
	cfg := tp.e.cfg
	H, hd, kvd := cfg.Heads, cfg.HeadDim, cfg.KVDim()
	group := H / cfg.KVHeads
	window := cfg.Window(l)
	nseg := len(tp.segs) - 1
	// Tasks are (segment, kv head) so that dk/dv writes never race.
	parallel(tp.e.threads, nseg*cfg.KVHeads, 1, func(lo, hi int) {
		for task := lo; task < hi; task++ {
			si, kh := task/cfg.KVHeads, task%cfg.KVHeads
			s0, n := tp.segs[si], tp.segs[si+1]-tp.segs[si]
			dP := make([]float32, n)
			for h := kh * group; h < (kh+1)*group; h++ {
				P := lt.probs[tp.probOff[si][h] : tp.probOff[si][h]+n*n]
				for i := 0; i < n; i++ {
					jlo := 0
					if window > 0 {
						jlo = max(0, i-window+1)
					}
					doi := datt[((s0+i)*H+h)*hd : ((s0+i)*H+h+1)*hd]
					var sum float32
					for j := jlo; j <= i; j++ {
						vj := lt.v[(s0+j)*kvd+kh*hd : (s0+j)*kvd+(kh+1)*hd]
						dP[j] = dot(doi, vj)
						sum += P[i*n+j] * dP[j]
						axpy(P[i*n+j], doi, dv[(s0+j)*kvd+kh*hd:(s0+j)*kvd+(kh+1)*hd])
					}
					qi := lt.q[((s0+i)*H+h)*hd : ((s0+i)*H+h+1)*hd]
					dqi := dq[((s0+i)*H+h)*hd : ((s0+i)*H+h+1)*hd]
					for j := jlo; j <= i; j++ {
						ds := P[i*n+j] * (dP[j] - sum)
						if cfg.AttnSoftcap > 0 {
							th := lt.capped[tp.probOff[si][h]+i*n+j] / cfg.AttnSoftcap
							ds *= 1 - th*th
						}
						ds *= cfg.AttnScale
						kj := lt.k[(s0+j)*kvd+kh*hd : (s0+j)*kvd+(kh+1)*hd]
						axpy(ds, kj, dqi)
						axpy(ds, qi, dk[(s0+j)*kvd+kh*hd:(s0+j)*kvd+(kh+1)*hd])
					}
				}
			}
		}
	})
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

func siluGrad(x float32) float32 {
	s := 1 / (1 + float32(math.Exp(float64(-x))))
	return s * (1 + x*(1-s))
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

// Backward accumulates into grad (shaped like the tape's adapter, see
// NewGrad) the gradient of a loss whose gradient with respect to the
// captured activations is dActs (one [len(seq), hidden] per sequence).
func (tp *Tape) Backward(ctx context.Context, dActs []engine.Tensor2D, grad *lora.Adapter) error {
	cfg := tp.e.cfg
	if tp.a == nil {
		return fmt.Errorf("cpu: backward: the tape has no adapter to differentiate")
	}
	if len(dActs) != len(tp.segs)-1 {
		return fmt.Errorf("cpu: backward: %d gradients for %d sequences", len(dActs), len(tp.segs)-1)
	}
	N, d := tp.segs[len(tp.segs)-1], cfg.Hidden
	dEntry := make([]float32, N*d)
	for si, g := range dActs {
		lo, hi := tp.segs[si], tp.segs[si+1]
		if g.Rows != hi-lo || g.Cols != d || len(g.Data) != g.Rows*d {
			return fmt.Errorf("cpu: backward: gradient %d is [%d,%d], want [%d,%d]", si, g.Rows, g.Cols, hi-lo, d)
		}
		copy(dEntry[lo*d:], g.Data)
	}
	var dx []float32 // gradient w.r.t. the residual stream leaving the current layer
	for l := tp.point.Layer; l >= 0; l-- {
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
		dx = tp.layerBackward(l, dx, inject, site, grad)
	}
	return nil
}

// layerBackward maps the gradient at the layer's output (dOut, nil for zero)
// plus an optional injected gradient at attn_out or mlp_out to the gradient at
// the layer's input, accumulating LoRA gradients.
func (tp *Tape) layerBackward(l int, dOut, inject []float32, site engine.Site, grad *lora.Adapter) []float32 {
	e, cfg := tp.e, tp.e.cfg
	L := &e.m.Layers[l]
	lt := &tp.layers[l]
	N, d := tp.segs[len(tp.segs)-1], cfg.Hidden
	dh := make([]float32, N*d)
	if lt.mlp && (dOut != nil || site == engine.MLPOut) {
		ddn := make([]float32, N*d)
		if dOut != nil {
			copy(dh, dOut)
			if L.MLPPostNorm != nil {
				normBwd(ddn, dOut, lt.dn, L.MLPPostNorm, lt.rMP, N)
			} else {
				copy(ddn, dOut)
			}
		}
		if site == engine.MLPOut {
			for i, v := range inject {
				ddn[i] += v
			}
		}
		I := cfg.Intermediate
		da := make([]float32, N*I)
		tp.projBwd(l, model.Down, ddn, da, lt, grad)
		actGrad, act := siluGrad, silu
		if cfg.Act == model.GELUTanh {
			actGrad, act = geluTanhGrad, geluTanh
		}
		dg, dup := make([]float32, N*I), make([]float32, N*I)
		for i, v := range da {
			dg[i] = v * lt.up[i] * actGrad(lt.g[i])
			dup[i] = v * act(lt.g[i])
		}
		dxn2 := make([]float32, N*d)
		tp.projBwd(l, model.Gate, dg, dxn2, lt, grad)
		tp.projBwd(l, model.Up, dup, dxn2, lt, grad)
		normBwd(dh, dxn2, lt.h, L.MLPNorm, lt.r2, N)
	} else if dOut != nil {
		copy(dh, dOut)
	}
	do := make([]float32, N*d)
	if L.AttnPostNorm != nil {
		normBwd(do, dh, lt.o, L.AttnPostNorm, lt.rAP, N)
	} else {
		copy(do, dh)
	}
	if site == engine.AttnOut {
		for i, v := range inject {
			do[i] += v
		}
	}
	datt := make([]float32, N*cfg.QDim())
	tp.projBwd(l, model.O, do, datt, lt, grad)
	dq, dk, dv := make([]float32, N*cfg.QDim()), make([]float32, N*cfg.KVDim()), make([]float32, N*cfg.KVDim())
	tp.attnBwd(l, lt, datt, dq, dk, dv)
	hd, half := cfg.HeadDim, cfg.HeadDim/2
	for t := 0; t < N; t++ {
		c, s := tp.cos[t*half:(t+1)*half], tp.sin[t*half:(t+1)*half]
		for h := 0; h < cfg.Heads; h++ {
			ropeBwd(dq[(t*cfg.Heads+h)*hd:(t*cfg.Heads+h+1)*hd], c, s)
		}
		for h := 0; h < cfg.KVHeads; h++ {
			ropeBwd(dk[(t*cfg.KVHeads+h)*hd:(t*cfg.KVHeads+h+1)*hd], c, s)
		}
	}
	dxn1 := make([]float32, N*d)
	tp.projBwd(l, model.Q, dq, dxn1, lt, grad)
	tp.projBwd(l, model.K, dk, dxn1, lt, grad)
	tp.projBwd(l, model.V, dv, dxn1, lt, grad)
	dx := dh // the residual path
	normBwd(dx, dxn1, lt.x, L.AttnNorm, lt.r1, N)
	return dx
}
