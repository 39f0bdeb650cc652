package xla_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/engine/xla"
	"github.com/sooserve/sooserve/internal/refcase"
)

const testdata = "../../testdata"

type refCase struct {
	Name     string  `json:"name"`
	Model    string  `json:"model"`
	Adapter  *string `json:"adapter"`
	InputIDs []int32 `json:"input_ids"`
	Greedy   []int32 `json:"greedy"`
	Tensors  string  `json:"tensors"`
}

func loadCases(t *testing.T) []refCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "reference", "cases.json"))
	if err != nil {
		t.Fatalf("reference fixtures: %v", err)
	}
	var cases []refCase
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

// executors are shared by the tests of this package, one per model directory.
var executors = struct {
	sync.Mutex
	m map[string]*xla.Executor
}{m: map[string]*xla.Executor{}}

func executor(t *testing.T, dir string) *xla.Executor {
	t.Helper()
	executors.Lock()
	defer executors.Unlock()
	if e, ok := executors.m[dir]; ok {
		return e
	}
	m, err := model.Load(filepath.Join(testdata, dir), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e, err := xla.New(m, xla.Options{})
	if err != nil {
		t.Fatal(err)
	}
	executors.m[dir] = e
	return e
}

func loadAdapter(t *testing.T, e *xla.Executor, dir *string) *lora.Adapter {
	t.Helper()
	if dir == nil {
		return nil
	}
	a, _, err := adapters.LoadDir(filepath.Base(*dir), filepath.Join(testdata, *dir), e.Config())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func refTensors(t *testing.T, rel string) map[string][]float32 {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(testdata, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]float32{}
	for _, n := range f.Names() {
		tt, _ := f.Tensor(n)
		v, err := tt.Float32()
		if err != nil {
			t.Fatal(err)
		}
		out[n] = v
	}
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		m = max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

func argmax(v []float32) int32 {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return int32(best)
}

func allPoints(layers int) []engine.Point {
	var p []engine.Point
	for l := range layers {
		for s := engine.Site(0); s < engine.NumSites; s++ {
			p = append(p, engine.Point{Layer: l, Site: s})
		}
	}
	return p
}

const tol = 1e-4

func TestBackendDefault(t *testing.T) {
	e := executor(t, "models/tiny-llama")
	if !strings.HasPrefix(e.Backend(), "simplego") && !strings.HasPrefix(e.Backend(), "xla:") {
		t.Fatalf("Backend() = %q", e.Backend())
	}
	t.Logf("backend: %s", e.Backend())
}

// TestReference runs every reference case: prompt logits and activations at
// every capture point, then greedy decoding one token per step.
func TestReference(t *testing.T) {
	ctx := context.Background()
	for _, c := range loadCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			e := executor(t, c.Model)
			a := loadAdapter(t, e, c.Adapter)
			ref := refTensors(t, c.Tensors)
			cfg := e.Config()
			V, T := cfg.VocabSize, len(c.InputIDs)
			refLogits := ref["logits"]
			seq := e.NewSequence()
			defer seq.Release()
			outs, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: c.InputIDs, Adapter: a,
				Capture: &engine.Capture{Points: allPoints(cfg.Layers)}, Logits: engine.LogitsAll}})
			if err != nil {
				t.Fatal(err)
			}
			out := outs[0]
			if out.Logits.Rows != T || out.Logits.Cols != V {
				t.Fatalf("logits %dx%d, want %dx%d", out.Logits.Rows, out.Logits.Cols, T, V)
			}
			worstLogit := maxAbsDiff(out.Logits.Data, refLogits[:T*V])
			var worstAct float64
			for p, got := range out.Acts {
				want := ref[fmt.Sprintf("%s.%d", p.Site, p.Layer)]
				if got.Rows != T || got.Cols != cfg.Hidden {
					t.Fatalf("%v: %dx%d", p, got.Rows, got.Cols)
				}
				d := maxAbsDiff(got.Data, want)
				if d > tol {
					t.Errorf("%s.%d: max abs diff %.3g", p.Site, p.Layer, d)
				}
				worstAct = max(worstAct, d)
			}
			if len(out.Acts) != cfg.Layers*int(engine.NumSites) {
				t.Errorf("got %d captured points", len(out.Acts))
			}
			tok := argmax(out.Logits.Row(T - 1))
			if tok != c.Greedy[0] {
				t.Errorf("greedy[0] = %d, want %d", tok, c.Greedy[0])
			}
			for k := 0; k+1 < len(c.Greedy); k++ {
				outs, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: []int32{c.Greedy[k]}, Adapter: a, Logits: engine.LogitsLast}})
				if err != nil {
					t.Fatal(err)
				}
				lg := outs[0].Logits
				if lg.Rows != 1 || lg.Cols != V {
					t.Fatalf("step %d: logits %dx%d", k, lg.Rows, lg.Cols)
				}
				worstLogit = max(worstLogit, maxAbsDiff(lg.Data, refLogits[(T+k)*V:(T+k+1)*V]))
				if got := argmax(lg.Data); got != c.Greedy[k+1] {
					t.Errorf("greedy[%d] = %d, want %d", k+1, got, c.Greedy[k+1])
				}
			}
			if seq.Len() != T+len(c.Greedy)-1 {
				t.Errorf("seq.Len() = %d", seq.Len())
			}
			if worstLogit > tol {
				t.Errorf("logits: max abs diff %.3g > %g", worstLogit, tol)
			}
			t.Logf("max abs diff: logits %.3g, activations %.3g", worstLogit, worstAct)
		})
	}
}

