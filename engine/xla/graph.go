package xla

import (
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best with the ops unqualified
	"github.com/gomlx/gomlx/pkg/core/shapes"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/model"
)

func shapeF32(dims ...int) shapes.Shape { return shapes.Make(dtypes.Float32, dims...) }

// loraNode is an adapted module's A [r,in], B [out,r] and scale inside a
// graph; round: x·Aᵀ reads x rounded to bf16 (A stored bf16).
type loraNode struct {
	a, b  *Node
	scale float32
	round bool
}

// net is a model being built as a graph.
type net struct {
	cfg   *model.Config
	w     modelOf[*Node]
	lora  map[[2]int]loraNode // (layer, module) -> pair
	round bf16In
}

// newNet binds the graph inputs in: the LoRA pairs of sig (A then B each),
// then the weights of the first n layers, exactly as loraInputs and
// weightSet.args produce them.
func newNet(cfg *model.Config, round bf16In, sig []loraPair, n int, in []*Node) *net {
	nt := &net{cfg: cfg, lora: map[[2]int]loraNode{}, round: round}
	for i, p := range sig {
		nt.lora[[2]int{p.layer, int(p.mod)}] = loraNode{a: in[2*i], b: in[2*i+1], scale: p.scale, round: p.round}
	}
	in = in[2*len(sig):]
	nt.w.layers = make([]layerOf[*Node], cfg.Layers)
	for i, f := range nt.w.fields(cfg, n) {
		*f = in[i]
	}
	if cfg.TieEmbeddings {
		nt.w.lmHead = nt.w.embed
	}
	return nt
}

// linear applies module m of layer l to x [B,T,in]: x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ.
func (nt *net) linear(l int, m model.Module, x *Node) *Node {
	L := &nt.w.layers[l]
	y := Einsum("bti,oi->bto", productInput(x, nt.round.proj[l][m]), L.w[m])
	if L.b[m] != nil {
		y = Add(y, lastAxis(L.b[m], y.Rank()))
	}
	if p, ok := nt.lora[[2]int{l, int(m)}]; ok {
		u := Einsum("bti,ri->btr", productInput(x, p.round), p.a)
		u = Einsum("btr,or->bto", u, p.b)
		y = Add(y, MulScalar(u, float64(p.scale)))
	}
	return y
}

// productInput is x as a product with weights stored bf16 (if bf16) reads
// it: rounded to bf16 like the cpu executor's inputs, and straight through
// for gradients (x + (r-x) is r exactly: r-x is exact, r representable).
//
// The rounding is float32 arithmetic, since simplego's float32 → bf16
// conversion truncates: adding c = ±2^(e+16), e = ⌊log2|x|⌋, makes x's bf16
// step 2^(e-7) the sum's ulp, so the add rounds x to bf16, ties to even (c
// is an even multiple of that step), and subtracting c again is exact. An e
// misjudged by the logarithm at the edge of a binade changes nothing: such x
// round to the edge either way. Zero stays zero (c = 0). It holds for
// 2^-126 ≤ |x| < 2^111, far beyond any activation (below, the cpu
// executor's zero and this rounding differ by less than 2^-126).
func productInput(x *Node, bf16 bool) *Node {
	if !bf16 {
		return x
	}
	e := Floor(MulScalar(Log(Abs(x)), 1/math.Ln2))
	c := Mul(Sign(x), Pow(AddScalar(OnesLike(x), 1), AddScalar(e, 16)))
	r := Sub(Add(x, c), c)
	return Add(x, StopGradient(Sub(r, x)))
}

// rmsNorm is x·(1/sqrt(mean(x²)+eps))·w over the last axis.
func (nt *net) rmsNorm(x, w *Node) *Node {
	ms := ReduceAndKeep(Square(x), ReduceMean, -1)
	inv := Reciprocal(Sqrt(AddScalar(ms, float64(nt.cfg.NormEps))))
	return Mul(Mul(x, inv), lastAxis(w, x.Rank()))
}

