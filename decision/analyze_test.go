package decision

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/synth"
	"github.com/sooserve/sooserve/overlap"
)

// gauss returns n rows of width d: noise of standard deviation 0.3 plus
// shift·e_axis (axis < 0: no shift).
func gauss(rng *rand.Rand, n, d, axis int, shift float32) [][]float32 {
	out := make([][]float32, n)
	for i := range out {
		r := make([]float32, d)
		for j := range r {
			r[j] = float32(0.3 * rng.NormFloat64())
		}
		if axis >= 0 {
			r[axis] += shift
		}
		out[i] = r
	}
	return out
}

func TestAnalyzeHandcrafted(t *testing.T) {
	// Layer 0: the scenarios split along e0 and the fragments move along e0
	// (the decision site). Layer 1: the scenarios split along e0, the
	// fragments along e1 (orthogonal: no transfer). Layer 2: the fragments
	// move along e0 but the scenarios do not split (the probe cannot work).
	rng := rand.New(rand.NewPCG(21, 22))
	const d, nScen, nPairs = 6, 20, 16
	in := Inputs{Conflict: Activations{}, Self: Activations{}, FragSelf: Activations{}, FragOther: Activations{}}
	for l, c := range []struct{ scenAxis, fragAxis int }{{0, 0}, {0, 1}, {-1, 0}} {
		pt := engine.Point{Layer: l, Site: engine.AttnOut}
		in.Conflict[pt] = gauss(rng, nScen, d, c.scenAxis, 2)
		in.Self[pt] = gauss(rng, nScen, d, c.scenAxis, -2)
		in.FragOther[pt] = gauss(rng, nPairs, d, c.fragAxis, 2)
		in.FragSelf[pt] = gauss(rng, nPairs, d, c.fragAxis, -2)
	}
	r, err := Analyze(context.Background(), in, Options{Sites: []engine.Site{engine.AttnOut}, Folds: 4}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Sites) != 3 || r.Conflict != nScen || r.Self != nScen || r.Pairs != nPairs || r.Folds != 4 ||
		r.Lambda != DefaultLambda || r.MinAccuracy != DefaultMinAccuracy || r.Rule != Rule {
		t.Fatalf("report header: %+v", r)
	}
	s0, s1, s2 := r.Sites[0], r.Sites[1], r.Sites[2]
	if s0.ProbeAccuracy != 1 || s0.OtherAsConflict != 1 || s0.SelfAsConflict != 0 || s0.Transfer != 1 || s0.Cosine < 0.95 {
		t.Errorf("layer 0 (aligned): %+v", s0)
	}
	if math.Abs(s0.Score-s0.Cosine) > 1e-15 {
		t.Errorf("layer 0 score %v, want cosine × transfer = %v", s0.Score, s0.Cosine)
	}
	// Fragments differ by 4 along one axis: MSE ≈ 16/d + 2·0.09.
	if want := 16.0/d + 0.18; math.Abs(s0.SOOMSE-want) > 0.3 {
		t.Errorf("layer 0 SOO MSE %.3f, want about %.3f", s0.SOOMSE, want)
	}
	if s1.ProbeAccuracy != 1 || math.Abs(s1.Cosine) > 0.2 || s1.Score > 0.1 {
		t.Errorf("layer 1 (orthogonal): %+v", s1)
	}
	if s2.ProbeAccuracy >= DefaultMinAccuracy || s2.Score != 0 {
		t.Errorf("layer 2 (no decision in the scenarios): %+v", s2)
	}
	if r.Decision == nil || r.Decision.Layer != 0 || r.Decision.Site != "attn_out" {
		t.Errorf("decision %+v, want layer 0 attn_out", r.Decision)
	}

	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"20 conflict vs 20 self scenarios (4-fold probe", "16 SOO pairs", "decision site: layer 0 attn_out", "rule: score = cosine × transfer"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestDecideRule(t *testing.T) {
	rows := []SiteResult{
		{Layer: 0, Site: "attn_out", Cosine: -0.9, Transfer: -1, ProbeAccuracy: 1},  // both negative: no score
		{Layer: 0, Site: "mlp_out", Cosine: 0.5, Transfer: 0.8, ProbeAccuracy: 0.7}, // probe below the gate
		{Layer: 1, Site: "attn_out", Cosine: 0.4, Transfer: 0.5, ProbeAccuracy: 0.9},
		{Layer: 1, Site: "mlp_out", Cosine: 0.5, Transfer: 0.4, ProbeAccuracy: 1}, // ties with the row before
	}
	if s := Score(rows[0], 0); s != 0 {
		t.Errorf("negative cosine and transfer scored %v", s)
	}
	d := decide(rows, 0.75)
	if d == nil || d.Layer != 1 || d.Site != "attn_out" {
		t.Errorf("decision %+v, want layer 1 attn_out (the first of equal scores)", d)
	}
	if d := decide(rows, 0); d == nil || d.Site != "mlp_out" || d.Layer != 0 {
		t.Errorf("without the gate: decision %+v, want layer 0 mlp_out", d)
	}
	if d := decide(rows[:1], 0); d != nil {
		t.Errorf("decision %+v from a row with no positive score", d)
	}
}

func TestAnalyzeErrors(t *testing.T) {
	pt := engine.Point{Layer: 0, Site: engine.AttnOut}
	rng := rand.New(rand.NewPCG(1, 1))
	in := Inputs{
		Conflict: Activations{pt: gauss(rng, 3, 4, 0, 1)}, Self: Activations{pt: gauss(rng, 3, 4, 0, -1)},
		FragSelf: Activations{pt: gauss(rng, 2, 4, -1, 0)}, FragOther: Activations{pt: gauss(rng, 2, 4, -1, 0)},
	}
	sites := []engine.Site{engine.AttnOut}
	for _, tc := range []struct {
		opts Options
		msg  string
	}{
		{Options{Sites: sites}, "at least 5 samples of each class"},
		{Options{Sites: sites, Folds: 1}, "at least 2 folds"},
		{Options{Sites: sites, Folds: 2, Layers: []int{3}}, "layer 3 is not in a model of 1 layers"},
		{Options{Sites: sites, Folds: 2, Lambda: -1}, "λ must be positive"},
		{Options{Sites: []engine.Site{engine.MLPOut}, Folds: 2}, "no activations at layer 0 mlp_out"},
	} {
		if _, err := Analyze(context.Background(), in, tc.opts, 1); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: error %v, want %q", tc.opts, err, tc.msg)
		}
	}
	bad := -0.5
	if _, err := Analyze(context.Background(), in, Options{Sites: sites, Folds: 2, MinAccuracy: &bad}, 1); err == nil {
		t.Error("min accuracy -0.5 accepted")
	}
}

