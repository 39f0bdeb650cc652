package overlap_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
	"github.com/sooserve/sooserve/overlap"
)

// relTol is the parity tolerance against the float64 PyTorch reference.
const relTol = 1e-4

type refCase struct {
	Name     string                     `json:"name"`
	Model    string                     `json:"model"`
	Adapter  *string                    `json:"adapter"`
	SelfIDs  []int32                    `json:"self_ids"`
	OtherIDs []int32                    `json:"other_ids"`
	Results  map[string]*overlap.Result `json:"results"`
}

func testdata(t testing.TB) string {
	t.Helper()
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	return td
}

var (
	modelsMu sync.Mutex
	models   = map[string]*cpu.Executor{}
)

// executor loads (once per test binary) the cpu executor of a testdata model.
func executor(t testing.TB, rel string) *cpu.Executor {
	t.Helper()
	modelsMu.Lock()
	defer modelsMu.Unlock()
	if ex, ok := models[rel]; ok {
		return ex
	}
	m, err := model.Load(filepath.Join(testdata(t), rel), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{})
	models[rel] = ex
	return ex
}

func adapter(t testing.TB, ex *cpu.Executor, rel *string) *lora.Adapter {
	t.Helper()
	if rel == nil {
		return nil
	}
	a, _, err := adapters.LoadDir(filepath.Base(*rel), filepath.Join(testdata(t), *rel), ex.Config())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func loadCases(t testing.TB) []refCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata(t), "overlap", "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []refCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) == 0 {
		t.Fatal("no cases in expected.json")
	}
	return f.Cases
}

var allSites = []engine.Site{engine.AttnOut, engine.MLPOut, engine.ResidPost}

// relErr is |got-want| / |want|, or |got-want| / floor when |want| < floor.
func relErr(got, want, floor float64) float64 {
	d := math.Abs(got - want)
	if a := math.Abs(want); a > floor {
		return d / a
	}
	return d / floor
}

// TestReferenceParity holds Measure to the float64 PyTorch reference for
// every case, site, layer, pooling and metric.
func TestReferenceParity(t *testing.T) {
	worst := map[string]float64{}
	for _, c := range loadCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			ex := executor(t, c.Model)
			a := adapter(t, ex, c.Adapter)
			for _, p := range []overlap.Pooling{overlap.PoolMean, overlap.PoolLast, overlap.PoolFull} {
				want := c.Results[string(p)]
				got, err := overlap.Measure(context.Background(), ex, a, c.SelfIDs, c.OtherIDs, overlap.Spec{Sites: allSites, Pooling: p})
				if err != nil {
					t.Fatal(err)
				}
				if got.Pooling != want.Pooling || got.SelfTokens != want.SelfTokens || got.OtherTokens != want.OtherTokens || len(got.Layers) != len(want.Layers) {
					t.Fatalf("%s: header %v %d %d %d, want %v %d %d %d", p, got.Pooling, got.SelfTokens, got.OtherTokens, len(got.Layers),
						want.Pooling, want.SelfTokens, want.OtherTokens, len(want.Layers))
				}
				for i, w := range want.Layers {
					g := got.Layers[i]
					if g.Layer != w.Layer || g.Site != w.Site {
						t.Fatalf("%s entry %d: layer %d %s, want %d %s", p, i, g.Layer, g.Site, w.Layer, w.Site)
					}
					for _, m := range []struct {
						name      string
						got, want float64
						floor     float64
					}{
						{"mse", g.MSE, w.MSE, 1e-300},
						{"log_mse", g.LogMSE, w.LogMSE, 1e-300},
						{"cosine", g.Cosine, w.Cosine, 1e-300},
						{"self_norm", g.SelfNorm, w.SelfNorm, 1e-300},
						{"other_norm", g.OtherNorm, w.OtherNorm, 1e-300},
					} {
						e := relErr(m.got, m.want, m.floor)
						key := string(p) + "/" + m.name
						worst[key] = max(worst[key], e)
						if e > relTol {
							t.Errorf("%s layer %d %s %s = %.9g, want %.9g (rel err %.3g)", p, w.Layer, w.Site, m.name, m.got, m.want, e)
						}
					}
				}
			}
		})
	}
	for _, k := range slices.Sorted(maps.Keys(worst)) {
		t.Logf("max relative error %-16s %.3g", k, worst[k])
	}
}

