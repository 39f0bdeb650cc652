// Package cpu is the native executor: the model of engine/model run with
// hand-written kernels on the CPU, with a KV cache per sequence, batched
// forward steps in which every row has its own position, LoRA adapter and
// activation capture, and (for SOO training) a backward pass for LoRA
// parameters. Products with bf16 weights read their inputs rounded to bf16
// (see kernels.go; Options.ExactBF16Inputs turns that off); every sum is
// float32.
package cpu

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// Options configures an Executor.
type Options struct {
	// Threads is the number of goroutines a step's kernels use; 0 means GOMAXPROCS.
	Threads int
	// MaxContext caps a sequence's length; 0 means the model's max_position_embeddings.
	MaxContext int
	// ExactBF16Inputs makes products with bf16 weights read their float32
	// inputs as they are, without the AVX512_BF16 kernels. By default they
	// read them rounded to bf16 (see the package documentation).
	ExactBF16Inputs bool
}

// Executor runs a model on the CPU. It is safe for concurrent use by several
// goroutines as long as each sequence is in one Forward call at a time.
type Executor struct {
	m        *model.Model
	cfg      *model.Config
	threads  int
	maxCtx   int
	invFreq  []float64
	wT       *transposeCache // transposed weights for the training backward pass, built on first use
	pool     *workerPool
	packBufs bufList    // buffers for inputs packed in pairs
	attnBufs bufList    // attention scratch: scaled queries, sums and scores
	bufs     bufferPool // step scratch
	ks       kernelSet  // native, with the options' bf16 input rounding
}

// New returns an executor for m.
func New(m *model.Model, opts Options) *Executor {
	t := opts.Threads
	if t <= 0 {
		t = runtime.GOMAXPROCS(0)
	}
	mc := opts.MaxContext
	if mc <= 0 || mc > m.Config.MaxPositions {
		mc = m.Config.MaxPositions
	}
	e := &Executor{m: m, cfg: m.Config, threads: t, maxCtx: mc, invFreq: m.Config.RopeInvFreq(),
		wT: &transposeCache{m: make([][model.NumModules]*model.Matrix, m.Config.Layers)}, pool: newWorkerPool(t), ks: native}
	if opts.ExactBF16Inputs {
		e.ks.exactBF16, e.ks.bf16dot = true, false
	}
	runtime.AddCleanup(e, (*workerPool).stop, e.pool)
	return e
}

// Config returns the model's configuration.
func (e *Executor) Config() *model.Config { return e.cfg }

// Model returns the model the executor runs.
func (e *Executor) Model() *model.Model { return e.m }

// MaxContext returns the longest sequence the executor accepts.
func (e *Executor) MaxContext() int { return e.maxCtx }

// Sequence is a KV cache for one sequence.
type Sequence struct {
	ex *Executor
	// kt holds each layer's keys transposed, [KV heads][head dim][room]
	// (room a multiple of 16 positions; the score kernels run along
	// positions); v each layer's values, [n, kvDim].
	kt, v    [][]float32
	n        int
	partial  bool // a capture-only step skipped upper layers: the cache cannot be extended
	released bool
}

// NewSequence returns an empty sequence.
func (e *Executor) NewSequence() engine.Sequence {
	return &Sequence{ex: e, kt: make([][]float32, e.cfg.Layers), v: make([][]float32, e.cfg.Layers)}
}

// Len returns the number of cached tokens.
func (s *Sequence) Len() int { return s.n }

// Release frees the cache.
func (s *Sequence) Release() {
	s.kt, s.v, s.n, s.released = nil, nil, 0, true
}

// Truncate drops cached tokens from position n on, so a sequence can be
// reused for a prompt that shares its first n tokens.
func (s *Sequence) Truncate(n int) {
	if n >= s.n || s.partial {
		return
	}
	kv := s.ex.cfg.KVDim()
	for l := range s.v {
		s.v[l] = s.v[l][:n*kv] // kt's positions past n are simply not read
	}
	s.n = n
}

// minKVPositions is the fewest positions a layer's K or V cache is
// allocated for.
const minKVPositions = 64

// growKV returns buf[:n] with room for add more elements: when it has none,
// a copy with half as much room again (at least minKVPositions positions of
// kv elements, at least n+add, and no more than limit elements unless n+add
// needs it). append's own growth adds a quarter at these sizes, so a
// decoding batch reallocated its 2 × layers caches every few steps, and
// the fresh memory's page faults and the garbage collections they brought
// cost more than the steps' products: an 8-sequence bf16 decode step of the
// 135M shape took 14.7 ms that way against 12.1 with twice the room (blocks
// of 48 steps alternating in one process; half again starts the same way
// below 64 positions). The limit (the executor's context) keeps a long
// prompt's first decode step from doubling its cache.
func growKV(buf []float32, n, add, kv, limit int) []float32 {
	need := n + add
	if need <= cap(buf) {
		return buf[:n]
	}
	nb := make([]float32, n, kvRoom(cap(buf), need, minKVPositions*kv, limit))
	copy(nb, buf[:n])
	return nb
}

