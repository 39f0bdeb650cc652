package cpu

import (
	"context"
	"fmt"
	"math"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/model"
)

// This file is full-parameter training with the language-model loss: the
// Tape's forward pass over every layer, the final norm and the LM head, the
// next-token cross-entropy, and a backward pass that gives the gradient of
// every weight (embeddings, head, norms, projections and their biases).
// It reuses the LoRA path's per-operation forward and backward functions,
// with three switches on the Tape: full (during the backward pass:
// projsBwd, layerBackward and matmulBwd also produce the weights' gradients
// and read fresh weight transposes, since the weights change between
// passes), pad (attention's sums padded to multiples of 8, and its causally
// masked half skipped) and slabs (products split by tokens). Every product,
// the weight gradients' dW = dYᵀ·X included, runs on the tile kernels, and
// every other sum is either serial or split over independent outputs, so a
// pass is bit-for-bit repeatable whatever the thread count. The AVX2
// kernels of lmkern_amd64.s (exponentials, transposes) compute exactly what
// their Go twins do.

// LMBatch is a batch of rows for language-model training. A row may pack
// several documents: attention stays within a document and positions
// restart at 0 where each document begins, so a packed row gives the same
// losses and gradients as its documents in rows of their own.
type LMBatch struct {
	// Rows holds each row's token ids.
	Rows [][]int32
	// Docs, when set, holds a document id per token of each row; a
	// document is a run of equal ids, and an id may not come back in a
	// row once another has started. Nil: each row is one document.
	Docs [][]int32
	// Weights, when set, holds per token the weight of its loss as a
	// target, predicted from the tokens before it in its document (0: no
	// loss; e.g. 5 on an assistant's tokens). The first token of each
	// document is never a target and its weight is ignored. Nil: 1 for
	// every target.
	Weights [][]float32
}

// LMOptions configures LMLossGrad.
type LMOptions struct {
	// Workspace, when set, supplies the pass's buffers (see Workspace).
	Workspace *Workspace
	// Denominator divides the weighted sum of the targets' losses; 0 means
	// the batch's total weight (a weighted mean). A caller that accumulates
	// the gradients of several batches passes their total weight.
	Denominator float64
}

// LMResult is what LMLossGrad measured.
type LMResult struct {
	Loss    float64 // Σ weight·cross-entropy / denominator
	Weight  float64 // Σ weight over the targets
	Targets int     // targets with a non-zero weight
	Tokens  int     // tokens in the batch
}

// LayerGrad holds the gradients of one decoder layer's weights (or, from
// ModelParams' view, the weights themselves). Norm weights follow
// model.Layer: MLPNorm is llama's post_attention_layernorm.
type LayerGrad struct {
	AttnNorm, AttnPostNorm, MLPNorm, MLPPostNorm []float32 // the post norms only with sandwich norms
	W                                            [model.NumModules][]float32
	Bias                                         [model.NumModules][]float32 // nil where the model has none
}

// LMGrad holds the gradient of every weight of a model, laid out as the
// weights are (matrices row-major [out, in]).
type LMGrad struct {
	Embed     []float32 // [vocab, hidden]; with tied embeddings it includes the head's gradient
	LMHead    []float32 // [vocab, hidden]; nil when the embeddings are tied
	FinalNorm []float32
	Layers    []LayerGrad
	cfg       *model.Config
}

// Param is one trainable tensor: its Hugging Face name, shape and values.
type Param struct {
	Name  string
	Shape []int
	Data  []float32
}

// NewLMGrad returns a zero gradient for a model of configuration cfg.
func NewLMGrad(cfg *model.Config) *LMGrad {
	d, V := cfg.Hidden, cfg.VocabSize
	g := &LMGrad{Embed: make([]float32, V*d), FinalNorm: make([]float32, d), Layers: make([]LayerGrad, cfg.Layers), cfg: cfg}
	if !cfg.TieEmbeddings {
		g.LMHead = make([]float32, V*d)
	}
	for l := range g.Layers {
		L := &g.Layers[l]
		L.AttnNorm, L.MLPNorm = make([]float32, d), make([]float32, d)
		if cfg.SandwichNorms {
			L.AttnPostNorm, L.MLPPostNorm = make([]float32, d), make([]float32, d)
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			out, in := cfg.Shape(mod)
			L.W[mod] = make([]float32, out*in)
			if cfg.HasBias(mod) {
				L.Bias[mod] = make([]float32, out)
			}
		}
	}
	return g
}

