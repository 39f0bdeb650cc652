package cpu_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/refcase"
	"github.com/sooserve/sooserve/internal/synth"
)

// lmCase is one case of testdata/reference/lm_grad.json (written by
// scripts/reference/lm_grad_reference.py).
type lmCase struct {
	Name    string      `json:"name"`
	Model   string      `json:"model"`
	Rows    [][]int32   `json:"rows"`
	Docs    [][]int32   `json:"docs"`
	Weights [][]float32 `json:"weights"`
	Loss    float64     `json:"loss"`
	Tensors string      `json:"tensors"`
	Params  int         `json:"params"`
}

func loadLMCases(t testing.TB) ([]lmCase, string) {
	t.Helper()
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(td, "reference", "lm_grad.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []lmCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f.Cases, td
}

// writableModel loads a model directory with its weight matrices copied
// out of the read-only file mapping, so tests can change them.
func writableModel(t testing.TB, dir string) *model.Model {
	t.Helper()
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cp := func(w *model.Matrix) {
		w.F32, w.U16 = slices.Clone(w.F32), slices.Clone(w.U16)
	}
	cp(&m.Embed)
	if m.LMHead != &m.Embed {
		cp(m.LMHead)
	}
	for l := range m.Layers {
		for p := range m.Layers[l].Proj {
			cp(&m.Layers[l].Proj[p].W)
		}
	}
	return m
}

// lmFixture reads a case's gradient samples: per tensor name, the sampled
// flat indices and values, the sum of squares and the largest magnitude.
type lmSamples struct {
	idx           []int32
	val           []float64
	sumsq, maxabs float64
}

func loadLMSamples(t testing.TB, td, rel string) map[string]*lmSamples {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(td, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]*lmSamples{}
	get := func(name string) *lmSamples {
		if out[name] == nil {
			out[name] = &lmSamples{}
		}
		return out[name]
	}
	for _, n := range f.Names() {
		tn, _ := f.Tensor(n)
		kind, name, _ := strings.Cut(n, ".")
		s := get(name)
		switch {
		case kind == "idx" && tn.DType == safetensors.I32:
			for i := 0; i < len(tn.Data); i += 4 {
				s.idx = append(s.idx, int32(binary.LittleEndian.Uint32(tn.Data[i:])))
			}
		case tn.DType == safetensors.F64:
			var v []float64
			for i := 0; i < len(tn.Data); i += 8 {
				v = append(v, math.Float64frombits(binary.LittleEndian.Uint64(tn.Data[i:])))
			}
			switch kind {
			case "val":
				s.val = v
			case "sumsq":
				s.sumsq = v[0]
			case "maxabs":
				s.maxabs = v[0]
			}
		default:
			t.Fatalf("unexpected fixture tensor %s (%s)", n, tn.DType)
		}
	}
	return out
}

func (c lmCase) batch() cpu.LMBatch {
	return cpu.LMBatch{Rows: c.Rows, Docs: c.Docs, Weights: c.Weights}
}

func lmGrad(t testing.TB, ex *cpu.Executor, b cpu.LMBatch, opts cpu.LMOptions) (cpu.LMResult, *cpu.LMGrad) {
	t.Helper()
	g := cpu.NewLMGrad(ex.Config())
	res, err := ex.LMLossGrad(context.Background(), b, g, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res, g
}

func lmLoss(t testing.TB, ex *cpu.Executor, b cpu.LMBatch) float64 {
	t.Helper()
	res, err := ex.LMLossGrad(context.Background(), b, nil, cpu.LMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Loss
}

// TestLMGradMatchesPyTorch compares the loss and the gradient of every
// weight with the PyTorch reference's float64 autograd, on packed rows with
// weighted targets, for llama (untied head, GQA, llama3 RoPE), qwen2 (tied
// embeddings, q/k/v biases) and gemma2 (soft-caps, sliding window, sandwich
// norms, GeGLU, scaled embeddings). Tolerances: the loss to 1e-6
// relative; each sampled entry to 1e-3 of the tensor's largest gradient;
// each tensor's sum of squares to 1e-3 relative.
func TestLMGradMatchesPyTorch(t *testing.T) {
	cases, td := loadLMCases(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			m := writableModel(t, filepath.Join(td, c.Model))
			ex := cpu.New(m, cpu.Options{})
			res, g := lmGrad(t, ex, c.batch(), cpu.LMOptions{})
			if rel := math.Abs(res.Loss-c.Loss) / c.Loss; rel > 1e-6 {
				t.Errorf("loss %.9g, want %.9g (rel %.2g)", res.Loss, c.Loss, rel)
			}
			want := loadLMSamples(t, td, c.Tensors)
			params := g.Params()
			if len(params) != c.Params || len(want) != c.Params {
				t.Fatalf("%d gradient tensors, reference %d (fixture %d)", len(params), c.Params, len(want))
			}
			var worstEntry, worstSq float64
			for _, p := range params {
				w := want[p.Name]
				if w == nil {
					t.Errorf("%s: not in the reference", p.Name)
					continue
				}
				var sq float64
				for _, v := range p.Data {
					sq += float64(v) * float64(v)
				}
				relSq := math.Abs(sq-w.sumsq) / w.sumsq
				worstSq = max(worstSq, relSq)
				if relSq > 1e-3 {
					t.Errorf("%s: sum of squares %g, want %g", p.Name, sq, w.sumsq)
				}
				for k, i := range w.idx {
					d := math.Abs(float64(p.Data[i])-w.val[k]) / w.maxabs
					worstEntry = max(worstEntry, d)
					if d > 1e-3 {
						t.Errorf("%s[%d] = %g, want %g", p.Name, i, p.Data[i], w.val[k])
						break
					}
				}
			}
			t.Logf("loss %.9g (reference %.9g); worst entry error %.2g of the tensor's max, worst sum-of-squares error %.2g",
				res.Loss, c.Loss, worstEntry, worstSq)
		})
	}
}

// TestLMGradFiniteDifferences checks the gradient of every tensor of each
// reference model against central differences of the loss, at the entry
// with the largest gradient and at one more entry (to 2% + 3e-4: the
// float32 forward pass's rounding limits the differences' precision).
func TestLMGradFiniteDifferences(t *testing.T) {
	cases, td := loadLMCases(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			m := writableModel(t, filepath.Join(td, c.Model))
			ex := cpu.New(m, cpu.Options{})
			b := c.batch()
			_, g := lmGrad(t, ex, b, cpu.LMOptions{})
			params, err := cpu.ModelParams(m)
			if err != nil {
				t.Fatal(err)
			}
			var worst float64
			var worstAt string
			for pi, p := range g.Params() {
				w := params[pi].Data
				// A step of 1% of the tensor's rms (gemma2's embeddings
				// are scaled by 8: a fixed step is too coarse there).
				var ss float64
				for _, v := range w {
					ss += float64(v) * float64(v)
				}
				h := float32(max(1e-4, 1e-2*math.Sqrt(ss/float64(len(w)))))
				for _, i := range []int{argmaxAbs(p.Data), len(p.Data) * 2 / 3} {
					orig := w[i]
					w[i] = orig + h
					up := lmLoss(t, ex, b)
					w[i] = orig - h
					down := lmLoss(t, ex, b)
					w[i] = orig
					fd := (up - down) / float64(2*h)
					got := float64(p.Data[i])
					err := math.Abs(got - fd)
					if err > 2e-2*math.Abs(fd)+3e-4 {
						t.Errorf("%s[%d]: backward %g, finite difference %g", p.Name, i, got, fd)
					}
					if math.Abs(fd) > 1e-2 && err/math.Abs(fd) > worst {
						worst, worstAt = err/math.Abs(fd), fmt.Sprintf("%s[%d] (%.4g against %.4g, step %.2g)", p.Name, i, got, fd, h)
					}
				}
			}
			t.Logf("worst relative error where |fd| > 1e-2: %.2g at %s", worst, worstAt)
		})
	}
}