// kvRoom is the room a grown cache gets (in elements or positions, as its
// arguments): half again what it had, at least least, at most limit unless
// need asks for more.
func kvRoom(had, need, least, limit int) int {
	return max(min(max(had+had/2, least), limit), need)
}

// growKT returns the key-transposed cache buf (rows rows of len(buf)/rows
// positions each) with room for n+add positions, keeping each row's first
// n: when it has none, a copy with room grown as growKV grows it, rounded up
// to a multiple of 16 positions (the score kernels' block).
func growKT(buf []float32, n, add, rows, limit int) []float32 {
	room := len(buf) / rows
	need := n + add
	if need <= room {
		return buf
	}
	c := (kvRoom(room, need, minKVPositions, limit) + 15) &^ 15
	nb := make([]float32, rows*c)
	for r := range rows {
		copy(nb[r*c:r*c+n], buf[r*room:r*room+n])
	}
	return nb
}

// step is the working state of one Forward call.
type step struct {
	e       *Executor
	rows    []engine.Row
	seqs    []*Sequence
	off     []int // first token of row i in the flattened batch
	n       int   // total tokens
	cos     []float32
	sin     []float32
	outs    []engine.Output
	lastLay int
	// blocks and blocksPer cache attnBlocks.
	blocks    [][2]int32
	blocksPer int
}

// ErrPartialSequence is returned when a sequence whose last step skipped layers is extended.
var ErrPartialSequence = errors.New("cpu: sequence was used for a capture-only step and cannot be extended")

func (e *Executor) prepare(rows []engine.Row) (*step, error) {
	cfg := e.cfg
	st := &step{e: e, rows: rows, seqs: make([]*Sequence, len(rows)), off: make([]int, len(rows)), outs: make([]engine.Output, len(rows))}
	allNone := true
	maxCap := -1
	seen := map[*Sequence]bool{}
	for i, r := range rows {
		s, ok := r.Seq.(*Sequence)
		if !ok || s.ex != e {
			return nil, fmt.Errorf("cpu: row %d: sequence does not belong to this executor", i)
		}
		if s.released {
			return nil, fmt.Errorf("cpu: row %d: sequence was released", i)
		}
		if s.partial {
			return nil, fmt.Errorf("row %d: %w", i, ErrPartialSequence)
		}
		if seen[s] {
			return nil, fmt.Errorf("cpu: row %d: sequence appears twice in one step", i)
		}
		seen[s] = true
		if len(r.Tokens) == 0 {
			return nil, fmt.Errorf("cpu: row %d: no tokens", i)
		}
		if s.n+len(r.Tokens) > e.maxCtx {
			return nil, fmt.Errorf("cpu: row %d: %d cached + %d new tokens exceed the context of %d", i, s.n, len(r.Tokens), e.maxCtx)
		}
		for _, t := range r.Tokens {
			if t < 0 || int(t) >= cfg.VocabSize {
				return nil, fmt.Errorf("cpu: row %d: token %d outside the vocabulary of %d", i, t, cfg.VocabSize)
			}
		}
		if r.Adapter != nil && len(r.Adapter.Layers) != cfg.Layers {
			return nil, fmt.Errorf("cpu: row %d: adapter %q has %d layers, model has %d", i, r.Adapter.Name, len(r.Adapter.Layers), cfg.Layers)
		}
		if c := r.Capture; c != nil {
			from, to := captureRange(c, len(r.Tokens))
			if from < 0 || from >= to || to > len(r.Tokens) {
				return nil, fmt.Errorf("cpu: row %d: capture range [%d,%d) outside the row's %d tokens", i, c.From, c.To, len(r.Tokens))
			}
			acts := make(map[engine.Point]engine.Tensor2D, len(c.Points))
			for _, p := range c.Points {
				if p.Layer < 0 || p.Layer >= cfg.Layers || p.Site >= engine.NumSites {
					return nil, fmt.Errorf("cpu: row %d: capture point layer %d site %v out of range (model has %d layers)", i, p.Layer, p.Site, cfg.Layers)
				}
				acts[p] = engine.Tensor2D{Rows: to - from, Cols: cfg.Hidden, Data: make([]float32, (to-from)*cfg.Hidden)}
				maxCap = max(maxCap, p.Layer)
			}
			st.outs[i].Acts = acts
		}
		if r.Logits != engine.LogitsNone {
			allNone = false
		}
		st.seqs[i] = s
		st.off[i] = st.n
		st.n += len(r.Tokens)
	}
	st.lastLay = cfg.Layers - 1
	if allNone && maxCap >= 0 {
		st.lastLay = maxCap
	}
	return st, nil
}