// Zero sets every gradient to zero.
func (g *LMGrad) Zero() {
	clear(g.Embed)
	clear(g.LMHead)
	clear(g.FinalNorm)
	for l := range g.Layers {
		L := &g.Layers[l]
		clear(L.AttnNorm)
		clear(L.AttnPostNorm)
		clear(L.MLPNorm)
		clear(L.MLPPostNorm)
		for mod := range L.W {
			clear(L.W[mod])
			clear(L.Bias[mod])
		}
	}
}

// Params lists the gradients under the names of the weights they belong to,
// in the order of model.Config.TensorNames (the order ModelParams uses).
func (g *LMGrad) Params() []Param {
	cfg := g.cfg
	d, V := cfg.Hidden, cfg.VocabSize
	var ps []Param
	add := func(name string, data []float32, shape ...int) {
		ps = append(ps, Param{Name: name, Shape: shape, Data: data})
	}
	add("model.embed_tokens.weight", g.Embed, V, d)
	for l := range g.Layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		L := &g.Layers[l]
		add(p+"input_layernorm.weight", L.AttnNorm, d)
		if cfg.SandwichNorms {
			add(p+"post_attention_layernorm.weight", L.AttnPostNorm, d)
			add(p+"pre_feedforward_layernorm.weight", L.MLPNorm, d)
			add(p+"post_feedforward_layernorm.weight", L.MLPPostNorm, d)
		} else {
			add(p+"post_attention_layernorm.weight", L.MLPNorm, d)
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			out, in := cfg.Shape(mod)
			add(p+mod.Path()+".weight", L.W[mod], out, in)
			if cfg.HasBias(mod) {
				add(p+mod.Path()+".bias", L.Bias[mod], out)
			}
		}
	}
	add("model.norm.weight", g.FinalNorm, d)
	if !cfg.TieEmbeddings {
		add("lm_head.weight", g.LMHead, V, d)
	}
	return ps
}

// ModelParams returns views of m's weights (not copies: an optimiser updates
// them in place) in the order and under the names of LMGrad.Params. Norm
// weights include the architecture's NormOffset, as model.Layer holds them.
// Every weight matrix must be f32; a model loaded from a file maps its
// weights read-only, so a trainer works on a copy (see training.CloneModel).
func ModelParams(m *model.Model) ([]Param, error) {
	if err := checkF32(m); err != nil {
		return nil, err
	}
	cfg := m.Config
	v := &LMGrad{Embed: m.Embed.F32, FinalNorm: m.FinalNorm, Layers: make([]LayerGrad, len(m.Layers)), cfg: cfg}
	if !cfg.TieEmbeddings {
		v.LMHead = m.LMHead.F32
	}
	for l := range m.Layers {
		L, G := &m.Layers[l], &v.Layers[l]
		G.AttnNorm, G.AttnPostNorm, G.MLPNorm, G.MLPPostNorm = L.AttnNorm, L.AttnPostNorm, L.MLPNorm, L.MLPPostNorm
		for mod := range L.Proj {
			G.W[mod], G.Bias[mod] = L.Proj[mod].W.F32, L.Proj[mod].Bias
		}
	}
	return v.Params(), nil
}

// checkF32 refuses models with bf16 or f16 weight matrices: full-parameter
// training updates f32 weights.
func checkF32(m *model.Model) error {
	bad := func(name string, w *model.Matrix) error {
		if w.DType != model.F32 {
			return fmt.Errorf("cpu: full-parameter training needs f32 weights, and %s is %s (load the model with dtype f32)", name, w.DType)
		}
		return nil
	}
	if err := bad("model.embed_tokens.weight", &m.Embed); err != nil {
		return err
	}
	if err := bad("lm_head.weight", m.LMHead); err != nil {
		return err
	}
	for l := range m.Layers {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if err := bad(fmt.Sprintf("model.layers.%d.%s.weight", l, mod.Path()), &m.Layers[l].Proj[mod].W); err != nil {
				return err
			}
		}
	}
	return nil
}

// slabTokens is how many tokens a thread takes at a time in matmulSlabs.
const slabTokens = 32

