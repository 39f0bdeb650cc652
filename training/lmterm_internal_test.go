package training

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
)

// stepGrad runs one step of spec on pairs from a fresh adapter and returns
// the gradient it applied.
func stepGrad(t *testing.T, ex *cpu.Executor, spec Spec, pairs []TokPair) *lora.Adapter {
	t.Helper()
	if err := spec.Normalize(ex.Config()); err != nil {
		t.Fatal(err)
	}
	a := NewAdapter(ex.Config(), &spec, "g")
	// A non-zero B, so that every A has a gradient too.
	for _, mods := range a.Layers {
		for _, p := range mods {
			if p == nil {
				continue
			}
			for i := range p.B {
				p.B[i] = float32(i%7-3) * 0.01
			}
		}
	}
	var bufs stepBuffers
	idx := make([]int, len(pairs))
	for i := range idx {
		idx[i] = i
	}
	if _, err := runStep(context.Background(), ex, &bufs, a, NewAdamW(a, spec.LR, 0), pairs, nil, idx,
		engine.Point{Layer: spec.Layer, Site: spec.site}, spec, 0); err != nil {
		t.Fatal(err)
	}
	return bufs.grad
}

// TestGradSideOther checks grad_side "other" is a stop-gradient on the
// self pass: the SOO loss is symmetric, so the "other" gradients of a pair
// and of its swap add up to the "both" gradient of the pair, and the
// "other" gradient alone differs from it.
func TestGradSideOther(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(td, "models/tiny-llama"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ex := cpu.New(m, cpu.Options{})
	p := TokPair{Self: []int32{20, 5, 6, 77, 81, 7, 21}, Other: []int32{40, 5, 6, 77, 81, 7, 40}}
	sp := Spec{Layer: 1, Site: "attn_out", Pooling: PoolLast, Rank: 4, Alpha: 8, Targets: []string{"q_proj", "v_proj"}, LR: 1e-3, Epochs: 1, BatchSize: 1, Seed: 2}
	both := stepGrad(t, ex, sp, []TokPair{p})
	sp.GradSide = GradOther
	other := stepGrad(t, ex, sp, []TokPair{p})
	swapped := stepGrad(t, ex, sp, []TokPair{{Self: p.Other, Other: p.Self}})
	differs := false
	for l := range both.Layers {
		for mod, g := range both.Layers[l] {
			if g == nil {
				continue
			}
			o, s := other.Layers[l][mod], swapped.Layers[l][mod]
			for _, v := range []struct{ b, o, s []float32 }{{g.A, o.A, s.A}, {g.B, o.B, s.B}} {
				var scale float32
				for _, x := range v.b {
					scale = max(scale, abs32(x))
				}
				for i := range v.b {
					if d := abs32(v.o[i] + v.s[i] - v.b[i]); d > 1e-4*scale+1e-9 {
						t.Fatalf("layer %d %s [%d]: other %g + swapped %g != both %g", l, model.Module(mod), i, v.o[i], v.s[i], v.b[i])
					}
					if abs32(v.o[i]-v.b[i]) > 1e-3*scale {
						differs = true
					}
				}
			}
		}
	}
	if !differs {
		t.Error("grad_side other gave the same gradient as both")
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