// TestMixedBatch checks that a batch of rows with different adapters, lengths,
// capture requests and logits modes gives what each row gives alone.
func TestMixedBatch(t *testing.T) {
	ctx := context.Background()
	e := executor(t, "models/tiny-llama")
	full := "adapters/tiny-llama-lora"
	qv := "adapters/tiny-llama-lora-qv"
	ads := []*lora.Adapter{nil, loadAdapter(t, e, &full), loadAdapter(t, e, &qv), loadAdapter(t, e, &full)}
	prompts := [][]int32{{1, 2, 3, 4, 5}, {7, 8, 9}, {11, 12, 13, 14, 15, 16, 17, 18, 19}, {21, 22}}
	modes := []engine.LogitsMode{engine.LogitsAll, engine.LogitsLast, engine.LogitsAll, engine.LogitsNone}
	caps := []*engine.Capture{nil, {Points: []engine.Point{{Layer: 1, Site: engine.MLPOut}}, From: 1},
		{Points: allPoints(2), From: 2, To: 5}, {Points: []engine.Point{{Layer: 0, Site: engine.AttnOut}}}}
	step := func(batch bool, seqs []engine.Sequence, toks [][]int32, caps []*engine.Capture) []engine.Output {
		rows := make([]engine.Row, len(seqs))
		for i := range rows {
			rows[i] = engine.Row{Seq: seqs[i], Tokens: toks[i], Adapter: ads[i], Capture: caps[i], Logits: modes[i]}
		}
		if batch {
			outs, err := e.Forward(ctx, rows)
			if err != nil {
				t.Fatal(err)
			}
			return outs
		}
		outs := make([]engine.Output, len(rows))
		for i := range rows {
			o, err := e.Forward(ctx, rows[i:i+1])
			if err != nil {
				t.Fatal(err)
			}
			outs[i] = o[0]
		}
		return outs
	}
	var got [2][][]engine.Output
	for v, batch := range []bool{true, false} {
		seqs := make([]engine.Sequence, len(ads))
		for i := range seqs {
			seqs[i] = e.NewSequence()
		}
		got[v] = append(got[v], step(batch, seqs, prompts, caps))
		next := [][]int32{{6}, {10, 11}, {20}, {23, 24, 25}}
		caps2 := []*engine.Capture{{Points: allPoints(2)}, nil, {Points: allPoints(2), From: 0, To: 1}, {Points: allPoints(2), From: 1}}
		got[v] = append(got[v], step(batch, seqs, next, caps2))
	}
	for s := range got[0] {
		for i := range got[0][s] {
			b, a := got[0][s][i], got[1][s][i]
			if d := maxAbsDiff(b.Logits.Data, a.Logits.Data); d > 1e-6 || b.Logits.Rows != a.Logits.Rows {
				t.Errorf("step %d row %d: logits differ by %g", s, i, d)
			}
			if len(b.Acts) != len(a.Acts) {
				t.Errorf("step %d row %d: %d vs %d captures", s, i, len(b.Acts), len(a.Acts))
			}
			for p, x := range b.Acts {
				if d := maxAbsDiff(x.Data, a.Acts[p].Data); d > 1e-6 {
					t.Errorf("step %d row %d %v: activations differ by %g", s, i, p, d)
				}
			}
		}
	}
	// Shapes: row 1 LogitsLast, row 2 capture [2,5), row 3 no logits.
	o := got[0][0]
	if o[0].Logits.Rows != 5 || o[1].Logits.Rows != 1 || o[3].Logits.Rows != 0 {
		t.Errorf("logits rows %d %d %d", o[0].Logits.Rows, o[1].Logits.Rows, o[3].Logits.Rows)
	}
	if r := o[2].Acts[engine.Point{Layer: 1, Site: engine.ResidPost}].Rows; r != 3 {
		t.Errorf("capture [2,5) returned %d rows", r)
	}
	if r := o[1].Acts[engine.Point{Layer: 1, Site: engine.MLPOut}].Rows; r != 2 {
		t.Errorf("capture [1,end) returned %d rows", r)
	}
	// Incremental prompt (prompt then next) must equal one-shot processing.
	seq := e.NewSequence()
	outs, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: append(append([]int32{}, prompts[0]...), 6), Adapter: ads[0], Logits: engine.LogitsAll}})
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(outs[0].Logits.Row(5), got[0][1][0].Logits.Row(0)); d > 1e-5 {
		t.Errorf("incremental vs one-shot logits differ by %g", d)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	e := executor(t, "models/tiny-llama")
	seq := e.NewSequence()
	if _, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: []int32{int32(e.Config().VocabSize)}}}); err == nil {
		t.Error("out-of-range token accepted")
	}
	if _, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: []int32{1}, Capture: &engine.Capture{Points: []engine.Point{{Layer: 99}}}}}); err == nil {
		t.Error("bad capture layer accepted")
	}
	if seq.Len() != 0 {
		t.Errorf("failed forward changed the sequence: Len %d", seq.Len())
	}
	seq.Release()
	if _, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: []int32{1}}}); err == nil {
		t.Error("released sequence accepted")
	}
	if _, err := xla.New(nil, xla.Options{}); err == nil {
		t.Error("nil model accepted")
	}
}