// TestBatchedEqualsAlone checks that the two-row batched Measure equals
// computing the metrics from each prompt run alone, and that several pairs in
// one MeasureBatch step equal one Measure per pair.
func TestBatchedEqualsAlone(t *testing.T) {
	cases := loadCases(t)
	ctx := context.Background()
	for _, c := range cases {
		ex := executor(t, c.Model)
		a := adapter(t, ex, c.Adapter)
		spec, err := overlap.Spec{Sites: allSites, Pooling: overlap.PoolFull}.Resolve(ex.Config().Layers)
		if err != nil {
			t.Fatal(err)
		}
		alone := func(ids []int32) map[engine.Point]engine.Tensor2D {
			seq := ex.NewSequence()
			defer seq.Release()
			out, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: ids, Adapter: a, Capture: spec.Capture(), Logits: engine.LogitsLast}})
			if err != nil {
				t.Fatal(err)
			}
			return out[0].Acts
		}
		want, err := overlap.Compute(spec, alone(c.SelfIDs), alone(c.OtherIDs))
		if err != nil {
			t.Fatal(err)
		}
		got, err := overlap.Measure(ctx, ex, a, c.SelfIDs, c.OtherIDs, spec)
		if err != nil {
			t.Fatal(err)
		}
		if e := maxRel(got, want); e > 1e-6 {
			t.Errorf("%s: batched vs alone: max relative difference %g", c.Name, e)
		}
	}
	// Several pairs of one model in one step.
	var pairs []overlap.TokenPair
	var model string
	for _, c := range cases {
		if c.Adapter == nil && (model == "" || c.Model == model) {
			model = c.Model
			pairs = append(pairs, overlap.TokenPair{Self: c.SelfIDs, Other: c.OtherIDs}, overlap.TokenPair{Self: c.OtherIDs, Other: c.SelfIDs})
		}
	}
	ex := executor(t, model)
	spec := overlap.Spec{Sites: allSites, Pooling: overlap.PoolMean}
	batch, err := overlap.MeasureBatch(ctx, ex, nil, pairs, spec)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pairs {
		one, err := overlap.Measure(ctx, ex, nil, p.Self, p.Other, spec)
		if err != nil {
			t.Fatal(err)
		}
		if e := maxRel(batch[i], one); e > 1e-6 {
			t.Errorf("pair %d: batch of %d vs alone: max relative difference %g", i, len(pairs), e)
		}
	}
}

func maxRel(a, b *overlap.Result) float64 {
	if len(a.Layers) != len(b.Layers) || a.SelfTokens != b.SelfTokens || a.OtherTokens != b.OtherTokens {
		return math.Inf(1)
	}
	var m float64
	for i := range a.Layers {
		x, y := a.Layers[i], b.Layers[i]
		if x.Layer != y.Layer || x.Site != y.Site {
			return math.Inf(1)
		}
		for _, p := range [][2]float64{{x.MSE, y.MSE}, {x.Cosine, y.Cosine}, {x.SelfNorm, y.SelfNorm}, {x.OtherNorm, y.OtherNorm}} {
			m = max(m, relErr(p[0], p[1], 1e-12))
		}
	}
	return m
}