// docLossWithInference computes the weighted next-token cross-entropy of
// the batch from the inference path's logits, each document run alone
// through Forward.
func docLossWithInference(t testing.TB, ex *cpu.Executor, b cpu.LMBatch) float64 {
	var num, den float64
	for r, row := range b.Rows {
		start := 0
		for t1 := 1; t1 <= len(row); t1++ {
			if t1 < len(row) && b.Docs[r][t1] == b.Docs[r][t1-1] {
				continue
			}
			doc := row[start:t1]
			seq := ex.NewSequence()
			out, err := ex.Forward(context.Background(), []engine.Row{{Seq: seq, Tokens: doc, Logits: engine.LogitsAll}})
			seq.Release()
			if err != nil {
				t.Fatal(err)
			}
			lg := out[0].Logits
			for k := 1; k < len(doc); k++ {
				w := float64(b.Weights[r][start+k])
				if w == 0 {
					continue
				}
				z := lg.Row(k - 1)
				mx := float64(slices.Max(z))
				var s float64
				for _, v := range z {
					s += math.Exp(float64(v) - mx)
				}
				num += w * (mx + math.Log(s) - float64(z[doc[k]]))
				den += w
			}
			start = t1
		}
	}
	return num / den
}

// TestLMLossMatchesInference holds the training forward pass to the
// inference executor: the loss equals the cross-entropy of Forward's logits
// on the same documents (to 1e-6 relative).
func TestLMLossMatchesInference(t *testing.T) {
	cases, td := loadLMCases(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			m := writableModel(t, filepath.Join(td, c.Model))
			ex := cpu.New(m, cpu.Options{})
			got := lmLoss(t, ex, c.batch())
			want := docLossWithInference(t, ex, c.batch())
			if rel := math.Abs(got-want) / want; rel > 1e-6 {
				t.Errorf("training loss %.9g, inference %.9g (rel %.2g)", got, want, rel)
			}
		})
	}
}

