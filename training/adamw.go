package training

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/sooserve/sooserve/engine/lora"
)

// AdamW is decoupled-weight-decay Adam (Loshchilov & Hutter) over a LoRA
// adapter's A and B matrices, as torch.optim.AdamW computes it.
type AdamW struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int
	M, V                               *lora.Adapter // first and second moments, shaped like the parameters
}

// NewAdamW returns an optimiser for parameters shaped like a.
func NewAdamW(a *lora.Adapter, lr, weightDecay float64) *AdamW {
	return &AdamW{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: weightDecay, M: a.ZerosLike(), V: a.ZerosLike()}
}

// Update applies one step with gradient g to params. The pairs are updated
// on up to GOMAXPROCS goroutines; each element's update is independent of
// the others, so the result does not depend on the split.
func (o *AdamW) Update(params, g *lora.Adapter) {
	o.Step++
	bc1 := 1 - math.Pow(o.Beta1, float64(o.Step))
	bc2 := 1 - math.Pow(o.Beta2, float64(o.Step))
	type pair struct{ l, m int }
	var pairs []pair
	for l, mods := range params.Layers {
		for m, p := range mods {
			if p != nil {
				pairs = append(pairs, pair{l, m})
			}
		}
	}
	var next atomic.Int64
	work := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(pairs) {
				return
			}
			l, m := pairs[i].l, pairs[i].m
			p, gp, mp, vp := params.Layers[l][m], g.Layers[l][m], o.M.Layers[l][m], o.V.Layers[l][m]
			o.update(p.A, gp.A, mp.A, vp.A, bc1, bc2)
			o.update(p.B, gp.B, mp.B, vp.B, bc1, bc2)
		}
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(pairs)) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}

func (o *AdamW) update(p, g, m, v []float32, bc1, bc2 float64) {
	for i := range p {
		w := float64(p[i]) * (1 - o.LR*o.WeightDecay)
		gi := float64(g[i])
		mi := o.Beta1*float64(m[i]) + (1-o.Beta1)*gi
		vi := o.Beta2*float64(v[i]) + (1-o.Beta2)*gi*gi
		m[i], v[i] = float32(mi), float32(vi)
		w -= o.LR * (mi / bc1) / (math.Sqrt(vi/bc2) + o.Eps)
		p[i] = float32(w)
	}
}