func captureRange(c *engine.Capture, n int) (int, int) {
	to := c.To
	if to <= 0 {
		to = n
	}
	return c.From, to
}

// Forward runs one step: each row's tokens are appended to its sequence and
// run through the model with the row's adapter; logits and captured
// activations come back per row.
func (e *Executor) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	st, err := e.prepare(rows)
	if err != nil {
		return nil, err
	}
	cfg := e.cfg
	d := cfg.Hidden
	N := st.n
	buf := e.bufs.get(cfg, N)
	defer e.bufs.put(buf)
	x := buf.x
	for i, r := range rows {
		for j, t := range r.Tokens {
			row := x[(st.off[i]+j)*d : (st.off[i]+j+1)*d]
			e.m.Embed.RowF32(int(t), row)
			if cfg.EmbedScale != 1 {
				for k := range row {
					row[k] *= cfg.EmbedScale
				}
			}
		}
	}
	st.ropeTables(buf)
	for l := 0; l <= st.lastLay; l++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("cpu: forward: %w", err)
		}
		st.layer(l, x, buf)
	}
	for i, s := range st.seqs {
		s.n += len(rows[i].Tokens)
		if st.lastLay < cfg.Layers-1 {
			s.partial = true
		}
	}
	st.logits(x, buf)
	return st.outs, nil
}

// buffers are a step's scratch: the residual stream x, the activations,
// the RoPE tables and, for rows that bring their own logits buffer, the
// logits. Nothing in them outlives the step.
type buffers struct {
	n                                int // tokens they hold
	x, xn, q, k, v, att, o, g, u, dn []float32
	cos, sin                         []float32
	logits                           []float32 // grown on demand
}

func newBuffers(cfg *model.Config, n int) *buffers {
	h, q, kv, in, half := n*cfg.Hidden, n*cfg.QDim(), n*cfg.KVDim(), n*cfg.Intermediate, n*cfg.HeadDim/2
	// One allocation, each array starting 5 cache lines further into a
	// 4 KB page than the one before. Arrays of whole pages that all begin
	// at the same page offset put the elements that loops read from one
	// and write to another (residual adds, norms, attention) 4 KB apart,
	// where loads wait on unrelated stores (4K aliasing); the unskewed
	// arrays' one-sequence decode step was 6.2 ms (median of 6 soo bench
	// runs) against 5.1 skewed, each beside the same older binary at 5.2
	// and 5.5.
	const skew, arrays = 80, 12 // floats (5 lines); arrays taken below
	all := make([]float32, 4*h+2*q+2*kv+2*in+2*half+arrays*skew)
	take := func(size int) []float32 {
		a := all[skew : skew+size : skew+size]
		all = all[skew+size:]
		return a
	}
	return &buffers{n: n, x: take(h), xn: take(h), q: take(q), k: take(kv), v: take(kv), att: take(q),
		o: take(h), g: take(in), u: take(in), dn: take(h), cos: take(half), sin: take(half)}
}

// maxPooledTokens is the most tokens a step may have for its buffers to be
// kept for the next: decode batches and short prompts, whose steps are
// short enough that a fresh set (and the garbage collections the garbage
// brings) costs a noticeable share. BenchmarkDecodeStep, bf16, 8 sequences:
// see BENCHMARKS.md.
const maxPooledTokens = 64

// bufferPool keeps the buffers of finished steps for the next ones.
type bufferPool struct {
	mu   sync.Mutex
	free []*buffers
}

// get returns buffers for n tokens: kept ones of that size (a decode
// batch's steps all have the same), or new ones.
func (p *bufferPool) get(cfg *model.Config, n int) *buffers {
	if n <= maxPooledTokens {
		p.mu.Lock()
		for i, b := range p.free {
			if b.n == n {
				p.free = append(p.free[:i], p.free[i+1:]...)
				p.mu.Unlock()
				return b
			}
		}
		p.mu.Unlock()
	}
	return newBuffers(cfg, n)
}

// put keeps b for a later step: the two most recent sets (one per
// concurrent caller is the common case) of at most maxPooledTokens tokens.
func (p *bufferPool) put(b *buffers) {
	if b.n > maxPooledTokens {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) == 2 {
		p.free = p.free[1:]
	}
	p.free = append(p.free, b)
}