// TestLMPackingMatchesDocumentsAlone checks that documents packed into one
// row give the loss and gradients of the same documents in rows of their
// own (in another order), and that a document's loss does not depend on
// the document packed before it.
func TestLMPackingMatchesDocumentsAlone(t *testing.T) {
	_, td := loadLMCases(t)
	for _, name := range []string{"tiny-llama", "tiny-gemma2"} {
		t.Run(name, func(t *testing.T) {
			m := writableModel(t, filepath.Join(td, "models", name))
			ex := cpu.New(m, cpu.Options{})
			a := []int32{11, 42, 7, 99, 150, 3, 260, 18, 77}
			bb := []int32{5, 9, 12, 13, 11, 42, 8, 99, 151, 64, 19}
			wa := []float32{1, 1, 5, 5, 0, 1, 5, 1, 1}
			wb := []float32{1, 5, 1, 0, 1, 1, 5, 5, 1, 1, 2}
			packed := cpu.LMBatch{
				Rows:    [][]int32{slices.Concat(a, bb)},
				Docs:    [][]int32{slices.Concat(slices.Repeat([]int32{4}, len(a)), slices.Repeat([]int32{2}, len(bb)))},
				Weights: [][]float32{slices.Concat(wa, wb)},
			}
			alone := cpu.LMBatch{Rows: [][]int32{bb, a}, Weights: [][]float32{wb, wa}}
			r1, g1 := lmGrad(t, ex, packed, cpu.LMOptions{})
			r2, g2 := lmGrad(t, ex, alone, cpu.LMOptions{})
			if rel := math.Abs(r1.Loss-r2.Loss) / r2.Loss; rel > 1e-6 || r1.Weight != r2.Weight || r1.Targets != r2.Targets {
				t.Errorf("packed: %+v, alone: %+v", r1, r2)
			}
			p2 := g2.Params()
			for i, p := range g1.Params() {
				if err := relClose(p.Data, p2[i].Data, 1e-5); err != nil {
					t.Errorf("%s: %v", p.Name, err)
				}
			}
			// Only b's targets: the packed loss is b's loss alone, whatever a is.
			onlyB := slices.Concat(make([]float32, len(a)), wb)
			packedB := packed
			packedB.Weights = [][]float32{onlyB}
			lb := lmLoss(t, ex, cpu.LMBatch{Rows: [][]int32{bb}, Weights: [][]float32{wb}})
			if l := lmLoss(t, ex, packedB); math.Abs(l-lb) > 1e-6*lb {
				t.Errorf("b packed after a: loss %.9g, alone %.9g", l, lb)
			}
		})
	}
}