// matmulSlabs computes out[n, w.Rows] = x[n, w.Cols]·wᵀ (+ bias) as matmul
// does, summing every element alike, but splits the tokens rather than the
// weight rows across the threads, in slabs of slabTokens: each slab of a
// large input is read once, by one thread, while the weights stay in cache.
// (matmul's row chunks each stream the whole input: for the LM head's
// gradient, 4096 tokens of 1024 logits, that was 8 passes over 16 MB.)
func (e *Executor) matmulSlabs(w *model.Matrix, bias, x []float32, n int, out []float32) {
	in, rows := w.Cols, w.Rows
	e.pool.run((n+slabTokens-1)/slabTokens, 1, func(lo, hi int) {
		for s := lo; s < hi; s++ {
			t0, t1 := s*slabTokens, min((s+1)*slabTokens, n)
			e.ks.gemm(matrixView(w), bias, x[t0*in:], in, t1-t0, in, out[t0*rows:], rows, 0, rows, nil)
		}
	})
}

// lmTarget is one predicted token: the hidden state at src predicts tok.
type lmTarget struct {
	src int
	tok int32
	w   float32
}

// lmScratch is the temporary storage of a full-parameter backward pass.
type lmScratch struct {
	blocks []float32 // gradProduct's blocks
	wT     []float32 // weightT
	wTm    model.Matrix
}

// flattenLM checks b and lays its documents end to end: the tokens, the
// offsets where documents start (from 0 to the total), and the targets with
// non-zero weights.
func (e *Executor) flattenLM(b LMBatch) ([]int32, []int, []lmTarget, error) {
	if b.Docs != nil && len(b.Docs) != len(b.Rows) {
		return nil, nil, nil, fmt.Errorf("cpu: lm: %d rows of document ids for %d rows", len(b.Docs), len(b.Rows))
	}
	if b.Weights != nil && len(b.Weights) != len(b.Rows) {
		return nil, nil, nil, fmt.Errorf("cpu: lm: %d rows of weights for %d rows", len(b.Weights), len(b.Rows))
	}
	if len(b.Rows) == 0 {
		return nil, nil, nil, fmt.Errorf("cpu: lm: empty batch")
	}
	var toks []int32
	segs := []int{0}
	var sel []lmTarget
	for r, row := range b.Rows {
		var docs []int32
		var ws []float32
		if b.Docs != nil {
			docs = b.Docs[r]
			if len(docs) != len(row) {
				return nil, nil, nil, fmt.Errorf("cpu: lm: row %d has %d tokens and %d document ids", r, len(row), len(docs))
			}
		}
		if b.Weights != nil {
			ws = b.Weights[r]
			if len(ws) != len(row) {
				return nil, nil, nil, fmt.Errorf("cpu: lm: row %d has %d tokens and %d weights", r, len(row), len(ws))
			}
		}
		if len(row) == 0 {
			return nil, nil, nil, fmt.Errorf("cpu: lm: row %d is empty", r)
		}
		seen := map[int32]bool{}
		start := 0
		for t, tok := range row {
			if tok < 0 || int(tok) >= e.cfg.VocabSize {
				return nil, nil, nil, fmt.Errorf("cpu: lm: row %d token %d: id %d outside the vocabulary of %d", r, t, tok, e.cfg.VocabSize)
			}
			w := float32(1)
			if ws != nil {
				w = ws[t]
				if !(w >= 0) || math.IsInf(float64(w), 0) {
					return nil, nil, nil, fmt.Errorf("cpu: lm: row %d token %d: weight %g is not a finite non-negative number", r, t, w)
				}
			}
			if t == 0 || (docs != nil && docs[t] != docs[t-1]) {
				if docs != nil {
					if seen[docs[t]] {
						return nil, nil, nil, fmt.Errorf("cpu: lm: row %d: document %d comes back at token %d after another document", r, docs[t], t)
					}
					seen[docs[t]] = true
				}
				if t > 0 {
					segs = append(segs, len(toks))
				}
				start = t
			} else if w > 0 {
				sel = append(sel, lmTarget{src: len(toks) - 1, tok: tok, w: w})
			}
			if t-start+1 > e.maxCtx {
				return nil, nil, nil, fmt.Errorf("cpu: lm: row %d: a document longer than the context of %d tokens", r, e.maxCtx)
			}
			toks = append(toks, tok)
		}
		segs = append(segs, len(toks))
	}
	return toks, segs, sel, nil
}