func TestSpecErrors(t *testing.T) {
	ex := executor(t, "models/tiny-llama")
	ctx := context.Background()
	ok := []int32{5, 6, 7}
	long := make([]int32, ex.MaxContext()+1)
	for i := range long {
		long[i] = 5
	}
	for _, tc := range []struct {
		name        string
		self, other []int32
		spec        overlap.Spec
		param, msg  string
	}{
		{"layer too high", ok, ok, overlap.Spec{Layers: []int{3}}, "layers", "layer 3 out of range: the model has 3 layers"},
		{"negative layer", ok, ok, overlap.Spec{Layers: []int{-1}}, "layers", "layer -1 out of range"},
		{"duplicate layer", ok, ok, overlap.Spec{Layers: []int{1, 1}}, "layers", "layer 1 listed twice"},
		{"unknown site", ok, ok, overlap.Spec{Sites: []engine.Site{engine.NumSites}}, "sites", "unknown site"},
		{"duplicate site", ok, ok, overlap.Spec{Sites: []engine.Site{engine.MLPOut, engine.MLPOut}}, "sites", "site mlp_out listed twice"},
		{"unknown pooling", ok, ok, overlap.Spec{Pooling: "max"}, "pooling", `unknown pooling "max"`},
		{"empty self", nil, ok, overlap.Spec{}, "self", "the self prompt is empty"},
		{"empty other", ok, []int32{}, overlap.Spec{}, "other", "the other prompt is empty"},
		{"twin too long", ok, long, overlap.Spec{}, "other", "the other prompt has 513 tokens; the context is 512"},
		{"token out of vocabulary", ok, []int32{5, 320}, overlap.Spec{}, "other", "token 320 outside the vocabulary of 320"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := overlap.Measure(ctx, ex, nil, tc.self, tc.other, tc.spec)
			var ie *overlap.InputError
			if !errors.Is(err, overlap.ErrInvalid) || !errors.As(err, &ie) {
				t.Fatalf("err = %v, want an InputError", err)
			}
			if ie.Param != tc.param || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %q (param %q), want param %q and %q", err, ie.Param, tc.param, tc.msg)
			}
		})
	}
	if _, err := overlap.ParseSpec(nil, []string{"attn"}, ""); !errors.Is(err, overlap.ErrInvalid) {
		t.Errorf("ParseSpec unknown site: %v", err)
	}
	s, err := overlap.ParseSpec([]int{2, 0}, []string{"resid_post", "attn_out"}, "")
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Resolve(3)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Points()); got != "[{2 resid_post} {2 attn_out} {0 resid_post} {0 attn_out}]" || r.Pooling != overlap.PoolMean {
		t.Errorf("points %s pooling %q", got, r.Pooling)
	}
}

