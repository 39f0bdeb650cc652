// Package xla runs the engine's models as GoMLX computation graphs: the same
// Llama-family transformer as the native cpu executor, written once as a graph
// and executed by a GoMLX backend. It serves as an independent implementation
// of the forward pass (per-row LoRA adapters, activation capture, logits) and,
// through GoMLX's reverse-mode autodiff, as the gradient oracle for SOO
// training (SOOLossGrad).
//
// # Backends
//
// The default build is pure Go: it links only GoMLX's simplego backend, which
// needs no PJRT plugin, no GPU and no network. Building with the xla tag
//
//	go build -tags xla ./...
//
// links GoMLX's XLA backend as well (cgo and -ldl at build time; a PJRT plugin
// such as pjrt_c_api_cpu_plugin.so or the CUDA plugin installed at run time).
// With Options.Backend "" or "auto", New then uses XLA when a plugin is found
// and simplego otherwise; "xla:cpu" and "xla:cuda" ask for a plugin explicitly
// and fail when it is missing or the binary lacks the tag. GoMLX's automatic
// plugin download is always disabled.
//
// # Design
//
// There is no KV cache: a Sequence keeps its token history and every Forward
// recomputes the causal forward pass over history plus the new tokens,
// returning results for the new tokens only. Inputs are padded at the end to a
// bucketed length (causal attention keeps padding from reaching real tokens),
// so graphs are compiled once per (adapter shape, output kind, bucket). Weights
// are converted to float32 once, in New, and passed to every graph as device
// resident parameters; LoRA A/B matrices are passed per call, so adapters may
// change between calls (as they do during training).
package xla

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// Options configures New.
type Options struct {
	// Backend selects the GoMLX backend: "" or "auto" (XLA when available,
	// else simplego), "simplego" (optionally "simplego:<config>" with a
	// simplego config string such as "ops_sequential,parallelism=4"),
	// "xla:cpu" or "xla:cuda" (builds with -tags xla only).
	Backend string
	// ExactBF16Inputs makes products with bf16 weights read their inputs
	// unrounded, as cpu.Options.ExactBF16Inputs does; by default they read
	// them rounded to bf16, as the cpu executor's do.
	ExactBF16Inputs bool
}

// Executor runs a model as GoMLX graphs. It implements engine.Executor and is
// safe for concurrent use by several goroutines (each Sequence by one at a time).
type Executor struct {
	cfg         *model.Config
	backend     backends.Backend
	backendName string
	weights     *weightSet

	mu    sync.Mutex
	execs map[string]*graph.Exec
}

var _ engine.Executor = (*Executor)(nil)

// New converts m's weights to float32 tensors on the chosen backend and returns
// an executor for it. The model's memory is not referenced afterwards.
func New(m *model.Model, opts Options) (*Executor, error) {
	if m == nil || m.Config == nil {
		return nil, errors.New("xla: nil model")
	}
	b, name, err := openBackend(opts.Backend)
	if err != nil {
		return nil, err
	}
	e := &Executor{cfg: m.Config, backend: b, backendName: name, execs: map[string]*graph.Exec{}}
	if err := catch(func() { e.weights = newWeightSet(m, b, !opts.ExactBF16Inputs) }); err != nil {
		b.Finalize()
		return nil, fmt.Errorf("xla: loading weights onto %s: %w", name, err)
	}
	return e, nil
}

// Backend names the backend in use: "simplego" (or "simplego:<config>"),
// "xla:cpu" or "xla:cuda".
func (e *Executor) Backend() string { return e.backendName }

// Config returns the model configuration.
func (e *Executor) Config() *model.Config { return e.cfg }

// Close frees the compiled graphs, the weights and the backend. The executor
// must not be used afterwards.
func (e *Executor) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.execs == nil {
		return nil // already closed
	}
	for _, x := range e.execs {
		x.Finalize()
	}
	e.execs = nil
	if e.weights != nil {
		e.weights.finalize()
		e.weights = nil
	}
	e.backend.Finalize()
	return nil
}

// sequence is the executor's Sequence: the token history.
type sequence struct {
	tokens   []int32
	released bool
}

func (s *sequence) Len() int { return len(s.tokens) }
func (s *sequence) Release() { s.tokens, s.released = nil, true }

// NewSequence returns an empty sequence.
func (e *Executor) NewSequence() engine.Sequence { return &sequence{} }

