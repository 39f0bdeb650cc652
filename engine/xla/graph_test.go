package xla

import (
	"math"
	"math/rand/v2"
	"testing"

	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // as in graph.go

	"github.com/sooserve/sooserve/engine/safetensors"
)

// TestProductInputRoundsToBF16 checks the graph's float32 rounding of
// inputs to bf16-weight products against the bit rounding the weights use
// (to nearest, ties to even): random values over 120 binades, exact ties,
// binade edges and zeros.
func TestProductInputRoundsToBF16(t *testing.T) {
	b, name, err := openBackend("")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Finalize()
	rng := rand.New(rand.NewPCG(1, 2))
	x := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.5, math.Float32frombits(0x3f7fffff), math.Float32frombits(0x3f7f8000),
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0xbf818000)}
	for range 1 << 14 {
		u := rng.Uint32()&0x807fffff | uint32(67+rng.IntN(120))<<23 // exponents 2^-60 .. 2^59
		if rng.IntN(4) == 0 {
			u = u&^0xffff | 0x8000 // a tie
		}
		x = append(x, math.Float32frombits(u))
	}
	got := MustExecOnce(b, func(x *Node) *Node { return productInput(x, true) }, x).Value().([]float32)
	for i, v := range x {
		want := math.Float32frombits(uint32(safetensors.F32ToBF16(v)) << 16)
		if math.Float32bits(got[i]) != math.Float32bits(want) && !(got[i] == 0 && want == 0) {
			t.Fatalf("%s: bf16(%g = %#08x) = %#08x, want %#08x", name, v, math.Float32bits(v), math.Float32bits(got[i]), math.Float32bits(want))
		}
	}
}