func (st *step) ropeTables(b *buffers) {
	half := st.e.cfg.HeadDim / 2
	st.cos, st.sin = b.cos, b.sin
	for i, r := range st.rows {
		p0 := st.seqs[i].n
		for j := range r.Tokens {
			t := st.off[i] + j
			pos := float32(p0 + j)
			for f := 0; f < half; f++ {
				ang := float64(pos * float32(st.e.invFreq[f]))
				st.cos[t*half+f] = float32(math.Cos(ang))
				st.sin[t*half+f] = float32(math.Sin(ang))
			}
		}
	}
}

func (st *step) layer(l int, x []float32, b *buffers) {
	e, cfg := st.e, st.e.cfg
	L := &e.m.Layers[l]
	d, N := cfg.Hidden, st.n
	st.norm(b.xn, x, L.AttnNorm)
	st.projs(l, b.xn, projOut{model.Q, b.q}, projOut{model.K, b.k}, projOut{model.V, b.v})
	st.applyRope(b.q, b.k)
	kv := cfg.KVDim()
	for i, r := range st.rows {
		s := st.seqs[i]
		lo, hi := st.off[i]*kv, (st.off[i]+len(r.Tokens))*kv
		s.kt[l] = growKT(s.kt[l], s.n, len(r.Tokens), kv, e.maxCtx)
		kt, room := s.kt[l], len(s.kt[l])/kv
		for t := range len(r.Tokens) {
			pos := s.n + t
			for c, x := range b.k[lo+t*kv : lo+(t+1)*kv] {
				kt[c*room+pos] = x
			}
		}
		s.v[l] = append(growKV(s.v[l], s.n*kv, hi-lo, kv, e.maxCtx*kv), b.v[lo:hi]...)
	}
	st.attention(l, b.q, b.att)
	st.projs(l, b.att, projOut{model.O, b.o})
	st.capture(l, engine.AttnOut, b.o)
	if L.AttnPostNorm != nil {
		st.norm(b.o, b.o, L.AttnPostNorm)
	}
	for i := range x[:N*d] {
		x[i] += b.o[i]
	}
	st.norm(b.xn, x, L.MLPNorm)
	st.projs(l, b.xn, projOut{model.Gate, b.g}, projOut{model.Up, b.u})
	// The gated activation runs across the threads (vectorised for SiLU):
	// an expf per element was, at 8 sequences, a sixth of the products' time.
	g, u := b.g, b.u
	gelu := cfg.Act == model.GELUTanh
	e.pool.run(len(g), max(1024, (len(g)+e.threads-1)/e.threads), func(lo, hi int) {
		if !gelu {
			siluMul(g[lo:hi], u[lo:hi])
			return
		}
		for i := lo; i < hi; i++ {
			g[i] = geluTanh(g[i]) * u[i]
		}
	})
	st.projs(l, b.g, projOut{model.Down, b.dn})
	st.capture(l, engine.MLPOut, b.dn)
	if L.MLPPostNorm != nil {
		st.norm(b.dn, b.dn, L.MLPPostNorm)
	}
	for i := range x[:N*d] {
		x[i] += b.dn[i]
	}
	st.capture(l, engine.ResidPost, x)
}

func (st *step) norm(dst, x, w []float32) {
	d := len(w)
	eps := st.e.cfg.NormEps
	for t := 0; t < st.n; t++ {
		rmsNorm(dst[t*d:(t+1)*d], x[t*d:(t+1)*d], w, eps)
	}
}

// projOut names a module and the buffer its output goes to.
type projOut struct {
	mod model.Module
	out []float32
}

// projs computes out = x·Wᵀ + b for the given modules of layer l over all
// tokens (one parallel job), then adds each row's LoRA updates.
func (st *step) projs(l int, x []float32, outs ...projOut) {
	var buf [3]mmJob
	jobs := buf[:0]
	for _, po := range outs {
		lin := &st.e.m.Layers[l].Proj[po.mod]
		jobs = append(jobs, mmJob{w: &lin.W, bias: lin.Bias, out: po.out})
	}
	st.e.matmuls(x, st.n, jobs...)
	// Each row's LoRA updates, one task per (row, module), across the threads.
	type task struct {
		p   *lora.Pair
		x   []float32
		n   int
		out []float32
	}
	var tasks []task
	for _, po := range outs {
		for i, r := range st.rows {
			if p := r.Adapter.Get(l, po.mod); p != nil {
				t0, nt := st.off[i], len(r.Tokens)
				tasks = append(tasks, task{p, x[t0*p.In : (t0+nt)*p.In], nt, po.out[t0*p.Out : (t0+nt)*p.Out]})
			}
		}
	}
	st.e.pool.run(len(tasks), 1, func(lo, hi int) {
		var scratch []float32
		for _, t := range tasks[lo:hi] {
			scratch = st.e.ks.applyLoRA(t.p, t.x, t.n, t.out, scratch)
		}
	})
}