// prepareLM flattens b and sums its targets' weights; denominator 0 means
// that sum (a weighted mean). what names the caller in errors.
func (e *Executor) prepareLM(b LMBatch, denominator float64, what string) (toks []int32, segs []int, sel []lmTarget, res LMResult, denom float64, err error) {
	toks, segs, sel, err = e.flattenLM(b)
	if err != nil {
		return nil, nil, nil, LMResult{}, 0, err
	}
	res = LMResult{Tokens: len(toks), Targets: len(sel)}
	for _, s := range sel {
		res.Weight += float64(s.w)
	}
	denom = denominator
	if denom == 0 {
		denom = res.Weight
	}
	if denom < 0 || math.IsNaN(denom) || math.IsInf(denom, 0) {
		return nil, nil, nil, LMResult{}, 0, fmt.Errorf("cpu: %s: denominator %g is not a finite non-negative number", what, denom)
	}
	return toks, segs, sel, res, denom, nil
}

// LMLossGrad runs the batch through the whole model and returns the
// weighted next-token cross-entropy. When g is not nil it also runs the
// backward pass and adds the loss's gradient with respect to every weight
// to g (see NewLMGrad); nil computes the loss alone. The model's weight
// matrices must be f32. After an error (a cancelled ctx) g may hold part of
// the gradient.
func (e *Executor) LMLossGrad(ctx context.Context, b LMBatch, g *LMGrad, opts LMOptions) (LMResult, error) {
	cfg := e.cfg
	if err := checkF32(e.m); err != nil {
		return LMResult{}, err
	}
	if g != nil && (len(g.Layers) != cfg.Layers || len(g.Embed) != cfg.VocabSize*cfg.Hidden || (g.LMHead == nil) != cfg.TieEmbeddings) {
		return LMResult{}, fmt.Errorf("cpu: lm: the gradient is not shaped like the model (see NewLMGrad)")
	}
	toks, segs, sel, res, denom, err := e.prepareLM(b, opts.Denominator, "lm")
	if err != nil {
		return LMResult{}, err
	}
	if len(sel) == 0 {
		return res, nil
	}
	ws := opts.Workspace
	if ws == nil {
		ws = new(Workspace)
	}
	ws.next = 0
	tp, x, probLen := e.beginTape(ws, toks, segs, 8)
	tp.slabs = true
	tp.layers = make([]layerTape, cfg.Layers)
	for l := range cfg.Layers {
		if err := ctx.Err(); err != nil {
			return LMResult{}, fmt.Errorf("cpu: lm: %w", err)
		}
		x = tp.layerForward(l, x, true, nil, probLen)
	}
	N, d, V, M := tp.n, cfg.Hidden, cfg.VocabSize, len(sel)
	hn := ws.take(N * d)
	rF := tp.normFwd(hn, x, e.m.FinalNorm)
	h := ws.take(M * d) // the final hidden states that predict a target
	for i, s := range sel {
		copy(h[i*d:(i+1)*d], hn[s.src*d:(s.src+1)*d])
	}
	z := ws.take(M * V)
	tp.matmul(e.m.LMHead, nil, h, M, z)
	ce := make([]float64, M)
	e.crossEntropy(z, sel, ce, g != nil, denom)
	var sum float64
	for i, s := range sel {
		sum += float64(s.w) * ce[i]
	}
	if denom > 0 {
		res.Loss = sum / denom
	}
	if g == nil {
		return res, nil
	}
	// z now holds the gradient at the logits. The head: dHead = dzᵀ·h and
	// dh = dz·Head.
	if cfg.TieEmbeddings {
		tp.gradProduct(h, d, gradTerm{g.Embed, z})
	} else {
		tp.gradProduct(h, d, gradTerm{g.LMHead, z})
	}
	dh := h // h is no longer needed
	tp.matmul(tp.weightT(e.m.LMHead), nil, z, M, dh)
	dhn := ws.take(N * d)
	clear(dhn)
	for i, s := range sel {
		copy(dhn[s.src*d:(s.src+1)*d], dh[i*d:(i+1)*d])
	}
	tp.full = g
	defer func() { tp.full = nil }()
	tp.normWeightGrad(g.FinalNorm, dhn, x, rF)
	dx := ws.take(N * d)
	tp.normBwd(dx, dhn, x, e.m.FinalNorm, rF, false)
	I, qd, kvd := cfg.Intermediate, cfg.QDim(), cfg.KVDim()
	bb := &bwdBufs{dh: [2][]float32{ws.take(N * d), ws.take(N * d)},
		ddn: ws.take(N * d), do: ws.take(N * d), dxn1: ws.take(N * d), dxn2: ws.take(N * d),
		da: ws.take(N * I), dg: ws.take(N * I), dup: ws.take(N * I),
		datt: ws.take(N * qd), dq: ws.take(N * qd), dk: ws.take(N * kvd), dv: ws.take(N * kvd)}
	for l := cfg.Layers - 1; l >= 0; l-- {
		if err := ctx.Err(); err != nil {
			return LMResult{}, fmt.Errorf("cpu: lm: backward: %w", err)
		}
		dIn := bb.dh[l%2]
		tp.layerBackward(l, dx, nil, engine.NumSites, nil, bb, dIn, true)
		dx = dIn
	}
	tp.embedGrad(g.Embed, toks, dx)
	return res, nil
}

