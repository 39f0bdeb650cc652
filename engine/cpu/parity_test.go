package cpu_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
	"github.com/sooserve/sooserve/internal/synth"
)

const logitTol = 1e-4

func load(t testing.TB, td string, c refcase.Case) (*cpu.Executor, *lora.Adapter) {
	t.Helper()
	m, err := model.Load(filepath.Join(td, c.Model), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	var a *lora.Adapter
	if c.Adapter != nil {
		a, _, err = adapters.LoadDir("a", filepath.Join(td, *c.Adapter), m.Config)
		if err != nil {
			t.Fatal(err)
		}
	}
	return cpu.New(m, cpu.Options{}), a
}

func allPoints(cfg *model.Config) []engine.Point {
	var pts []engine.Point
	for l := 0; l < cfg.Layers; l++ {
		for s := engine.Site(0); s < engine.NumSites; s++ {
			pts = append(pts, engine.Point{Layer: l, Site: s})
		}
	}
	return pts
}

// TestReferenceParity holds the cpu executor to the PyTorch reference: logits
// at every position of prompt+greedy continuation (prefill of the prompt, then
// one decode step per token through the KV cache), greedy tokens, and every
// captured activation.
func TestReferenceParity(t *testing.T) {
	cases, td, err := refcase.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			ex, a := load(t, td, c)
			cfg := ex.Config()
			want, err := refcase.LoadTensors(td, c.Tensors)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			seq := ex.NewSequence()
			defer seq.Release()
			out, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: c.InputIDs, Adapter: a, Logits: engine.LogitsAll,
				Capture: &engine.Capture{Points: allPoints(cfg)}}})
			if err != nil {
				t.Fatal(err)
			}
			T := len(c.InputIDs)
			V := cfg.VocabSize
			wantLogits := want["logits"]
			if d := refcase.MaxAbsDiff(out[0].Logits.Data, wantLogits[:T*V]); d > logitTol {
				t.Errorf("prefill logits: max |Δ| = %g", d)
			}
			for p, act := range out[0].Acts {
				key := fmt.Sprintf("%s.%d", p.Site, p.Layer)
				if d := refcase.MaxAbsDiff(act.Data, want[key]); d > logitTol {
					t.Errorf("%s: max |Δ| = %g", key, d)
				}
			}
			// Greedy decoding through the cache.
			var got []int32
			last := out[0].Logits.Row(T - 1)
			for step := 0; step < len(c.Greedy); step++ {
				tok := argmax(last)
				got = append(got, tok)
				if step == len(c.Greedy)-1 {
					break
				}
				o, err := ex.Forward(ctx, []engine.Row{{Seq: seq, Tokens: []int32{tok}, Adapter: a}})
				if err != nil {
					t.Fatal(err)
				}
				last = o[0].Logits.Data
				if tok == c.Greedy[step] {
					if d := refcase.MaxAbsDiff(last, wantLogits[(T+step)*V:(T+step+1)*V]); d > logitTol {
						t.Errorf("decode step %d logits: max |Δ| = %g", step, d)
					}
				}
			}
			if !slices.Equal(got, c.Greedy) {
				t.Errorf("greedy = %v, want %v", got, c.Greedy)
			}
		})
	}
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

// TestMixedBatchEqualsAlone runs rows with different adapters, lengths and
// positions in one step and checks each equals the same row run alone, bit
// for bit, with f32 and with bf16 weights.
func TestMixedBatchEqualsAlone(t *testing.T) {
	cases, td, err := refcase.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.Name == "llama_base" || c.Name == "llama_bf16_base" {
			t.Run(c.Name, func(t *testing.T) { mixedBatchEqualsAlone(t, td, c) })
		}
	}
}