// applyLoRA adds Scale·B(A x) to out for n input rows: u = x·Aᵀ on the tile
// kernels, then out += Scale·(u·Bᵀ) a token at a time on addLoRAB, whose
// short dot products the tile kernels spent most of their time reducing
// (4 rows with 4 rank-16 adapters on q and v, bf16 135M shape: the
// up-projection was 0.4 ms of a 9.5 ms step).
//
// A pair with bf16 copies (lora.Pair.A16, B16: an adapter stored in bf16)
// streams those, half the bytes: the down-projection is then a product with
// bf16 weights like any other (inputs rounded to bf16 unless the executor
// reads them exact), the up-projection sums the very same values.
// ForwardTrain computes over the float32 values, unrounded (training
// adapters have no bf16 copies). On the bf16 135M shape with 4 rows and 4
// rank-16 q/v adapters, a task read from L3 took 1.2–1.5 µs against
// 2.5–3.2 for float32 pairs; in a whole decode step the cost fell from a
// median of 8.3% to 7.75% (6 alternating runs each), as most of it is
// waiting on memory.
//
// scratch is a buffer for x's packing, returned (perhaps grown) for the
// next call.
func (ks kernelSet) applyLoRA(p *lora.Pair, x []float32, n int, out []float32, scratch []float32) []float32 {
	u := make([]float32, n*p.R)
	a := wmat{dt: dtF32, f32: p.A, ld: p.In}
	if p.A16 != nil {
		a = wmat{dt: dtBF16, u16: p.A16, ld: p.In}
	}
	xp := ks.pack(x, p.In, n, p.In, a.dt, scratch, nil)
	if xp != nil {
		scratch = xp.buf
	}
	ks.gemm(a, nil, x, p.In, n, p.In, u, p.R, 0, p.R, xp)
	for t := range n {
		ut, ot := u[t*p.R:(t+1)*p.R], out[t*p.Out:(t+1)*p.Out]
		if p.B16 != nil {
			ks.addLoRAB16(p.B16, p.R, ut, ot, p.Scale)
		} else {
			ks.addLoRAB(p.B, p.R, ut, ot, p.Scale)
		}
	}
	return scratch
}

// bufList keeps a few scratch buffers for reuse. Unlike a sync.Pool it is not
// emptied by each garbage collection: decode steps allocate enough (logits)
// to collect often, and a buffer allocated afresh costs its page faults again.
type bufList struct {
	mu   sync.Mutex
	free [][]float32
}

// get returns a buffer of any size, or nil.
func (b *bufList) get() []float32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.free); n > 0 {
		buf := b.free[n-1]
		b.free = b.free[:n-1]
		return buf
	}
	return nil
}

// put keeps buf for a later get: up to 4 buffers (one per concurrent caller
// is the common case) of at most 8 MB each, so a long prompt's buffer is not
// held for ever.
func (b *bufList) put(buf []float32) {
	if buf == nil || cap(buf) > 2<<20 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.free) < 4 {
		b.free = append(b.free, buf)
	}
}

// pairsPay reports whether products over inputs of in elements gain from the
// AVX-512 pair kernels. With f32 weights and long inputs (the down
// projection's 1536 at the 135M shape) a 6-row × 8-token tile's weights and
// inputs overflow L1 and run at 55 GFLOP/s on one core here, against 99 for
// the AVX2 4 × 3 tile; bf16/f16 rows are half the bytes and keep 150+.
func pairsPay(jobs []mmJob, in int) bool {
	if in <= 1024 {
		return true
	}
	for _, j := range jobs {
		if j.w.DType != model.F32 {
			return true
		}
	}
	return false
}

// matmul computes out[n, W.Rows] = x[n, W.Cols]·Wᵀ (+ bias), splitting the
// weight rows across the executor's threads in chunks of whole tiles. Every
// output element is summed in the same order whatever n and the split.
func (e *Executor) matmul(w *model.Matrix, bias, x []float32, n int, out []float32) {
	e.matmuls(x, n, mmJob{w: w, bias: bias, out: out})
}

// mmJob is one product of matmuls: out[n, w.Rows] = x·wᵀ (+ bias).
type mmJob struct {
	w    *model.Matrix
	bias []float32
	out  []float32
	// to, if not nil, holds token t's destination: each chunk then copies
	// its rows of out there as soon as it has computed them, on the thread
	// that wrote them (a copy of the whole product afterwards read the other
	// thread's half across cores).
	to [][]float32
}