// exec returns the cached Exec for key, building it with fn on first use.
func (e *Executor) exec(key string, fn func([]*graph.Node) []*graph.Node) (*graph.Exec, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.execs == nil {
		return nil, errors.New("xla: executor is closed")
	}
	if x, ok := e.execs[key]; ok {
		return x, nil
	}
	x, err := graph.NewExec(e.backend, fn)
	if err != nil {
		return nil, fmt.Errorf("xla: new graph %s: %w", key, err)
	}
	x.SetMaxCache(-1)
	e.execs[key] = x
	return x, nil
}

// run executes x and copies every output to host float32 slices.
func run(x *graph.Exec, args []*tensors.Tensor) (outs [][]float32, err error) {
	res, err := x.Exec(args)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, t := range res {
			t.FinalizeAll()
		}
	}()
	outs = make([][]float32, len(res))
	for i, t := range res {
		v, err := tensors.CopyFlatData[float32](t)
		if err != nil {
			return nil, fmt.Errorf("output %d: %w", i, err)
		}
		outs[i] = v
	}
	return outs, nil
}

// catch runs f, turning a panic (GoMLX reports errors by panicking) into an error.
func catch(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	f()
	return nil
}

// bucket rounds a sequence length up to the length graphs are compiled for.
func bucket(n int) int {
	if n <= 8 {
		return 8
	}
	if n <= 128 {
		b := 8
		for b < n {
			b *= 2
		}
		return b
	}
	return (n + 63) / 64 * 64
}

// Forward runs one step for every row: the row's tokens are appended to its
// sequence and the full causal forward pass over the sequence is recomputed
// with the row's adapter. Rows are independent; each gets its own graph run.
func (e *Executor) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	outs := make([]engine.Output, len(rows))
	for i := range rows {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("xla: forward: %w", err)
		}
		out, err := e.forwardRow(&rows[i])
		if err != nil {
			return nil, fmt.Errorf("xla: forward row %d: %w", i, err)
		}
		outs[i] = out
	}
	// Commit the new tokens only once every row has succeeded.
	for i := range rows {
		s := rows[i].Seq.(*sequence)
		s.tokens = append(s.tokens, rows[i].Tokens...)
	}
	return outs, nil
}