func mixedBatchEqualsAlone(t *testing.T, td string, base refcase.Case) {
	ex, _ := load(t, td, base)
	cfg := ex.Config()
	a1, _, err := adapters.LoadDir("a1", filepath.Join(td, "adapters/tiny-llama-lora"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	a2, _, err := adapters.LoadDir("a2", filepath.Join(td, "adapters/tiny-llama-lora-qv"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	a3 := bf16Copy(t, td, cfg, true) // a1 rounded to bf16 and streamed as bf16
	ctx := context.Background()
	prompts := [][]int32{{5, 9, 33, 200}, {7, 7, 7, 100, 101, 102, 103}, {250}, {12, 13, 14}, {40, 41}}
	ads := []*lora.Adapter{a1, nil, a2, a1, a3}
	cap := &engine.Capture{Points: []engine.Point{{Layer: 1, Site: engine.AttnOut}, {Layer: 2, Site: engine.ResidPost}}}
	// Reference: each row alone; prefill then two decode steps.
	type result struct{ logits, act [][]float32 }
	run := func(batched bool) []result {
		seqs := make([]engine.Sequence, len(prompts))
		res := make([]result, len(prompts))
		for i := range seqs {
			seqs[i] = ex.NewSequence()
		}
		steps := [][][]int32{prompts, {{1}, {2}, {3}, {4}, {5}}, {{9}, {8}, {7}, {6}, {5}}}
		for _, toks := range steps {
			rows := make([]engine.Row, len(prompts))
			for i := range rows {
				rows[i] = engine.Row{Seq: seqs[i], Tokens: toks[i], Adapter: ads[i], Capture: cap, Logits: engine.LogitsAll}
			}
			var outs []engine.Output
			if batched {
				o, err := ex.Forward(ctx, rows)
				if err != nil {
					t.Fatal(err)
				}
				outs = o
			} else {
				for _, r := range rows {
					o, err := ex.Forward(ctx, []engine.Row{r})
					if err != nil {
						t.Fatal(err)
					}
					outs = append(outs, o[0])
				}
			}
			for i, o := range outs {
				res[i].logits = append(res[i].logits, o.Logits.Data)
				res[i].act = append(res[i].act, o.Acts[engine.Point{Layer: 1, Site: engine.AttnOut}].Data, o.Acts[engine.Point{Layer: 2, Site: engine.ResidPost}].Data)
			}
		}
		return res
	}
	alone, batch := run(false), run(true)
	for i := range alone {
		for s := range alone[i].logits {
			if !slices.Equal(alone[i].logits[s], batch[i].logits[s]) {
				t.Errorf("row %d step %d: batched logits differ from alone (max |Δ| %g)", i, s, refcase.MaxAbsDiff(alone[i].logits[s], batch[i].logits[s]))
			}
		}
		for s := range alone[i].act {
			if !slices.Equal(alone[i].act[s], batch[i].act[s]) {
				t.Errorf("row %d capture %d differs", i, s)
			}
		}
	}
	// The adapters matter: row 0 with and without its adapter differ.
	if slices.Equal(alone[0].logits[0], alone[1].logits[0][:len(alone[0].logits[0])]) {
		t.Error("adapter had no effect")
	}
}

// bf16Copy loads tiny-llama-lora with every value rounded to bf16, with
// bf16 copies (lora.Adapter.CompactBF16) when compact is set.
func bf16Copy(t *testing.T, td string, cfg *model.Config, compact bool) *lora.Adapter {
	t.Helper()
	a, _, err := adapters.LoadDir("bf16", filepath.Join(td, "adapters/tiny-llama-lora"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	synth.RoundBF16(a)
	if compact {
		if n := a.CompactBF16(); n == 0 {
			t.Fatal("CompactBF16 set no pair")
		}
	}
	return a
}

// TestBF16Adapter checks an adapter streamed from its bf16 copies against
// the same values in float32: with exact inputs the logits agree bit for
// bit (the down-projection's products are exact either way); with inputs
// rounded to bf16 (the default, as for any product with bf16 weights) they
// stay close.
func TestBF16Adapter(t *testing.T) {
	cases, td, err := refcase.Cases()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if c.Name != "llama_base" && c.Name != "llama_bf16_base" {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			m, err := model.Load(filepath.Join(td, c.Model), model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			f32, b16 := bf16Copy(t, td, m.Config, false), bf16Copy(t, td, m.Config, true)
			for _, exact := range []bool{true, false} {
				ex := cpu.New(m, cpu.Options{ExactBF16Inputs: exact})
				logits := func(a *lora.Adapter) []float32 {
					out, err := ex.Forward(context.Background(), []engine.Row{{Seq: ex.NewSequence(), Tokens: []int32{5, 9, 33, 200, 7}, Adapter: a, Logits: engine.LogitsAll}})
					if err != nil {
						t.Fatal(err)
					}
					return out[0].Logits.Data
				}
				want, got := logits(f32), logits(b16)
				d := refcase.MaxAbsDiff(want, got)
				if exact && !slices.Equal(got, want) {
					t.Errorf("exact inputs: bf16 copies' logits differ from float32's (max |Δ| %g)", d)
				}
				if !exact && (d == 0 || d > 5e-2) {
					t.Errorf("rounded inputs: max |Δ| %g from float32's; want small and non-zero", d)
				}
				t.Logf("exact=%v: max |Δ| %g", exact, d)
			}
		})
	}
}