// mmChunk is a range of one job's weight rows, the unit a thread claims.
type mmChunk struct{ job, r0, r1 int }

// matmuls runs several products over the same input x[n, in] (q/k/v, or
// gate/up) as one parallel job, so the threads meet once per group instead of
// once per matrix. A prefill splits the rows into about 8 chunks per thread of
// at least 64K multiply-adds; a batched decode step (n ≤ smallBatch tokens)
// into about 3 per thread and a single token's into one, so each chunk reads
// its weights as long sequential streams (see gemm).
func (e *Executor) matmuls(x []float32, n int, jobs ...mmJob) {
	if n == 0 {
		return
	}
	in := jobs[0].w.Cols
	rows := 0
	for _, j := range jobs {
		if j.w.Cols != in {
			panic(fmt.Sprintf("cpu: matmuls over inputs of %d and %d columns", in, j.w.Cols))
		}
		rows += j.w.Rows
	}
	// Chunks per thread. One or two tokens are bound by memory alone: one
	// chunk per thread keeps every weight stream as long as it can be
	// (BenchmarkDecodeStep, 4 alternating runs each: bf16 7.4–8.1 ms against
	// 8.1–9.8 with 3 chunks, f32 12.5–12.9 against 13.4–15.5). From a few
	// tokens the kernels' work counts too, and smaller chunks balance it.
	perThread := 8
	switch {
	case n <= 2:
		perThread = 1
	case n <= smallBatch:
		perThread = 3
	}
	macs := rows * in * n
	grain := max(1<<16, macs/(perThread*e.threads)) / (in * n) // rows per chunk
	grain = max(tileR, grain/tileR*tileR)
	var buf [32]mmChunk
	chunks := buf[:0]
	for ji, j := range jobs {
		for r := 0; r < j.w.Rows; {
			r1 := min(r+grain, j.w.Rows)
			if j.w.Rows-r1 < grain/2 { // no runt chunk at the end
				r1 = j.w.Rows
			}
			chunks = append(chunks, mmChunk{ji, r, r1})
			r = r1
		}
	}
	// The packed input goes in a reused buffer: a fresh one per product
	// (100 MB per training step) cost more in page faults than the
	// products themselves.
	pbuf := e.packBufs.get()
	var xp *packed
	if pairsPay(jobs, in) {
		// The input was mostly written by both threads (attention, SwiGLU):
		// each packs a share of it (8-sequence decode: bf16 15.7–15.9 ms a
		// step against 16.5–17.1 packed by one thread, f32 19.4–19.6 against
		// 19.9–20.2). A copy packed by each thread for itself, when it took
		// its first chunk, was slower again (bf16 medians of 6 alternating
		// runs 14.7 against 14.0 ms).
		fill := func(nu int, f func(u0, u1 int)) { e.pool.run(nu, max(1, (nu+e.threads-1)/e.threads), f) }
		xp = e.ks.pack(x, in, n, in, dtIndex(jobs[0].w.DType), pbuf, fill)
	}
	e.pool.run(len(chunks), 1, func(c0, c1 int) {
		for _, c := range chunks[c0:c1] {
			j := jobs[c.job]
			e.ks.gemm(matrixView(j.w), j.bias, x, in, n, in, j.out[c.r0:], j.w.Rows, c.r0, c.r1, xp)
			for t, dst := range j.to {
				copy(dst[c.r0:c.r1], j.out[t*j.w.Rows+c.r0:t*j.w.Rows+c.r1])
			}
		}
	})
	if xp != nil {
		pbuf = xp.buf
	}
	e.packBufs.put(pbuf)
}

func (st *step) applyRope(q, k []float32) {
	cfg := st.e.cfg
	hd, half := cfg.HeadDim, cfg.HeadDim/2
	for t := 0; t < st.n; t++ {
		c, s := st.cos[t*half:(t+1)*half], st.sin[t*half:(t+1)*half]
		for h := 0; h < cfg.Heads; h++ {
			rope(q[(t*cfg.Heads+h)*hd:(t*cfg.Heads+h+1)*hd], c, s)
		}
		for h := 0; h < cfg.KVHeads; h++ {
			rope(k[(t*cfg.KVHeads+h)*hd:(t*cfg.KVHeads+h+1)*hd], c, s)
		}
	}
}