func TestMeasureSyntheticModel(t *testing.T) {
	m, err := synth.Model("tiny", model.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{Threads: 1})
	rng := rand.New(rand.NewPCG(8, 9))
	prompt := func(first int32) []int32 {
		ids := []int32{first}
		for range 3 + rng.IntN(9) {
			ids = append(ids, int32(10+rng.IntN(200)))
		}
		return ids
	}
	p := &Prompts{}
	for range 6 {
		p.Conflict = append(p.Conflict, prompt(3))
		p.Self = append(p.Self, prompt(4))
		p.Pairs = append(p.Pairs, overlap.TokenPair{Self: prompt(5), Other: prompt(6)})
	}
	ctx := context.Background()

	// The captured row is the prompt's last token, as a full capture has it.
	pts := []engine.Point{{Layer: 0, Site: engine.AttnOut}, {Layer: 1, Site: engine.ResidPost}}
	acts, err := Capture(ctx, ex, nil, p.Conflict, pts, 4)
	if err != nil {
		t.Fatal(err)
	}
	for i, ids := range p.Conflict {
		seq := ex.NewSequence()
		outs, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: ids, Capture: &engine.Capture{Points: pts}, Logits: engine.LogitsNone}})
		seq.Release()
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range pts {
			full := outs[0].Acts[pt]
			want := full.Row(full.Rows - 1)
			got := acts[pt][i]
			for j := range want {
				if math.Abs(float64(got[j]-want[j])) > 1e-5 {
					t.Fatalf("prompt %d %v: captured[%d] %v, full capture's last row %v", i, pt, j, got[j], want[j])
				}
			}
		}
	}

	r, err := Measure(ctx, ex, nil, p, Options{Folds: 3, Batch: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Sites) != 2*3 || r.Conflict != 6 || r.Self != 6 || r.Pairs != 6 {
		t.Fatalf("report: %d rows, %d/%d/%d inputs", len(r.Sites), r.Conflict, r.Self, r.Pairs)
	}
	for i, s := range r.Sites {
		if s.Layer != i/3 || s.Site != []string{"attn_out", "mlp_out", "resid_post"}[i%3] {
			t.Errorf("row %d is layer %d %s", i, s.Layer, s.Site)
		}
		for _, v := range []float64{s.ProbeAccuracy, s.OtherAsConflict, s.SelfAsConflict, s.Transfer, s.Cosine, s.ScenarioNorm, s.SOONorm, s.SOOMSE, s.Score} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("row %d: a value is not finite: %+v", i, s)
			}
		}
		if s.SOOMSE <= 0 || s.ScenarioNorm <= 0 {
			t.Errorf("row %d: SOO MSE %v, scenario norm %v", i, s.SOOMSE, s.ScenarioNorm)
		}
	}

	if _, err := Capture(ctx, ex, nil, [][]int32{{1, 999}}, pts, 0); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Errorf("token 999 of 256: %v", err)
	}
	if _, err := Capture(ctx, ex, nil, [][]int32{{}}, pts, 0); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty prompt: %v", err)
	}
}
