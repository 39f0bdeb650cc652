package cpu

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// This file is the language-model loss for LoRA training: the Tape's
// forward pass over every layer with an adapter (its input dropout drawn
// as ForwardTrain draws it), the final norm, the LM head and the weighted
// next-token cross-entropy of LMLossGrad, and a backward pass that gives
// the gradients of the adapter's A and B matrices only (the base weights
// are frozen). An SOO job adds it to the SOO loss as an anchor that keeps
// the model's capabilities (see training.Spec's LMWeight).

// LMLoRAOptions configures LMLossGradLoRA.
type LMLoRAOptions struct {
	// Dropout is the LoRA input dropout probability (PEFT's lora_dropout).
	Dropout float64
	// Seed seeds the dropout masks.
	Seed uint64
	// Workspace, when set, supplies the pass's buffers (see Workspace).
	Workspace *Workspace
	// Denominator divides the weighted sum of the targets' losses; 0 means
	// the batch's total weight (a weighted mean).
	Denominator float64
}

// LMLossGradLoRA runs the batch through the whole model with adapter a
// and returns the weighted next-token cross-entropy (as LMLossGrad does).
// When grad is not nil (shaped like a, see NewGrad) it also runs the
// backward pass and adds the loss's gradient with respect to a's A and B
// matrices to grad; nil computes the loss alone. a may be nil only when
// grad is. The base weights may be of any dtype and are not changed.
func (e *Executor) LMLossGradLoRA(ctx context.Context, a *lora.Adapter, b LMBatch, grad *lora.Adapter, opts LMLoRAOptions) (LMResult, error) {
	cfg := e.cfg
	if a != nil {
		if err := a.Validate(cfg); err != nil {
			return LMResult{}, fmt.Errorf("cpu: lm lora: %w", err)
		}
	}
	if grad != nil {
		if err := sameShape(a, grad); err != nil {
			return LMResult{}, err
		}
	}
	if opts.Dropout < 0 || opts.Dropout >= 1 {
		return LMResult{}, fmt.Errorf("cpu: lm lora: dropout %g outside [0, 1)", opts.Dropout)
	}
	toks, segs, sel, res, denom, err := e.prepareLM(b, opts.Denominator, "lm lora")
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
	tp.a, tp.dropout = a, opts.Dropout
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d))
	tp.layers = make([]layerTape, cfg.Layers)
	for l := range cfg.Layers {
		if err := ctx.Err(); err != nil {
			return LMResult{}, fmt.Errorf("cpu: lm lora: %w", err)
		}
		x = tp.layerForward(l, x, true, rng, probLen)
	}
	N, d, V, M := tp.n, cfg.Hidden, cfg.VocabSize, len(sel)
	hn := ws.take(N * d)
	rF := tp.normFwd(hn, x, e.m.FinalNorm)
	h := ws.take(M * d)
	for i, s := range sel {
		copy(h[i*d:(i+1)*d], hn[s.src*d:(s.src+1)*d])
	}
	z := ws.take(M * V)
	tp.matmul(e.m.LMHead, nil, h, M, z)
	ce := make([]float64, M)
	e.crossEntropy(z, sel, ce, grad != nil, denom)
	var sum float64
	for i, s := range sel {
		sum += float64(s.w) * ce[i]
	}
	if denom > 0 {
		res.Loss = sum / denom
	}
	if grad == nil {
		return res, nil
	}
	// z holds the gradient at the logits; dh = dz·Head.
	dh := h
	tp.matmul(tp.headT(), nil, z, M, dh)
	dhn := ws.take(N * d)
	clear(dhn)
	for i, s := range sel {
		copy(dhn[s.src*d:(s.src+1)*d], dh[i*d:(i+1)*d])
	}
	dx := ws.take(N * d)
	tp.normBwd(dx, dhn, x, e.m.FinalNorm, rF, false)
	// Below the lowest adapted layer nothing needs a gradient, and that
	// layer needs none at its input.
	low := 0
	for low < cfg.Layers && !adapted(a, low) {
		low++
	}
	I, qd, kvd := cfg.Intermediate, cfg.QDim(), cfg.KVDim()
	bb := &bwdBufs{dh: [2][]float32{ws.take(N * d), ws.take(N * d)},
		ddn: ws.take(N * d), do: ws.take(N * d), dxn1: ws.take(N * d), dxn2: ws.take(N * d),
		da: ws.take(N * I), dg: ws.take(N * I), dup: ws.take(N * I),
		datt: ws.take(N * qd), dq: ws.take(N * qd), dk: ws.take(N * kvd), dv: ws.take(N * kvd)}
	for l := cfg.Layers - 1; l >= low; l-- {
		if err := ctx.Err(); err != nil {
			return LMResult{}, fmt.Errorf("cpu: lm lora: backward: %w", err)
		}
		dIn := bb.dh[l%2]
		tp.layerBackward(l, dx, nil, engine.NumSites, grad, bb, dIn, l > low)
		dx = dIn
	}
	return res, nil
}

// adapted reports whether a adapts any module of layer l.
func adapted(a *lora.Adapter, l int) bool {
	for m := range model.NumModules {
		if a.Get(l, m) != nil {
			return true
		}
	}
	return false
}

// sameShape checks that grad has a pair shaped like each of a's.
func sameShape(a, grad *lora.Adapter) error {
	if a == nil {
		return fmt.Errorf("cpu: lm lora: a gradient needs an adapter to differentiate")
	}
	if len(grad.Layers) != len(a.Layers) {
		return fmt.Errorf("cpu: lm lora: the gradient has %d layers, the adapter %d (see NewGrad)", len(grad.Layers), len(a.Layers))
	}
	for l := range a.Layers {
		for m, p := range a.Layers[l] {
			g := grad.Layers[l][m]
			if p == nil {
				continue
			}
			if g == nil || g.R != p.R || len(g.A) != len(p.A) || len(g.B) != len(p.B) {
				return fmt.Errorf("cpu: lm lora: the gradient of layer %d %s is not shaped like the adapter's pair (see NewGrad)", l, model.Module(m))
			}
		}
	}
	return nil
}

// headT returns the LM head transposed to f32 [hidden, vocab], in the
// pass's scratch (see weightT), whatever the head's dtype.
func (tp *Tape) headT() *model.Matrix {
	w := tp.e.m.LMHead
	if w.DType == model.F32 {
		return tp.weightT(w)
	}
	buf := tp.ws.fit(&tp.lm.wT, w.Rows*w.Cols)
	tp.e.pool.run(w.Rows, 64, func(lo, hi int) {
		row := make([]float32, w.Cols)
		for r := lo; r < hi; r++ {
			w.RowF32(r, row)
			for c, v := range row {
				buf[c*w.Rows+r] = v
			}
		}
	})
	tp.lm.wTm = model.Matrix{Rows: w.Cols, Cols: w.Rows, DType: model.F32, F32: buf}
	return &tp.lm.wTm
}
