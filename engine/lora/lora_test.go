package lora

import (
	"math"
	"testing"

	"github.com/sooserve/sooserve/engine/model"
)

// TestCompactBF16 checks that only pairs whose every value is a bf16 value
// get bf16 copies, that the copies hold the same values, and that a second
// call changes nothing.
func TestCompactBF16(t *testing.T) {
	exact := &Pair{R: 2, In: 3, Out: 2, A: []float32{1, -2, 0.5, 0, 3.25, float32(math.Inf(-1))},
		B: []float32{1.5, 2, -4, math.Float32frombits(0x00010000)}} // the last: a bf16 subnormal
	inexact := &Pair{R: 2, In: 3, Out: 2, A: []float32{1, -2, 0.5, 0, 3.25, -0.125}, B: []float32{1.5, 2, -4, 0.1}}
	a := &Adapter{Name: "x", Rank: 2, Layers: make([][model.NumModules]*Pair, 2)}
	a.Layers[0][model.Q] = exact
	a.Layers[1][model.V] = inexact
	if n := a.CompactBF16(); n != 1 {
		t.Fatalf("CompactBF16 set %d pairs, want 1", n)
	}
	if inexact.A16 != nil || inexact.B16 != nil {
		t.Error("a pair holding 0.1 got bf16 copies")
	}
	for name, c := range map[string]struct {
		f []float32
		h []uint16
	}{"A": {exact.A, exact.A16}, "B": {exact.B, exact.B16}} {
		if len(c.h) != len(c.f) {
			t.Fatalf("%s16 has %d values, want %d", name, len(c.h), len(c.f))
		}
		for i, v := range c.f {
			if got := math.Float32frombits(uint32(c.h[i]) << 16); math.Float32bits(got) != math.Float32bits(v) {
				t.Errorf("%s16[%d] = %g, want %g", name, i, got, v)
			}
		}
	}
	if n := a.CompactBF16(); n != 0 {
		t.Errorf("second CompactBF16 set %d pairs", n)
	}
}
