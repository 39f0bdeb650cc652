// Package gomlxbench compares one critic training step (forward, backward)
// of the hand-written rl/nn MLP with the same computation built as a GoMLX
// graph on GoMLX's pure-Go simplego backend. It holds only benchmarks:
//
//	go test ./rl/nn/gomlxbench -run x -bench . -benchtime 200x
package gomlxbench

import (
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/backends/simplego"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // GoMLX graph code reads best unqualified
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/sooserve/sooserve/rl/nn"
)

const (
	batch  = 1024
	in     = 20 // critic input: 6+10 observations, 2+2 actions
	hidden = 64
)

func data() ([]float64, []float64) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float64, batch*in)
	y := make([]float64, batch)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	for i := range y {
		y[i] = rng.NormFloat64()
	}
	return x, y
}

// BenchmarkHandWritten: forward, MSE loss gradient and backward of the
// critic in rl/nn (float64, one goroutine).
func BenchmarkHandWritten(b *testing.B) {
	x, y := data()
	m := nn.NewMLP(in, hidden, 1, false, rand.New(rand.NewPCG(3, 4)))
	g := make([]float64, len(m.Params))
	var c nn.Cache
	dy := make([]float64, batch)
	for b.Loop() {
		q := m.Forward(x, batch, &c)
		for i := range dy {
			dy[i] = 2 * (q[i] - y[i]) / batch
		}
		clear(g)
		m.Backward(&c, dy, nil, nil, g, nil)
	}
}

func leaky(x *Node) *Node { return Max(x, MulScalar(x, 0.01)) }

// BenchmarkGoMLXSimpleGo: the same step as a GoMLX graph (float64) with
// automatic differentiation, executed by the simplego backend; the graph is
// compiled once, outside the loop.
func BenchmarkGoMLXSimpleGo(b *testing.B) {
	be, err := simplego.New("")
	if err != nil {
		b.Fatal(err)
	}
	x, y := data()
	m := nn.NewMLP(in, hidden, 1, false, rand.New(rand.NewPCG(3, 4)))
	p := m.Params
	o := 0
	take := func(n int) []float64 { s := p[o : o+n]; o += n; return s }
	w1, b1, w2, b2, w3, b3 := take(hidden*in), take(hidden), take(hidden*hidden), take(hidden), take(hidden), take(1)
	exec, err := NewExec(be, func(in []*Node) []*Node {
		xs, ys, w1, b1, w2, b2, w3, b3 := in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7]
		h1 := leaky(Add(MatMul(xs, Transpose(w1, 0, 1)), InsertAxes(b1, 0)))
		h2 := leaky(Add(MatMul(h1, Transpose(w2, 0, 1)), InsertAxes(b2, 0)))
		q := Add(MatMul(h2, Transpose(w3, 0, 1)), InsertAxes(b3, 0))
		loss := ReduceAllMean(Square(Sub(q, ys)))
		return append([]*Node{loss}, Gradient(loss, w1, b1, w2, b2, w3, b3)...)
	})
	if err != nil {
		b.Fatal(err)
	}
	args := []any{
		tensors.FromFlatDataAndDimensions(x, batch, in), tensors.FromFlatDataAndDimensions(y, batch, 1),
		tensors.FromFlatDataAndDimensions(w1, hidden, in), tensors.FromFlatDataAndDimensions(b1, hidden),
		tensors.FromFlatDataAndDimensions(w2, hidden, hidden), tensors.FromFlatDataAndDimensions(b2, hidden),
		tensors.FromFlatDataAndDimensions(w3, 1, hidden), tensors.FromFlatDataAndDimensions(b3, 1),
	}
	for b.Loop() {
		out, err := exec.Exec(args...)
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range out {
			t.FinalizeAll()
		}
	}
}