// attention computes each new token's attention over its sequence's cache.
// One task is a KV head and a block of up to a few consecutive tokens of one
// row (one while decoding): the block's query heads (tokens × the KV head's
// group) score every key of the transposed cache in one pass (scoresKT, from
// the 16-position block holding the window's first key), so each key row
// loaded serves up to six heads, then share each value row's load (wsumG).
// A head's scores outside its own window (the later tokens' extra keys) are
// zero after the softmax, so every output sums what a token alone would, in
// the same order: the same bits however the tokens are grouped.
//
// Tasks go KV head by KV head, so a prompt's consecutive tokens read the
// same head's keys and values while they are still in cache (a head's 2000
// positions are 1 MB, about one core's L2; token-major order cycled through
// all heads' and ran a 2000-token prefill ~5% slower).
func (st *step) attention(l int, q, out []float32) {
	cfg := st.e.cfg
	H, hd := cfg.Heads, cfg.HeadDim
	KH := cfg.KVHeads
	group := H / KH
	kvd := cfg.KVDim()
	window := cfg.Window(l)
	ks := native
	lo := func(pos int) int { // first key position in pos's window
		if window > 0 {
			return max(0, pos-window+1)
		}
		return 0
	}
	maxRows := 4 // heads a score kernel takes at once
	if ks.avx512 {
		maxRows = maxSG
	}
	blocks := st.attnBlocks(max(1, maxRows/group))
	run := func(t0, t1 int) {
		// Scratch from the executor's list: a chunk is a few tasks, and a
		// long prompt's thousands of chunks each allocating (and zeroing)
		// their scores took 7% of a 2000-token prefill.
		scratch := st.e.attnBufs.get()
		defer func() { st.e.attnBufs.put(scratch) }()
		for task := t0; task < t1; task++ {
			kh, blk := task/len(blocks), blocks[task%len(blocks)]
			tok0, T := int(blk[0]), int(blk[1])
			i := st.rowOf(tok0)
			s := st.seqs[i]
			pos0 := s.n + (tok0 - st.off[i]) // absolute position of the block's first token
			loMin, posMax := lo(pos0), pos0+T-1
			lo16 := loMin &^ 15
			nb := (posMax + 1 - lo16 + 15) / 16 // within the cache's room: a multiple of 16 past pos
			ldo := 16 * nb
			R := T * group // query heads: token b's head g is row b*group+g
			if need := R * (2*hd + 1 + ldo); cap(scratch) < need {
				scratch = make([]float32, need, 2*need)
			}
			qs := scratch[:R*hd] // the query heads, times the attention scale
			sums := scratch[R*hd : R*(hd+1)]
			ob := scratch[R*(hd+1) : R*(2*hd+1)]
			scores := scratch[R*(2*hd+1) : R*(2*hd+1+ldo)]
			// scores[r*ldo+j] = (scale·q[r])·k[lo16+j]: scaling the query
			// rather than every score (exact where the scale is a power of
			// two, as 1/√64 is).
			for b := range T {
				h0 := (tok0+b)*H + kh*group
				for c, v := range q[h0*hd : (h0+group)*hd] {
					qs[b*group*hd+c] = v * cfg.AttnScale
				}
			}
			room := len(s.kt[l]) / kvd
			ks.scoresKT(qs, R, hd, s.kt[l][kh*hd*room+lo16:], room, scores, ldo, nb)
			// Each head's keys lo..pos, soft-capped and exponentiated in
			// place; the rest of the block's span zeroed.
			span0, nspan := loMin-lo16, posMax+1-loMin
			for b := range T {
				pos := pos0 + b
				lb := lo(pos)
				off, nk := lb-lo16, pos+1-lb
				for g := range group {
					r := b*group + g
					row := scores[r*ldo : (r+1)*ldo]
					pg := row[off : off+nk]
					if c := cfg.AttnSoftcap; c > 0 {
						for j, v := range pg {
							pg[j] = softcap(v, c)
						}
					}
					sums[r] = ks.expSum(pg, ks.maxOf(pg))
					clear(row[span0:off])
					clear(row[off+nk : span0+nspan])
				}
			}
			// The block's heads share each value row's load.
			ks.wsumG(scores[span0:], ldo, R, s.v[l][loMin*kvd+kh*hd:], kvd, nspan, ob, hd, hd)
			for b := range T {
				h0 := (tok0+b)*H + kh*group
				for g := range group {
					r := b*group + g
					inv := 1 / sums[r]
					dst := out[(h0+g)*hd : (h0+g+1)*hd]
					for c, v := range ob[r*hd : (r+1)*hd] {
						dst[c] = v * inv
					}
				}
			}
		}
	}
	// Causal rows grow with position: small chunks keep both threads busy
	// (one task per chunk while decoding, where there are only a few).
	tasks := len(blocks) * KH
	grain := 4
	if tasks < 4*st.e.threads {
		grain = 1
	}
	st.e.pool.run(tasks, grain, run)
}