// crossEntropy turns each row i of logits z [len(sel), vocab] into its
// cross-entropy against sel[i].tok (after the final soft-cap, if any), and,
// with grad set, overwrites the row with the gradient of
// w_i·ce_i/denom with respect to the logits before the soft-cap. Rows are
// independent and split over the threads.
func (e *Executor) crossEntropy(z []float32, sel []lmTarget, ce []float64, grad bool, denom float64) {
	V, c := e.cfg.VocabSize, e.cfg.FinalSoftcap
	e.pool.run(len(sel), max(1, expGrain/V), func(lo, hi int) {
		var capped []float32
		if c > 0 {
			capped = make([]float32, V)
		}
		for i := lo; i < hi; i++ {
			row := z[i*V : (i+1)*V]
			if c > 0 {
				for j, v := range row {
					row[j] = softcap(v, c)
				}
				copy(capped, row)
			}
			mx := row[0]
			for _, v := range row {
				mx = max(mx, v)
			}
			zt := row[sel[i].tok]
			expfs(row, row, 1, mx)
			var s float64
			for _, ex := range row {
				s += float64(ex)
			}
			ce[i] = float64(mx) + math.Log(s) - float64(zt)
			if !grad {
				continue
			}
			coef := 0.0
			if denom > 0 {
				coef = float64(sel[i].w) / denom
			}
			scale := float32(coef / s)
			for j := range row {
				row[j] *= scale
			}
			row[sel[i].tok] -= float32(coef)
			if c > 0 {
				for j, v := range capped {
					th := v / c
					row[j] *= 1 - th*th
				}
			}
		}
	})
}

// weightT returns a transposed copy of w, in the pass's scratch, which the
// next call overwrites.
func (tp *Tape) weightT(w *model.Matrix) *model.Matrix {
	buf := tp.ws.fit(&tp.lm.wT, w.Rows*w.Cols)
	tp.e.transpose(buf, w.F32, w.Rows, w.Cols)
	tp.lm.wTm = model.Matrix{Rows: w.Cols, Cols: w.Rows, DType: model.F32, F32: buf}
	return &tp.lm.wTm
}

// input returns the recorded input of module mod's projection.
func (lt *layerTape) input(mod model.Module) []float32 {
	switch mod {
	case model.Q, model.K, model.V:
		return lt.xn1
	case model.O:
		return lt.att
	case model.Gate, model.Up:
		return lt.xn2
	}
	return lt.a
}

// gradBlock is the number of tokens whose products a weight gradient sums
// at a time: the operands of a block's product stay in cache, where a
// product over all of a batch's tokens at once streamed them from memory
// for every chunk of rows.
const gradBlock = 512

// weightGrads adds the weight and bias gradients of projections of layer l
// that share their input x, given their output gradients dy:
// dW = dyᵀ·x (see gradProduct) and db = Σ_t dy[t].
func (tp *Tape) weightGrads(l int, lt *layerTape, ps []projIO) {
	x := lt.input(ps[0].mod)
	g := &tp.full.Layers[l]
	var buf [3]gradTerm
	terms := buf[:0]
	for _, pi := range ps {
		terms = append(terms, gradTerm{g.W[pi.mod], pi.y})
		if gb := g.Bias[pi.mod]; gb != nil {
			tp.colSums(gb, pi.y)
		}
	}
	tp.gradProduct(x, len(x)/tp.n, terms...)
}

// gradTerm is one weight gradient of gradProduct: dW [out, in] and the
// output gradient dy [N, out].
type gradTerm struct{ dW, dy []float32 }