// lastAxis reshapes the vector v to rank r ([1,...,1,n]) for broadcasting
// against a rank-r tensor along its last axis.
func lastAxis(v *Node, r int) *Node {
	dims := make([]int, r)
	for i := range dims {
		dims[i] = 1
	}
	dims[r-1] = v.Shape().Dimensions[0]
	return Reshape(v, dims...)
}

func (nt *net) act(x *Node) *Node {
	if nt.cfg.Act == model.GELUTanh {
		// 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))
		inner := MulScalar(Add(x, MulScalar(Mul(Square(x), x), 0.044715)), math.Sqrt(2/math.Pi))
		return Mul(MulScalar(x, 0.5), AddScalar(Tanh(inner), 1))
	}
	return Mul(x, Sigmoid(x))
}

func softcap(x *Node, c float32) *Node {
	if c <= 0 {
		return x
	}
	return MulScalar(Tanh(MulScalar(x, 1/float64(c))), float64(c))
}

// rope holds the rotary tables for positions 0..T-1 and the rotate_half matrix.
type rope struct {
	cos, sin *Node // [1, T, 1, D]
	rot      *Node // [D, D]: x·rot = rotate_half(x) = cat(-x2, x1)
}

func (nt *net) rope(g *Graph, T int) rope {
	D := nt.cfg.HeadDim
	half := D / 2
	inv := nt.cfg.RopeInvFreq()
	full := make([]float32, D)
	for i := range half {
		full[i], full[i+half] = float32(inv[i]), float32(inv[i])
	}
	pos := Iota(g, shapeF32(T, 1), 0)
	ang := Mul(pos, Reshape(Const(g, full), 1, D)) // f32 product, as Hugging Face computes it
	rot := make([][]float32, D)
	for j := range rot {
		rot[j] = make([]float32, D)
	}
	for i := range half {
		rot[i+half][i] = -1 // out[i] = -x[i+half]
		rot[i][i+half] = 1  // out[i+half] = x[i]
	}
	return rope{
		cos: Reshape(Cos(ang), 1, T, 1, D),
		sin: Reshape(Sin(ang), 1, T, 1, D),
		rot: Const(g, rot),
	}
}

func (r rope) apply(x *Node) *Node { // x [B,T,heads,D]
	return Add(Mul(x, r.cos), Mul(Einsum("bthd,de->bthe", x, r.rot), r.sin))
}

// mask returns the [T,T] boolean attention mask of layer l: query i sees key j
// when j <= i and, with a sliding window w, j > i-w.
func (nt *net) mask(g *Graph, T, l int) *Node {
	qi := Iota(g, shapes.Make(dtypes.Int32, T, T), 0)
	kj := Iota(g, shapes.Make(dtypes.Int32, T, T), 1)
	m := LessOrEqual(kj, qi)
	if w := nt.cfg.Window(l); w > 0 {
		m = LogicalAnd(m, GreaterThan(kj, SubScalar(qi, float64(w))))
	}
	return m
}

// attention returns o_proj's output for the normed input x [B,T,H].
func (nt *net) attention(l int, x *Node, rp rope) *Node {
	cfg := nt.cfg
	g := x.Graph()
	dims := x.Shape().Dimensions
	B, T := dims[0], dims[1]
	KV, D := cfg.KVHeads, cfg.HeadDim
	G := cfg.Heads / KV
	q := rp.apply(Reshape(nt.linear(l, model.Q, x), B, T, cfg.Heads, D))
	k := rp.apply(Reshape(nt.linear(l, model.K, x), B, T, KV, D))
	v := Reshape(nt.linear(l, model.V, x), B, T, KV, D)
	q = Reshape(q, B, T, KV, G, D)         // head h = kv·G + g
	s := Einsum("bqkgd,bskd->bkgqs", q, k) // [B,KV,G,Tq,Ts]
	s = softcap(MulScalar(s, float64(cfg.AttnScale)), cfg.AttnSoftcap)
	m := BroadcastToDims(Reshape(nt.mask(g, T, l), 1, 1, 1, T, T), B, KV, G, T, T)
	s = Where(m, s, Scalar(g, dtypes.Float32, -1e30))
	p := Softmax(s, -1)
	o := Einsum("bkgqs,bskd->bqkgd", p, v) // [B,T,KV,G,D]
	return nt.linear(l, model.O, Reshape(o, B, T, cfg.Heads*D))
}