// attnBlocks returns the step's attention blocks, runs of up to per
// consecutive tokens of one row, as (first token, count); the same for
// every layer, so computed once a step.
func (st *step) attnBlocks(per int) [][2]int32 {
	if st.blocks != nil && st.blocksPer == per {
		return st.blocks
	}
	st.blocks, st.blocksPer = st.blocks[:0], per
	for i, r := range st.rows {
		n := len(r.Tokens)
		for t := 0; t < n; t += per {
			st.blocks = append(st.blocks, [2]int32{int32(st.off[i] + t), int32(min(per, n-t))})
		}
	}
	return st.blocks
}

// rowOf returns the row index that flattened token tok belongs to.
func (st *step) rowOf(tok int) int {
	lo, hi := 0, len(st.off)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if st.off[mid] <= tok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// parallel splits [0, n) into contiguous chunks over up to workers goroutines
// (the caller runs the last chunk), running inline when n is below minPer per
// worker.
func parallel(workers, n, minPer int, fn func(lo, hi int)) {
	if workers > n/minPer {
		workers = max(1, n/minPer)
	}
	if workers <= 1 {
		fn(0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	lo := 0
	for ; lo+chunk < n; lo += chunk {
		l := lo
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(l, l+chunk)
		}()
	}
	fn(lo, n)
	wg.Wait()
}

func (st *step) capture(l int, site engine.Site, act []float32) {
	d := st.e.cfg.Hidden
	for i, r := range st.rows {
		if r.Capture == nil {
			continue
		}
		dst, ok := st.outs[i].Acts[engine.Point{Layer: l, Site: site}]
		if !ok {
			continue
		}
		from, to := captureRange(r.Capture, len(r.Tokens))
		t0 := st.off[i]
		copy(dst.Data, act[(t0+from)*d:(t0+to)*d])
	}
}

// logitsRows returns how many logits rows r asks for.
func logitsRows(r engine.Row) int {
	switch r.Logits {
	case engine.LogitsLast:
		return 1
	case engine.LogitsAll:
		return len(r.Tokens)
	}
	return 0
}

// logits runs the final norm and LM head on the tokens whose logits were
// asked for. When a row brings a buffer that holds its logits (the
// scheduler's decode rows do), the product runs into b's scratch and each
// thread copies the rows it computed to the rows' buffers, so a decode step
// makes no garbage the size of the vocabulary; otherwise the logits go
// straight into one fresh array.
func (st *step) logits(x []float32, b *buffers) {
	cfg := st.e.cfg
	d, V := cfg.Hidden, cfg.VocabSize
	var sel []int
	own := false // some row brought a buffer that fits
	for i, r := range st.rows {
		n := logitsRows(r)
		for j := len(r.Tokens) - n; j < len(r.Tokens); j++ {
			sel = append(sel, st.off[i]+j)
		}
		if n > 0 && cap(r.LogitsBuf) >= n*V {
			own = true
		}
	}
	if len(sel) == 0 {
		return
	}
	h := b.xn[:len(sel)*d] // free after the last layer
	for k, t := range sel {
		rmsNorm(h[k*d:(k+1)*d], x[t*d:(t+1)*d], st.e.m.FinalNorm, cfg.NormEps)
	}
	job := mmJob{w: st.e.m.LMHead}
	var all []float32
	if own {
		if cap(b.logits) < len(sel)*V {
			b.logits = make([]float32, len(sel)*V)
		}
		job.out = b.logits[:len(sel)*V]
		job.to = make([][]float32, 0, len(sel))
	} else {
		all = make([]float32, len(sel)*V)
		job.out = all
	}
	k := 0
	for i, r := range st.rows {
		n := logitsRows(r)
		if n == 0 {
			continue
		}
		var data []float32
		switch {
		case !own:
			data = all[k*V : (k+n)*V : (k+n)*V]
		case cap(r.LogitsBuf) >= n*V:
			data = r.LogitsBuf[:n*V]
		default:
			data = make([]float32, n*V)
		}
		for j := 0; own && j < n; j++ {
			job.to = append(job.to, data[j*V:(j+1)*V])
		}
		st.outs[i].Logits = engine.Tensor2D{Rows: n, Cols: V, Data: data}
		k += n
	}
	st.e.matmuls(h, len(sel), job)
	if cfg.FinalSoftcap > 0 {
		for _, o := range st.outs {
			for i, v := range o.Logits.Data {
				o.Logits.Data[i] = softcap(v, cfg.FinalSoftcap)
			}
		}
	}
}
