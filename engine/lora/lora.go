// Package lora holds LoRA adapter weights in the form executors apply them:
// per layer and module, y = W x + Scale · B (A x).
package lora

import (
	"fmt"
	"math"

	"github.com/sooserve/sooserve/engine/model"
)

// Pair is one module's low-rank update: A is [R, In], B is [Out, R], row-major.
type Pair struct {
	R, In, Out int
	A, B       []float32
	Scale      float32
	// A16 and B16, when set (by Adapter.CompactBF16), are A and B as bf16
	// bit patterns: the very same values, so an executor that reads bf16
	// may use them instead and stream half the bytes. A and B must not
	// change once they are set.
	A16, B16 []uint16
}

// Adapter is a LoRA adapter bound to a model configuration.
type Adapter struct {
	Name    string
	Rank    int
	Alpha   float64
	RSLoRA  bool
	Modules []model.Module // the modules it targets
	Layers  [][model.NumModules]*Pair
}

// Scale returns the LoRA scaling: alpha/r, or alpha/sqrt(r) with rsLoRA.
func Scale(alpha float64, r int, rslora bool) float32 {
	if rslora {
		return float32(alpha / math.Sqrt(float64(r)))
	}
	return float32(alpha / float64(r))
}

// Get returns the update for (layer, module), or nil when the adapter leaves it alone.
func (a *Adapter) Get(layer int, m model.Module) *Pair {
	if a == nil || layer >= len(a.Layers) {
		return nil
	}
	return a.Layers[layer][m]
}

// Validate checks every pair against cfg's shapes.
func (a *Adapter) Validate(cfg *model.Config) error {
	if len(a.Layers) != cfg.Layers {
		return fmt.Errorf("lora: adapter %q has %d layers, model has %d", a.Name, len(a.Layers), cfg.Layers)
	}
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p == nil {
				continue
			}
			out, in := cfg.Shape(model.Module(m))
			if p.In != in || p.Out != out || p.R <= 0 || len(p.A) != p.R*p.In || len(p.B) != p.Out*p.R {
				return fmt.Errorf("lora: adapter %q layer %d %s: A [%d,%d] B [%d,%d], want A [r,%d] B [%d,r]",
					a.Name, l, model.Module(m), p.R, p.In, p.Out, p.R, in, out)
			}
		}
	}
	return nil
}

// ZerosLike returns an adapter with the same layers, modules and shapes as a
// and all-zero A and B (for gradients and optimiser moments).
func (a *Adapter) ZerosLike() *Adapter {
	z := &Adapter{Name: a.Name, Rank: a.Rank, Alpha: a.Alpha, RSLoRA: a.RSLoRA, Modules: a.Modules,
		Layers: make([][model.NumModules]*Pair, len(a.Layers))}
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p != nil {
				z.Layers[l][m] = &Pair{R: p.R, In: p.In, Out: p.Out, Scale: p.Scale,
					A: make([]float32, len(p.A)), B: make([]float32, len(p.B))}
			}
		}
	}
	return z
}

// Clone returns a deep copy of a's float32 values (without bf16 copies, so
// the copy's A and B may change).
func (a *Adapter) Clone() *Adapter {
	c := a.ZerosLike()
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p != nil {
				copy(c.Layers[l][m].A, p.A)
				copy(c.Layers[l][m].B, p.B)
			}
		}
	}
	return c
}

// CompactBF16 sets A16 and B16 on every pair whose A and B values are all
// bf16 values (their low 16 bits zero: an adapter stored in bf16, or one
// trained in bf16 and saved as float32), and reports how many pairs it set.
// Pairs with any other value keep float32 only: nothing is rounded. Call it
// before the adapter is shared; A and B must not change afterwards.
func (a *Adapter) CompactBF16() int {
	n := 0
	for _, mods := range a.Layers {
		for _, p := range mods {
			if p == nil || p.A16 != nil {
				continue
			}
			a16, okA := bf16Bits(p.A)
			b16, okB := bf16Bits(p.B)
			if okA && okB {
				p.A16, p.B16 = a16, b16
				n++
			}
		}
	}
	return n
}

// bf16Bits returns v's values as bf16 bit patterns, or false if any value
// is not exactly a bf16 value.
func bf16Bits(v []float32) ([]uint16, bool) {
	for _, f := range v {
		if math.Float32bits(f)&0xffff != 0 {
			return nil, false
		}
	}
	out := make([]uint16, len(v))
	for i, f := range v {
		out[i] = uint16(math.Float32bits(f) >> 16)
	}
	return out, true
}