// TestLMPassIsExact checks that a full-parameter pass is bit-for-bit
// repeatable with one thread or two and with a fresh or reused Workspace
// (used in between for a batch of another shape).
func TestLMPassIsExact(t *testing.T) {
	cases, td := loadLMCases(t)
	c := cases[0]
	m := writableModel(t, filepath.Join(td, c.Model))
	one, two := cpu.New(m, cpu.Options{Threads: 1}), cpu.New(m, cpu.Options{Threads: 2})
	wantRes, want := lmGrad(t, one, c.batch(), cpu.LMOptions{})
	other := cpu.LMBatch{Rows: [][]int32{{5, 6, 7, 8, 9}}}
	var ws cpu.Workspace
	for i, ex := range []*cpu.Executor{two, two, one, two} {
		opts := cpu.LMOptions{}
		if i > 0 {
			opts.Workspace = &ws
			lmGrad(t, ex, other, opts)
		}
		res, g := lmGrad(t, ex, c.batch(), opts)
		if res != wantRes {
			t.Errorf("run %d: %+v, want %+v", i, res, wantRes)
		}
		wp := want.Params()
		for k, p := range g.Params() {
			if !slices.Equal(p.Data, wp[k].Data) {
				t.Errorf("run %d: %s differs", i, p.Name)
			}
		}
	}
}

// TestLMParams checks that gradients and weights are listed under the
// checkpoint's tensor names, in its order, with its shapes, and that
// ModelParams aliases the model's weights.
func TestLMParams(t *testing.T) {
	_, td := loadLMCases(t)
	for _, name := range []string{"tiny-llama", "tiny-qwen2", "tiny-gemma2"} {
		m := writableModel(t, filepath.Join(td, "models", name))
		specs := m.Config.TensorNames()
		ps, err := cpu.ModelParams(m)
		if err != nil {
			t.Fatal(err)
		}
		gs := cpu.NewLMGrad(m.Config).Params()
		if len(ps) != len(specs) || len(gs) != len(specs) {
			t.Fatalf("%s: %d params, %d grads, %d tensors", name, len(ps), len(gs), len(specs))
		}
		for i, s := range specs {
			n := 1
			for _, d := range s.Shape {
				n *= d
			}
			for _, p := range []cpu.Param{ps[i], gs[i]} {
				if p.Name != s.Name || !slices.Equal(p.Shape, s.Shape) || len(p.Data) != n {
					t.Errorf("%s: %d: %s %v [%d], want %s %v", name, i, p.Name, p.Shape, len(p.Data), s.Name, s.Shape)
				}
			}
		}
		if &ps[0].Data[0] != &m.Embed.F32[0] {
			t.Errorf("%s: ModelParams copied the embeddings", name)
		}
	}
}