// gradProduct adds to each term's dW the product dyᵀ·x, for x [N, in]
// shared by the terms. The tokens are cut into blocks of gradBlock, which
// the threads take whole: a block's transposes (x's once for all terms) and
// its products on the tile kernels (dW[o, i] = Σ_t dy[t, o]·x[t, i] over
// the block's tokens) go to the block's own scratch, and the blocks'
// products are then added to dW in block order.
func (tp *Tape) gradProduct(x []float32, in int, terms ...gradTerm) {
	e, N := tp.e, len(x)/in
	nb := (N + gradBlock - 1) / gradBlock
	maxOut, sumOut := 0, 0
	for _, gt := range terms {
		out := len(gt.dW) / in
		maxOut, sumOut = max(maxOut, out), sumOut+out
	}
	// Per block: xᵀ [in, k], one dyᵀ [out, k] at a time, the products.
	per := (in+maxOut)*gradBlock + sumOut*in
	buf := tp.ws.fit(&tp.lm.blocks, nb*per)
	prods := func(b int) []float32 { return buf[b*per+(in+maxOut)*gradBlock : (b+1)*per] }
	e.pool.run(nb, 1, func(lo, hi int) {
		for b := lo; b < hi; b++ {
			t0 := b * gradBlock
			k := min(gradBlock, N-t0)
			s := buf[b*per:]
			xT, dyT, p := s[:in*k], s[in*gradBlock:in*gradBlock+maxOut*k], prods(b)
			transposeRows(xT, x[t0*in:(t0+k)*in], k, in, 0, k)
			for _, gt := range terms {
				out := len(gt.dW) / in
				transposeRows(dyT[:out*k], gt.dy[t0*out:(t0+k)*out], k, out, 0, k)
				e.ks.gemm(wmat{dt: dtF32, f32: xT, ld: k}, nil, dyT, k, out, k, p[:out*in], in, 0, in, nil)
				p = p[out*in:]
			}
		}
	})
	off := 0
	for _, gt := range terms {
		dW, o := gt.dW, off
		e.pool.run(len(dW), cheapGrain/nb, func(lo, hi int) {
			for b := range nb {
				for i, v := range prods(b)[o+lo : o+hi] {
					dW[lo+i] += v
				}
			}
		})
		off += len(dW)
	}
}

// colSums adds to db [out] the sums over the tokens of dy [N, out], the
// columns split over the threads, each summed in token order.
func (tp *Tape) colSums(db, dy []float32) {
	out := len(db)
	N := len(dy) / out
	tp.e.pool.run(out, max(8, (out+tp.e.threads-1)/tp.e.threads), func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for t := range N {
			for i, v := range dy[t*out+lo : t*out+hi] {
				acc[i] += float64(v)
			}
		}
		for i, v := range acc {
			db[lo+i] += float32(v)
		}
	})
}

// normWeightGrad adds to dw the gradient at w of y = x·r·w (per token t,
// with r[t] its 1/rms) given dy: Σ_t dy[t]⊙x[t]·r[t]. The columns are split
// over the threads and each sums its tokens in order.
func (tp *Tape) normWeightGrad(dw, dy, x, r []float32) {
	d, N := len(dw), tp.n
	tp.e.pool.run(d, max(8, (d+tp.e.threads-1)/tp.e.threads), func(lo, hi int) {
		acc := make([]float64, hi-lo)
		for t := range N {
			rt := float64(r[t])
			xs, gs := x[t*d+lo:t*d+hi], dy[t*d+lo:t*d+hi]
			for i := range acc {
				acc[i] += float64(gs[i]) * float64(xs[i]) * rt
			}
		}
		for i, v := range acc {
			dw[lo+i] += float32(v)
		}
	})
}

// embedGrad adds the gradient at the embedded tokens dx [N, hidden] to their
// rows of the embedding's gradient (times the embedding scale), in token
// order, the columns split over the threads.
func (tp *Tape) embedGrad(dE []float32, toks []int32, dx []float32) {
	d, scale := tp.e.cfg.Hidden, tp.e.cfg.EmbedScale
	tp.e.pool.run(d, max(8, (d+tp.e.threads-1)/tp.e.threads), func(lo, hi int) {
		for t, tok := range toks {
			row, src := dE[int(tok)*d+lo:int(tok)*d+hi], dx[t*d+lo:t*d+hi]
			for i, v := range src {
				row[i] += scale * v
			}
		}
	})
}