// TestDefaults checks the zero Spec: every layer, attn_out, mean pooling, and
// the JSON field names of DESIGN.md §5.
func TestDefaults(t *testing.T) {
	ex := executor(t, "models/tiny-gemma2")
	r, err := overlap.Measure(context.Background(), ex, nil, []int32{10, 11, 12, 13}, []int32{10, 14, 12}, overlap.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pooling != "mean" || len(r.Layers) != 4 || r.SelfTokens != 4 || r.OtherTokens != 3 {
		t.Fatalf("result %+v", r)
	}
	for i, l := range r.Layers {
		if l.Layer != i || l.Site != "attn_out" {
			t.Errorf("entry %d: layer %d site %s", i, l.Layer, l.Site)
		}
	}
	b, _ := json.Marshal(r)
	var m map[string]any
	json.Unmarshal(b, &m)
	entry := m["layers"].([]any)[0].(map[string]any)
	var keys []string
	for k := range entry {
		keys = append(keys, k)
	}
	if len(m) != 4 || m["pooling"] == nil || m["self_tokens"] == nil || m["other_tokens"] == nil || len(entry) != 7 {
		t.Errorf("json %s", b)
	}
	for _, k := range []string{"layer", "site", "mse", "log_mse", "cosine", "self_norm", "other_norm"} {
		if _, ok := entry[k]; !ok {
			t.Errorf("layer entry lacks %q: %s", k, b)
		}
	}
}

func TestCompareByHand(t *testing.T) {
	S := engine.Tensor2D{Rows: 2, Cols: 2, Data: []float32{1, 0, 3, 2}}
	O := engine.Tensor2D{Rows: 1, Cols: 2, Data: []float32{1, 2}}
	for _, tc := range []struct {
		p                     overlap.Pooling
		mse, cos, sn, on, eps float64
	}{
		// mean: s = (2,1), o = (1,2): mse = (1+1)/2, cos = 4/5.
		{overlap.PoolMean, 1, 0.8, math.Sqrt(5), math.Sqrt(5), 0},
		// last: s = (3,2), o = (1,2): mse = 4/2, cos = 7/(sqrt13 sqrt5).
		{overlap.PoolLast, 2, 7 / (math.Sqrt(13) * math.Sqrt(5)), math.Sqrt(13), math.Sqrt(5), 0},
		// full: O padded to [[1,2],[0,0]]: diffs 0,-2,3,2 -> 17/4; dot 1; |S| = sqrt14.
		{overlap.PoolFull, 17.0 / 4, 1 / (math.Sqrt(14) * math.Sqrt(5)), math.Sqrt(14), math.Sqrt(5), 0},
	} {
		r, err := overlap.Compare(S, O, tc.p)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(r.MSE-tc.mse) > 1e-12 || math.Abs(r.Cosine-tc.cos) > 1e-12 || math.Abs(r.SelfNorm-tc.sn) > 1e-12 ||
			math.Abs(r.OtherNorm-tc.on) > 1e-12 || math.Abs(r.LogMSE-math.Log(tc.mse+1e-25)) > 1e-12 {
			t.Errorf("%s: %+v", tc.p, r)
		}
	}
	z := engine.Tensor2D{Rows: 1, Cols: 2, Data: []float32{0, 0}}
	r, err := overlap.Compare(z, z, overlap.PoolLast)
	if err != nil || r.MSE != 0 || r.Cosine != 0 || r.LogMSE != math.Log(1e-25) {
		t.Errorf("zeros: %+v %v", r, err)
	}
	if _, err := overlap.Compare(S, engine.Tensor2D{Rows: 1, Cols: 3, Data: make([]float32, 3)}, overlap.PoolMean); err == nil {
		t.Error("width mismatch accepted")
	}
}

func BenchmarkMeasure(b *testing.B) {
	ex := executor(b, "models/tiny-llama")
	self := []int32{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}
	other := []int32{10, 21, 22, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}
	ctx := context.Background()
	for _, spec := range []struct {
		name string
		spec overlap.Spec
	}{
		{"layer0-attn_out", overlap.Spec{Layers: []int{0}}},
		{"all-layers-all-sites", overlap.Spec{Sites: allSites, Pooling: overlap.PoolFull}},
	} {
		b.Run(spec.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := overlap.Measure(ctx, ex, nil, self, other, spec.spec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMeasureTwin checks the chat path: the prompt's prefill row (with
// logits, as a completion runs it) carries the capture, and only the twin is
// run by MeasureTwin; the result equals Measure on the same pair.
func TestMeasureTwin(t *testing.T) {
	ex := executor(t, "models/tiny-llama")
	ctx := context.Background()
	self := []int32{10, 20, 30, 40, 50, 60}
	other := []int32{10, 21, 22, 40, 50, 60, 70}
	spec, err := overlap.Spec{Layers: []int{2, 0}, Sites: allSites, Pooling: overlap.PoolLast}.Resolve(3)
	if err != nil {
		t.Fatal(err)
	}
	seq := ex.NewSequence()
	defer seq.Release()
	out, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: self, Capture: spec.Capture(), Logits: engine.LogitsLast}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := overlap.MeasureTwin(ctx, ex, nil, out[0].Acts, other, spec)
	if err != nil {
		t.Fatal(err)
	}
	want, err := overlap.Measure(ctx, ex, nil, self, other, spec)
	if err != nil {
		t.Fatal(err)
	}
	if e := maxRel(got, want); e > 1e-6 {
		t.Errorf("MeasureTwin vs Measure: %g", e)
	}
	if _, err := overlap.MeasureTwin(ctx, ex, nil, out[0].Acts, other, overlap.Spec{}); err == nil {
		t.Error("unresolved spec accepted")
	}
	if _, err := overlap.MeasureTwin(ctx, ex, nil, out[0].Acts, nil, spec); !errors.Is(err, overlap.ErrInvalid) {
		t.Errorf("empty twin: %v", err)
	}
	// Activations missing a point of the spec.
	if _, err := overlap.Compute(spec, map[engine.Point]engine.Tensor2D{}, out[0].Acts); err == nil {
		t.Error("missing activations accepted")
	}
}