// TestLMRefusals checks the errors for what full-parameter training does
// not take: bf16 weights and malformed batches.
func TestLMRefusals(t *testing.T) {
	_, td := loadLMCases(t)
	bf, err := model.Load(filepath.Join(td, "models", "tiny-llama-bf16"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	ctx := context.Background()
	ok := cpu.LMBatch{Rows: [][]int32{{5, 6, 7}}}
	if _, err := cpu.New(bf, cpu.Options{}).LMLossGrad(ctx, ok, nil, cpu.LMOptions{}); err == nil || !strings.Contains(err.Error(), "f32") {
		t.Errorf("bf16 model: %v", err)
	}
	if _, err := cpu.ModelParams(bf); err == nil {
		t.Error("ModelParams took a bf16 model")
	}
	m := writableModel(t, filepath.Join(td, "models", "tiny-llama"))
	ex := cpu.New(m, cpu.Options{})
	for _, c := range []struct {
		b    cpu.LMBatch
		want string
	}{
		{cpu.LMBatch{}, "empty"},
		{cpu.LMBatch{Rows: [][]int32{{}}}, "empty"},
		{cpu.LMBatch{Rows: [][]int32{{5, 320}}}, "vocabulary"},
		{cpu.LMBatch{Rows: [][]int32{{5, 6, 7}}, Docs: [][]int32{{1, 2, 1}}}, "comes back"},
		{cpu.LMBatch{Rows: [][]int32{{5, 6, 7}}, Docs: [][]int32{{1, 2}}}, "document ids"},
		{cpu.LMBatch{Rows: [][]int32{{5, 6, 7}}, Weights: [][]float32{{1, -1, 1}}}, "weight"},
		{cpu.LMBatch{Rows: [][]int32{{5, 6, 7}}, Weights: [][]float32{{1, float32(math.NaN()), 1}}}, "weight"},
		{cpu.LMBatch{Rows: [][]int32{{5, 6}}, Weights: [][]float32{{1}}}, "weights"},
		{cpu.LMBatch{Rows: [][]int32{make([]int32, 513)}}, "context"},
	} {
		if _, err := ex.LMLossGrad(ctx, c.b, nil, cpu.LMOptions{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one that mentions %q", c.b, err, c.want)
		}
	}
	// A batch without targets has no loss and no gradient.
	g := cpu.NewLMGrad(m.Config)
	res, err := ex.LMLossGrad(ctx, cpu.LMBatch{Rows: [][]int32{{5}, {6, 7}}, Weights: [][]float32{{1}, {1, 0}}}, g, cpu.LMOptions{})
	if err != nil || res.Targets != 0 || res.Loss != 0 {
		t.Errorf("no targets: %+v, %v", res, err)
	}
}

// TestbedConfig is config.json of the testbed shape (issue 17): d=128, 4
// layers, 4 heads, SwiGLU with 344, RoPE, vocabulary 1024, context 256,
// tied embeddings.
const testbedConfig = `{"model_type": "llama", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 344,
	"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
	"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu"}`

// testbedBatch is the benchmark's batch: 16 rows of 256 tokens, each
// packing documents of 24..183 tokens (the last one cut to fill the row),
// with the second half of each document's tokens weighted 5.
// scripts/bench/torch_lm_step.py builds the same batch.
func testbedBatch(vocab int) cpu.LMBatch {
	var b cpu.LMBatch
	k := 0
	for r := range 16 {
		var row, docs []int32
		var ws []float32
		for t := 0; t < 256; k++ {
			n := min(24+(k*37)%160, 256-t)
			for i := range n {
				row = append(row, int32(((r*256+t+i)*7919+13)%vocab))
				docs = append(docs, int32(k))
				ws = append(ws, float32(1+4*(2*i/n)))
			}
			t += n
		}
		b.Rows, b.Docs, b.Weights = append(b.Rows, row), append(b.Docs, docs), append(b.Weights, ws)
	}
	return b
}

// BenchmarkLMLossGrad times the full-parameter forward and backward pass
// (loss and every weight's gradient, no optimiser) on the testbed shape
// with 16×256 packed tokens, on all threads. scripts/bench/torch_lm_step.py
// is its PyTorch peer.
func BenchmarkLMLossGrad(b *testing.B) {
	cfg, err := model.ParseConfig([]byte(testbedConfig))
	if err != nil {
		b.Fatal(err)
	}
	m := synth.FromConfig(cfg, model.F32, 1)
	ex := cpu.New(m, cpu.Options{})
	batch := testbedBatch(cfg.VocabSize)
	g := cpu.NewLMGrad(cfg)
	var ws cpu.Workspace
	ctx := context.Background()
	run := func() {
		g.Zero()
		if _, err := ex.LMLossGrad(ctx, batch, g, cpu.LMOptions{Workspace: &ws}); err != nil {
			b.Fatal(err)
		}
	}
	run() // sizes the workspace
	b.ResetTimer()
	for b.Loop() {
		run()
	}
	b.ReportMetric(float64(16*256*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// TestLMAccumulation checks Denominator: the gradients of a batch's rows
// accumulated in two passes, each divided by the whole batch's weight,
// equal the batch's gradient, and so do the losses' sum.
func TestLMAccumulation(t *testing.T) {
	cases, td := loadLMCases(t)
	c := cases[1]
	m := writableModel(t, filepath.Join(td, c.Model))
	ex := cpu.New(m, cpu.Options{})
	whole, want := lmGrad(t, ex, c.batch(), cpu.LMOptions{})
	g := cpu.NewLMGrad(m.Config)
	var loss float64
	for _, part := range [][2]int{{0, 1}, {1, len(c.Rows)}} {
		b := cpu.LMBatch{Rows: c.Rows[part[0]:part[1]], Docs: c.Docs[part[0]:part[1]], Weights: c.Weights[part[0]:part[1]]}
		res, err := ex.LMLossGrad(context.Background(), b, g, cpu.LMOptions{Denominator: whole.Weight})
		if err != nil {
			t.Fatal(err)
		}
		loss += res.Loss
	}
	if math.Abs(loss-whole.Loss) > 1e-6*whole.Loss {
		t.Errorf("accumulated loss %.9g, whole batch %.9g", loss, whole.Loss)
	}
	wp := want.Params()
	for i, p := range g.Params() {
		if err := relClose(p.Data, wp[i].Data, 1e-5); err != nil {
			t.Errorf("%s: %v", p.Name, err)
		}
	}
}