// layer runs decoder layer l on the residual stream x [B,T,H]; sites receives
// the layer's activations. With stopAfter set, it returns as soon as that
// site's value is known (the rest of the layer is not built).
func (nt *net) layer(l int, x *Node, rp rope, stopAfter *engine.Site) (out *Node, sites [engine.NumSites]*Node) {
	L := &nt.w.layers[l]
	a := nt.attention(l, nt.rmsNorm(x, L.attnNorm), rp)
	sites[engine.AttnOut] = a
	if stopAfter != nil && *stopAfter == engine.AttnOut {
		return nil, sites
	}
	if L.attnPost != nil {
		a = nt.rmsNorm(a, L.attnPost)
	}
	h := Add(x, a)
	y := nt.rmsNorm(h, L.mlpNorm)
	y = nt.linear(l, model.Down, Mul(nt.act(nt.linear(l, model.Gate, y)), nt.linear(l, model.Up, y)))
	sites[engine.MLPOut] = y
	if L.mlpPost != nil {
		y = nt.rmsNorm(y, L.mlpPost)
	}
	out = Add(h, y)
	sites[engine.ResidPost] = out
	return out, sites
}

func (nt *net) embed(tokens *Node) *Node { // tokens [B,T] int32 -> [B,T,H]
	x := Gather(nt.w.embed, InsertAxes(tokens, -1))
	if s := nt.cfg.EmbedScale; s != 1 && s != 0 {
		x = MulScalar(x, float64(s))
	}
	return x
}

// logits maps final hidden states [..., H] to [..., vocab].
func (nt *net) logits(x *Node) *Node {
	x = productInput(nt.rmsNorm(x, nt.w.finalNorm), nt.round.head)
	var y *Node
	if x.Rank() == 2 {
		y = Einsum("bh,vh->bv", x, nt.w.lmHead)
	} else {
		y = Einsum("bth,vh->btv", x, nt.w.lmHead)
	}
	return softcap(y, nt.cfg.FinalSoftcap)
}

// buildForward is the forward graph: inputs are tokens [1,T] int32, then for
// LogitsLast a one-hot selector [1,T] of the last real token, then the LoRA
// pairs and the weights. Outputs: logits ([1,V] or [1,T,V]) unless
// LogitsNone, then with capture the stacked activations [layers, sites, 1, T, H].
func (e *Executor) buildForward(spec fwdSpec, in []*Node) []*Node {
	tokens := in[0]
	in = in[1:]
	var sel *Node
	if spec.mode == engine.LogitsLast {
		sel, in = in[0], in[1:]
	}
	nt := newNet(e.cfg, e.weights.round, spec.lora, spec.layers, in)
	g := tokens.Graph()
	T := tokens.Shape().Dimensions[1]
	rp := nt.rope(g, T)
	x := nt.embed(tokens)
	var acts []*Node
	for l := 0; l < spec.layers; l++ {
		var s [engine.NumSites]*Node
		x, s = nt.layer(l, x, rp, nil)
		if spec.capture {
			acts = append(acts, Stack(s[:], 0))
		}
	}
	var outs []*Node
	switch spec.mode {
	case engine.LogitsLast:
		outs = append(outs, nt.logits(Einsum("bt,bth->bh", sel, x)))
	case engine.LogitsAll:
		outs = append(outs, nt.logits(x))
	}
	if spec.capture {
		outs = append(outs, Stack(acts, 0))
	}
	return outs
}