func (e *Executor) forwardRow(r *engine.Row) (engine.Output, error) {
	cfg := e.cfg
	s, ok := r.Seq.(*sequence)
	if !ok || s == nil {
		return engine.Output{}, fmt.Errorf("sequence %T was not created by this executor", r.Seq)
	}
	if s.released {
		return engine.Output{}, errors.New("sequence was released")
	}
	n := len(r.Tokens)
	if n == 0 {
		return engine.Output{}, errors.New("row has no tokens")
	}
	for _, t := range r.Tokens {
		if t < 0 || int(t) >= cfg.VocabSize {
			return engine.Output{}, fmt.Errorf("token %d out of range [0,%d)", t, cfg.VocabSize)
		}
	}
	if r.Adapter != nil {
		if err := r.Adapter.Validate(cfg); err != nil {
			return engine.Output{}, err
		}
	}
	past := len(s.tokens)
	total := past + n
	if total > cfg.MaxPositions {
		return engine.Output{}, fmt.Errorf("sequence length %d exceeds max_position_embeddings %d", total, cfg.MaxPositions)
	}
	from, to := 0, n
	var points []engine.Point
	if c := r.Capture; c != nil && len(c.Points) > 0 {
		from, to = c.From, c.To
		if to <= 0 {
			to = n
		}
		if from < 0 || from >= to || to > n {
			return engine.Output{}, fmt.Errorf("capture range [%d,%d) outside the row's %d tokens", c.From, c.To, n)
		}
		for _, p := range c.Points {
			if p.Layer < 0 || p.Layer >= cfg.Layers || p.Site >= engine.NumSites {
				return engine.Output{}, fmt.Errorf("capture point (layer %d, %s) invalid for a %d-layer model", p.Layer, p.Site, cfg.Layers)
			}
		}
		points = c.Points
	}
	mode := r.Logits
	if mode > engine.LogitsNone {
		return engine.Output{}, fmt.Errorf("unknown logits mode %d", mode)
	}
	layers := cfg.Layers
	if mode == engine.LogitsNone {
		layers = 0
		for _, p := range points {
			layers = max(layers, p.Layer+1)
		}
		if layers == 0 {
			return engine.Output{}, nil // cache filling only: nothing to compute without a KV cache
		}
	}
	capture := len(points) > 0

	T := bucket(total)
	toks := make([]int32, T)
	copy(toks, s.tokens)
	copy(toks[past:], r.Tokens)
	lo := loraInputs(r.Adapter, layers, nil, e.weights.round.on)
	spec := fwdSpec{layers: layers, mode: mode, capture: capture, lora: lo.sig}
	x, err := e.exec(spec.key(), func(in []*graph.Node) []*graph.Node { return e.buildForward(spec, in) })
	if err != nil {
		return engine.Output{}, err
	}
	args := []*tensors.Tensor{tensors.FromFlatDataAndDimensions(toks, 1, T)}
	if mode == engine.LogitsLast {
		sel := make([]float32, T)
		sel[total-1] = 1
		args = append(args, tensors.FromFlatDataAndDimensions(sel, 1, T))
	}
	owned := len(args)
	args = append(args, lo.tensors...)
	args = append(args, e.weights.args(layers)...)
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
		return engine.Output{}, err
	}
	var out engine.Output
	V, H := cfg.VocabSize, cfg.Hidden
	k := 0
	switch mode {
	case engine.LogitsLast:
		out.Logits = engine.Tensor2D{Rows: 1, Cols: V, Data: res[0]}
		k++
	case engine.LogitsAll:
		out.Logits = engine.Tensor2D{Rows: n, Cols: V, Data: res[0][past*V : total*V : total*V]}
		k++
	}
	if capture {
		acts := res[k] // [layers, NumSites, 1, T, H]
		out.Acts = make(map[engine.Point]engine.Tensor2D, len(points))
		for _, p := range points {
			base := (p.Layer*int(engine.NumSites) + int(p.Site)) * T * H
			d := make([]float32, (to-from)*H)
			copy(d, acts[base+(past+from)*H:base+(past+to)*H])
			out.Acts[p] = engine.Tensor2D{Rows: to - from, Cols: H, Data: d}
		}
	}
	return out, nil
}

// loraPair is one adapted module in a graph's signature.
type loraPair struct {
	layer int
	mod   model.Module
	r     int
	scale float32
	round bool // A is stored bf16 (lora.Pair.A16) and inputs are rounded: x·Aᵀ reads x rounded
}

// loraArgs are the LoRA inputs of one graph run.
type loraArgs struct {
	sig     []loraPair
	tensors []*tensors.Tensor // A then B for each pair of sig
}

// loraInputs lists a's pairs in layers [0, layers), in (layer, module) order,
// keeping only modules for which keep returns true (nil keeps all).
//
// With round, pairs with bf16 copies (an adapter stored in bf16) have their
// down-projection read its input rounded to bf16, as the cpu executor's does.
func loraInputs(a *lora.Adapter, layers int, keep func(l int, m model.Module) bool, round bool) loraArgs {
	var la loraArgs
	if a == nil {
		return la
	}
	for l := 0; l < layers && l < len(a.Layers); l++ {
		for m := model.Module(0); m < model.NumModules; m++ {
			p := a.Layers[l][m]
			if p == nil || (keep != nil && !keep(l, m)) {
				continue
			}
			la.sig = append(la.sig, loraPair{layer: l, mod: m, r: p.R, scale: p.Scale, round: round && p.A16 != nil})
			la.tensors = append(la.tensors,
				tensors.FromFlatDataAndDimensions(p.A, p.R, p.In),
				tensors.FromFlatDataAndDimensions(p.B, p.Out, p.R))
		}
	}
	return la
}

func sigKey(sig []loraPair) string {
	s := ""
	for _, p := range sig {
		s += fmt.Sprintf("%d.%d.%d.%x.%t;", p.layer, p.mod, p.r, p.scale, p.round)
	}
	return s
}

// fwdSpec is what a forward graph's structure depends on (besides shapes).
type fwdSpec struct {
	layers  int
	mode    engine.LogitsMode
	capture bool
	lora    []loraPair
}

func (s fwdSpec) key() string {
	return fmt.Sprintf("fwd/%d/%d/%t/%s", s.layers, s.mode, s.capture, sigKey(s.lora))
}
