package xla

import (
	"context"
	"errors"
	"fmt"

	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // see graph.go
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// SOO poolings accepted by SOOLossGrad.
const (
	PoolFull = "full" // right-pad the shorter activation with zero rows; mean of squared differences over all elements
	PoolMean = "mean" // mean squared difference of the per-token means
	PoolLast = "last" // mean squared difference of the last tokens' activations
)

// SOOLossGrad computes the Self-Other Overlap loss between the activations at
// (layer, site) of the sequences self and other (each run alone from position
// 0, with adapter a applied) and its gradient with respect to every LoRA A and
// B of a. The gradient comes back as an adapter shaped like a whose pairs hold
// dL/dA and dL/dB (zero for pairs that do not reach the site). Pooling is
// "full", "mean" or "last" (see PoolFull, PoolMean, PoolLast). Layers above
// layer are not computed.
func (e *Executor) SOOLossGrad(ctx context.Context, a *lora.Adapter, self, other []int32, layer int, site engine.Site, pooling string) (loss float64, grad *lora.Adapter, err error) {
	cfg := e.cfg
	if a == nil {
		return 0, nil, errors.New("xla: soo: nil adapter")
	}
	if err := a.Validate(cfg); err != nil {
		return 0, nil, fmt.Errorf("xla: soo: %w", err)
	}
	if layer < 0 || layer >= cfg.Layers {
		return 0, nil, fmt.Errorf("xla: soo: layer %d outside [0,%d)", layer, cfg.Layers)
	}
	if site >= engine.NumSites {
		return 0, nil, fmt.Errorf("xla: soo: invalid site %d", site)
	}
	if len(self) == 0 || len(other) == 0 {
		return 0, nil, errors.New("xla: soo: self and other need at least one token each")
	}
	for _, seq := range [][]int32{self, other} {
		if len(seq) > cfg.MaxPositions {
			return 0, nil, fmt.Errorf("xla: soo: sequence length %d exceeds max_position_embeddings %d", len(seq), cfg.MaxPositions)
		}
		for _, t := range seq {
			if t < 0 || int(t) >= cfg.VocabSize {
				return 0, nil, fmt.Errorf("xla: soo: token %d out of range [0,%d)", t, cfg.VocabSize)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, nil, fmt.Errorf("xla: soo: %w", err)
	}

	H := cfg.Hidden
	longest := max(len(self), len(other))
	T := bucket(longest)
	toks := make([]int32, 2*T)
	copy(toks, self)
	copy(toks[T:], other)
	w := make([]float32, 2*T)
	var invDenom float32
	switch pooling {
	case PoolFull:
		for i := range self {
			w[i] = 1
		}
		for i := range other {
			w[T+i] = 1
		}
		invDenom = float32(1 / (float64(longest) * float64(H)))
	case PoolMean:
		for i := range self {
			w[i] = float32(1 / float64(len(self)))
		}
		for i := range other {
			w[T+i] = float32(1 / float64(len(other)))
		}
		invDenom = float32(1 / float64(H))
	case PoolLast:
		w[len(self)-1] = 1
		w[T+len(other)-1] = 1
		invDenom = float32(1 / float64(H))
	default:
		return 0, nil, fmt.Errorf("xla: soo: unknown pooling %q (want full, mean or last)", pooling)
	}

	upstream := func(l int, m model.Module) bool { return l < layer || site != engine.AttnOut || m <= model.O }
	// As the cpu executor's ForwardTrain: LoRA products over unrounded
	// inputs (adapters in training are float32; one with bf16 copies is
	// differentiated as its float32 values).
	lo := loraInputs(a, layer+1, upstream, false)
	spec := sooSpec{layer: layer, site: site, full: pooling == PoolFull, lora: lo.sig}
	x, err := e.exec(spec.key(), func(in []*Node) []*Node { return e.buildSOO(spec, in) })
	if err != nil {
		return 0, nil, err
	}
	args := []*tensors.Tensor{
		tensors.FromFlatDataAndDimensions(toks, 2, T),
		tensors.FromFlatDataAndDimensions(w, 2, T),
		tensors.FromValue(invDenom),
	}
	owned := len(args)
	args = append(args, lo.tensors...)
	args = append(args, e.weights.args(layer+1)...)
	defer func() {
		for _, t := range args[:owned] {
			t.FinalizeAll()
		}
		for _, t := range lo.tensors {
			t.FinalizeAll()
		}
	}()
	res, err := run(x, args)
	if err != nil {
		return 0, nil, fmt.Errorf("xla: soo: %w", err)
	}

	grad = &lora.Adapter{Name: a.Name, Rank: a.Rank, Alpha: a.Alpha, RSLoRA: a.RSLoRA,
		Modules: append([]model.Module(nil), a.Modules...), Layers: make([][model.NumModules]*lora.Pair, len(a.Layers))}
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p != nil {
				grad.Layers[l][m] = &lora.Pair{R: p.R, In: p.In, Out: p.Out, Scale: p.Scale,
					A: make([]float32, len(p.A)), B: make([]float32, len(p.B))}
			}
		}
	}
	for i, p := range lo.sig {
		g := grad.Layers[p.layer][p.mod]
		copy(g.A, res[1+2*i])
		copy(g.B, res[2+2*i])
	}
	return float64(res[0][0]), grad, nil
}

// sooSpec is what a SOO loss-and-gradient graph's structure depends on.
type sooSpec struct {
	layer int
	site  engine.Site
	full  bool // full pooling; else the pooling is a weighted sum over tokens (mean, last)
	lora  []loraPair
}

func (s sooSpec) key() string {
	return fmt.Sprintf("soo/%d/%d/%t/%s", s.layer, s.site, s.full, sigKey(s.lora))
}

// buildSOO is the SOO graph: inputs tokens [2,T] (self, other, zero-padded),
// pooling weights w [2,T], the scalar 1/denominator, then the LoRA pairs and
// the weights of layers 0..layer. Outputs: the loss, then dL/dA and dL/dB for
// each LoRA pair. Rows are selected by contracting with constant vectors rather
// than slicing, since simplego cannot differentiate Slice.
func (e *Executor) buildSOO(spec sooSpec, in []*Node) []*Node {
	tokens, w, invDenom := in[0], in[1], in[2]
	loraIn := in[3 : 3+2*len(spec.lora)]
	nt := newNet(e.cfg, e.weights.round, spec.lora, spec.layer+1, in[3:])
	g := tokens.Graph()
	T := tokens.Shape().Dimensions[1]
	rp := nt.rope(g, T)
	x := nt.embed(tokens)
	var act *Node
	for l := 0; l <= spec.layer; l++ {
		var stop *engine.Site
		if l == spec.layer {
			stop = &spec.site
		}
		var s [engine.NumSites]*Node
		x, s = nt.layer(l, x, rp, stop)
		act = s[spec.site]
	}
	sign := Const(g, []float32{1, -1})
	var d *Node
	if spec.full {
		d = Einsum("b,bth->th", sign, Mul(act, InsertAxes(w, -1)))
	} else {
		d = Einsum("b,bh->h", sign, Einsum("bt,bth->bh", w, act))
	}
	loss := Mul(ReduceAllSum(Square(d)), invDenom)
	outs := []*Node{loss}
	if len(loraIn) > 0 {
		outs = append(outs, Gradient(loss, loraIn...)...)
	}
	return outs
}
