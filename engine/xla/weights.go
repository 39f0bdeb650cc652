package xla

import (
	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/sooserve/sooserve/engine/model"
)

// layerOf holds one decoder layer's weights as T: host tensors when passing
// arguments, graph nodes when building graphs. Absent weights (biases or
// sandwich norms the architecture lacks) stay zero-valued and are skipped.
type layerOf[T any] struct {
	attnNorm, attnPost, mlpNorm, mlpPost T
	w, b                                 [model.NumModules]T
}

// fields returns pointers to the layer's present weights in argument order.
func (l *layerOf[T]) fields(cfg *model.Config) []*T {
	f := []*T{&l.attnNorm, &l.mlpNorm}
	if cfg.SandwichNorms {
		f = append(f, &l.attnPost, &l.mlpPost)
	}
	for m := model.Module(0); m < model.NumModules; m++ {
		f = append(f, &l.w[m])
		if cfg.HasBias(m) {
			f = append(f, &l.b[m])
		}
	}
	return f
}

// modelOf holds the model's weights as T (see layerOf). lmHead is absent when
// the embeddings are tied.
type modelOf[T any] struct {
	embed, finalNorm, lmHead T
	layers                   []layerOf[T]
}

// fields returns pointers to the weights of the first n layers (and the
// embeddings, plus the head when n is every layer) in argument order.
func (m *modelOf[T]) fields(cfg *model.Config, n int) []*T {
	f := []*T{&m.embed}
	for l := 0; l < n; l++ {
		f = append(f, m.layers[l].fields(cfg)...)
	}
	if n == cfg.Layers {
		f = append(f, &m.finalNorm)
		if !cfg.TieEmbeddings {
			f = append(f, &m.lmHead)
		}
	}
	return f
}

// weightSet is the model's weights as float32 tensors resident on the backend.
type weightSet struct {
	cfg   *model.Config
	t     modelOf[*tensors.Tensor]
	round bf16In
}

// bf16In records which products read their inputs rounded to bf16: those
// whose weights are stored bf16, as the cpu executor computes them.
type bf16In struct {
	proj [][model.NumModules]bool // [layer][module]
	head bool
	on   bool // the rule is on (not ExactBF16Inputs): LoRA pairs with bf16 copies round too
}

// newWeightSet loads m's weights onto b; with round, products with bf16
// weights will read their inputs rounded to bf16.
func newWeightSet(m *model.Model, b backends.Backend, round bool) *weightSet {
	cfg := m.Config
	ws := &weightSet{cfg: cfg}
	w := &ws.t
	w.layers = make([]layerOf[*tensors.Tensor], cfg.Layers)
	w.embed = matrixTensor(&m.Embed)
	w.finalNorm = vecTensor(m.FinalNorm)
	if !cfg.TieEmbeddings {
		w.lmHead = matrixTensor(m.LMHead)
	}
	ws.round.on = round
	ws.round.head = round && m.LMHead.DType == model.BF16
	ws.round.proj = make([][model.NumModules]bool, cfg.Layers)
	for l := range ws.round.proj {
		for mod := range model.NumModules {
			ws.round.proj[l][mod] = round && m.Layers[l].Proj[mod].W.DType == model.BF16
		}
	}
	for l := range w.layers {
		src, dst := &m.Layers[l], &w.layers[l]
		dst.attnNorm = vecTensor(src.AttnNorm)
		dst.mlpNorm = vecTensor(src.MLPNorm)
		if cfg.SandwichNorms {
			dst.attnPost = vecTensor(src.AttnPostNorm)
			dst.mlpPost = vecTensor(src.MLPPostNorm)
		}
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			dst.w[mod] = matrixTensor(&src.Proj[mod].W)
			if cfg.HasBias(mod) {
				dst.b[mod] = vecTensor(src.Proj[mod].Bias)
			}
		}
	}
	for _, p := range w.fields(cfg, cfg.Layers) {
		(*p).MustMaterializeOnDevice(b, false, 0)
		(*p).FinalizeLocal()
	}
	return ws
}

// args returns the tensors a graph over the first n layers takes, in order.
func (ws *weightSet) args(n int) []*tensors.Tensor {
	f := ws.t.fields(ws.cfg, n)
	out := make([]*tensors.Tensor, len(f))
	for i, p := range f {
		out[i] = *p
	}
	return out
}

func (ws *weightSet) finalize() {
	for _, p := range ws.t.fields(ws.cfg, ws.cfg.Layers) {
		(*p).FinalizeAll()
	}
}

func vecTensor(v []float32) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(v, len(v))
}

func matrixTensor(m *model.Matrix) *tensors.Tensor {
	if m.DType == model.F32 {
		return tensors.FromFlatDataAndDimensions(m.F32, m.Rows, m.Cols)
	}
	t := tensors.FromShape(shapeF32(m.Rows, m.Cols))
	tensors.MustMutableFlatData(t, func(flat []float32) {
		for i := 0; i < m.Rows; i++ {
			m.RowF32(i, flat[i*m.Cols:(i+1)*m.Cols])
		}
	})
	return t
}