func TestBackendOption(t *testing.T) {
	m, err := model.Load(filepath.Join(testdata, "models/tiny-llama"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := xla.New(m, xla.Options{Backend: "nonsense"}); err == nil {
		t.Error("unknown backend accepted")
	}
	// Without -tags xla (or without an installed PJRT CPU plugin) xla:cpu must
	// fail cleanly; with both it must report itself.
	if x, err := xla.New(m, xla.Options{Backend: "xla:cpu"}); err == nil {
		if x.Backend() != "xla:cpu" {
			t.Errorf("Backend() = %q, want xla:cpu", x.Backend())
		}
		x.Close()
	} else {
		t.Logf("xla:cpu unavailable: %v", err)
	}
	e, err := xla.New(m, xla.Options{Backend: "simplego"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Backend() != "simplego" {
		t.Errorf("Backend() = %q", e.Backend())
	}
}

// TestSOOLossGrad checks loss and LoRA gradients against the float64 PyTorch
// autograd reference for every pooling.
func TestSOOLossGrad(t *testing.T) {
	ref, _, err := refcase.LoadSOOGrad()
	if err != nil {
		t.Fatalf("reference fixtures: %v", err)
	}
	e := executor(t, ref.Model)
	a := loadAdapter(t, e, &ref.Adapter)
	site, err := engine.ParseSite(ref.Site)
	if err != nil {
		t.Fatal(err)
	}
	for _, pooling := range []string{"full", "mean", "last"} {
		t.Run(pooling, func(t *testing.T) {
			want, ok := ref.Poolings[pooling]
			if !ok {
				t.Fatalf("no reference for pooling %s", pooling)
			}
			loss, grad, err := e.SOOLossGrad(context.Background(), a, ref.SelfIDs, ref.OtherIDs, ref.Layer, site, pooling)
			if err != nil {
				t.Fatal(err)
			}
			lossErr := math.Abs(loss-want.Loss) / math.Abs(want.Loss)
			if lossErr > 1e-5 {
				t.Errorf("loss %.9g, want %.9g (relative error %.3g)", loss, want.Loss, lossErr)
			}
			refT := refTensors(t, want.Tensors)
			var worst float64
			n := 0
			for l, mods := range grad.Layers {
				for m, p := range mods {
					if p == nil {
						continue
					}
					for _, ab := range []struct {
						name string
						got  []float32
					}{{"A", p.A}, {"B", p.B}} {
						key := fmt.Sprintf("grad.base_model.model.model.layers.%d.%s.lora_%s.weight", l, model.Module(m).Path(), ab.name)
						w, ok := refT[key]
						if !ok {
							t.Fatalf("reference lacks %s", key)
						}
						n++
						var scale float64
						for _, x := range w {
							scale = max(scale, math.Abs(float64(x)))
						}
						d := maxAbsDiff(ab.got, w)
						if scale == 0 {
							if d != 0 {
								t.Errorf("%s: want zero gradient, max abs %g", key, d)
							}
							continue
						}
						rel := d / scale
						worst = max(worst, rel)
						if rel > 1e-3 {
							t.Errorf("%s: relative error %.3g (max abs diff %.3g, max abs ref %.3g)", key, rel, d, scale)
						}
					}
				}
			}
			if n != len(refT)-1 {
				t.Errorf("compared %d gradients, reference has %d tensors besides the loss", n, len(refT)-1)
			}
			t.Logf("loss %.9g (ref %.9g, rel err %.3g); worst gradient relative error (max abs diff / max abs ref per tensor) %.3g",
				loss, want.Loss, lossErr, worst)
		})
	}
}

// cloneAdapter deep-copies a, adding step·dir (an adapter of the same shape) when dir is set.
func cloneAdapter(a, dir *lora.Adapter, step float32) *lora.Adapter {
	c := *a
	c.Layers = make([][model.NumModules]*lora.Pair, len(a.Layers))
	for l, mods := range a.Layers {
		for m, p := range mods {
			if p == nil {
				continue
			}
			q := *p
			q.A, q.B = append([]float32(nil), p.A...), append([]float32(nil), p.B...)
			if dir != nil {
				d := dir.Layers[l][m]
				for i := range q.A {
					q.A[i] += step * d.A[i]
				}
				for i := range q.B {
					q.B[i] += step * d.B[i]
				}
			}
			c.Layers[l][m] = &q
		}
	}
	return &c
}

// TestSOOConsistency checks SOOLossGrad at sites without PyTorch fixtures:
// the loss against one computed from Forward's captured activations, and the
// gradient against a central finite difference along the gradient direction.
func TestSOOConsistency(t *testing.T) {
	ctx := context.Background()
	e := executor(t, "models/tiny-qwen2")
	dir := "adapters/tiny-qwen2-lora"
	a := loadAdapter(t, e, &dir)
	self := []int32{5, 17, 99, 3, 250, 8, 41}
	other := []int32{77, 12, 9, 301, 55}
	H := e.Config().Hidden
	acts := func(ad *lora.Adapter, toks []int32, p engine.Point) engine.Tensor2D {
		seq := e.NewSequence()
		defer seq.Release()
		outs, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: toks, Adapter: ad, Logits: engine.LogitsNone,
			Capture: &engine.Capture{Points: []engine.Point{p}}}})
		if err != nil {
			t.Fatal(err)
		}
		return outs[0].Acts[p]
	}
	for _, tc := range []struct {
		p       engine.Point
		pooling string
	}{{engine.Point{Layer: 1, Site: engine.ResidPost}, "mean"}, {engine.Point{Layer: 0, Site: engine.MLPOut}, "full"}, {engine.Point{Layer: 1, Site: engine.AttnOut}, "last"}} {
		t.Run(fmt.Sprintf("%s.%d/%s", tc.p.Site, tc.p.Layer, tc.pooling), func(t *testing.T) {
			loss, grad, err := e.SOOLossGrad(ctx, a, self, other, tc.p.Layer, tc.p.Site, tc.pooling)
			if err != nil {
				t.Fatal(err)
			}
			S, O := acts(a, self, tc.p), acts(a, other, tc.p)
			var want float64
			switch tc.pooling {
			case "full":
				n := max(S.Rows, O.Rows)
				for i := 0; i < n*H; i++ {
					var s, o float64
					if i < len(S.Data) {
						s = float64(S.Data[i])
					}
					if i < len(O.Data) {
						o = float64(O.Data[i])
					}
					want += (s - o) * (s - o)
				}
				want /= float64(n * H)
			case "mean":
				for j := range H {
					var s, o float64
					for i := range S.Rows {
						s += float64(S.Row(i)[j])
					}
					for i := range O.Rows {
						o += float64(O.Row(i)[j])
					}
					d := s/float64(S.Rows) - o/float64(O.Rows)
					want += d * d
				}
				want /= float64(H)
			case "last":
				s, o := S.Row(S.Rows-1), O.Row(O.Rows-1)
				for j := range H {
					d := float64(s[j]) - float64(o[j])
					want += d * d
				}
				want /= float64(H)
			}
			if rel := math.Abs(loss-want) / want; rel > 1e-5 {
				t.Errorf("loss %.9g, from captures %.9g (relative error %.3g)", loss, want, rel)
			}
			// Directional derivative along the normalised gradient must equal |g|.
			var norm float64
			for l, mods := range grad.Layers {
				for m, p := range mods {
					if p == nil {
						continue
					}
					upstream := l < tc.p.Layer || (l == tc.p.Layer && (tc.p.Site != engine.AttnOut || model.Module(m) <= model.O))
					for _, x := range append(append([]float32{}, p.A...), p.B...) {
						if !upstream && x != 0 {
							t.Fatalf("layer %d %s: nonzero gradient above the site", l, model.Module(m))
						}
						norm += float64(x) * float64(x)
					}
				}
			}
			norm = math.Sqrt(norm)
			if norm == 0 {
				t.Fatal("zero gradient")
			}
			dirn := cloneAdapter(grad, nil, 0)
			for _, mods := range dirn.Layers {
				for _, p := range mods {
					if p == nil {
						continue
					}
					for i := range p.A {
						p.A[i] /= float32(norm)
					}
					for i := range p.B {
						p.B[i] /= float32(norm)
					}
				}
			}
			const h = 1e-2
			lp, _, err := e.SOOLossGrad(ctx, cloneAdapter(a, dirn, h), self, other, tc.p.Layer, tc.p.Site, tc.pooling)
			if err != nil {
				t.Fatal(err)
			}
			lm, _, err := e.SOOLossGrad(ctx, cloneAdapter(a, dirn, -h), self, other, tc.p.Layer, tc.p.Site, tc.pooling)
			if err != nil {
				t.Fatal(err)
			}
			fd := (lp - lm) / (2 * h)
			if rel := math.Abs(fd-norm) / norm; rel > 1e-2 {
				t.Errorf("finite difference %.6g vs |grad| %.6g (relative error %.3g)", fd, norm, rel)
			} else {
				t.Logf("loss %.6g; finite difference %.6g vs |grad| %.6g (relative error %.3g)", loss, fd, norm, rel)
			}
		})
	}
}

// TestConcurrentForward runs sequences from several goroutines at once.
func TestConcurrentForward(t *testing.T) {
	ctx := context.Background()
	e := executor(t, "models/tiny-gemma2")
	dir := "adapters/tiny-gemma2-lora"
	a := loadAdapter(t, e, &dir)
	prompt := []int32{2, 40, 41, 42, 43, 44, 45, 46, 47, 48}
	run := func(ad *lora.Adapter) []float32 {
		seq := e.NewSequence()
		defer seq.Release()
		outs, err := e.Forward(ctx, []engine.Row{{Seq: seq, Tokens: prompt, Adapter: ad, Logits: engine.LogitsLast}})
		if err != nil {
			t.Error(err)
			return nil
		}
		return outs[0].Logits.Data
	}
	want := [2][]float32{run(nil), run(a)}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ad := a
			if i%2 == 0 {
				ad = nil
			}
			if d := maxAbsDiff(run(ad), want[i%2]); d != 0 {
				t.Errorf("goroutine %d: logits differ by %g", i, d)
			}
		}()
	}
	wg.Wait()
}
