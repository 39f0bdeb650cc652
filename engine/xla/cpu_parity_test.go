package xla_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/xla"
	"github.com/sooserve/sooserve/internal/synth"
	"github.com/sooserve/sooserve/training"
)

// TestCPUParity holds the native cpu executor and the GoMLX executor to each
// other on every architecture, with and without adapters: logits and every
// captured activation of random prompts (prefill then decode steps), and the
// SOO loss gradients at every site.
func TestCPUParity(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		model, adapter string
		bf16           bool // the adapter rounded to bf16 and kept so (lora.Adapter.CompactBF16)
	}{
		{"models/tiny-llama", "adapters/tiny-llama-lora", false},
		{"models/tiny-llama", "adapters/tiny-llama-lora", true},
		{"models/tiny-llama-bf16", "adapters/tiny-llama-lora-qv", false},
		{"models/tiny-llama-bf16", "adapters/tiny-llama-lora", true},
		{"models/tiny-qwen2", "adapters/tiny-qwen2-lora", false},
		{"models/tiny-qwen2-f16", "", false},
		{"models/tiny-gemma2", "adapters/tiny-gemma2-lora", false},
	} {
		name := tc.model
		if tc.bf16 {
			name += "/bf16-adapter"
		}
		t.Run(name, func(t *testing.T) {
			xe := executor(t, tc.model)
			var adir *string
			if tc.adapter != "" {
				adir = &tc.adapter
			}
			a := loadAdapter(t, xe, adir)
			if tc.bf16 {
				synth.RoundBF16(a)
				a.CompactBF16()
			}
			cfg := xe.Config()
			m := modelOf(t, tc.model)
			ce := cpu.New(m, cpu.Options{})
			rng := rand.New(rand.NewPCG(1, 2))
			prompt := make([]int32, 9)
			for i := range prompt {
				prompt[i] = int32(rng.IntN(cfg.VocabSize))
			}
			cs, xs := ce.NewSequence(), xe.NewSequence()
			steps := [][]int32{prompt, {17}, {250}}
			for k, toks := range steps {
				row := engine.Row{Tokens: toks, Adapter: a, Logits: engine.LogitsAll, Capture: &engine.Capture{Points: allPoints(cfg.Layers)}}
				row.Seq = cs
				co, err := ce.Forward(ctx, []engine.Row{row})
				if err != nil {
					t.Fatal(err)
				}
				row.Seq = xs
				xo, err := xe.Forward(ctx, []engine.Row{row})
				if err != nil {
					t.Fatal(err)
				}
				if d := maxAbsDiff(co[0].Logits.Data, xo[0].Logits.Data); d > 1e-4 {
					t.Errorf("step %d logits: cpu vs xla max |Δ| %g", k, d)
				}
				for p, act := range co[0].Acts {
					if d := maxAbsDiff(act.Data, xo[0].Acts[p].Data); d > 1e-4 {
						t.Errorf("step %d %s.%d: cpu vs xla max |Δ| %g", k, p.Site, p.Layer, d)
					}
				}
			}
			if a == nil {
				return
			}
			self, other := prompt, append([]int32{5, 6}, prompt[3:]...)
			for _, site := range []engine.Site{engine.AttnOut, engine.MLPOut, engine.ResidPost} {
				for _, pool := range []training.Pooling{training.PoolFull, training.PoolMean, training.PoolLast} {
					name := fmt.Sprintf("%s/%s", site, pool)
					layer := cfg.Layers - 1
					xl, xg, err := xe.SOOLossGrad(ctx, a, self, other, layer, site, string(pool))
					if err != nil {
						t.Fatal(err)
					}
					pt := engine.Point{Layer: layer, Site: site}
					tape, acts, err := ce.ForwardTrain(ctx, a, [][]int32{self, other}, pt, cpu.TrainOptions{})
					if err != nil {
						t.Fatal(err)
					}
					cl, dS, dO, err := training.SOOLoss(acts[0], acts[1], pool)
					if err != nil {
						t.Fatal(err)
					}
					cg := cpu.NewGrad(a)
					if err := tape.Backward(ctx, []engine.Tensor2D{dS, dO}, cg); err != nil {
						t.Fatal(err)
					}
					if math.Abs(cl-xl) > 1e-5*math.Abs(xl) {
						t.Errorf("%s: loss cpu %g xla %g", name, cl, xl)
					}
					for l := range cg.Layers {
						for mod, p := range cg.Layers[l] {
							if p == nil {
								continue
							}
							q := xg.Layers[l][mod]
							for _, pair := range [][2][]float32{{p.A, q.A}, {p.B, q.B}} {
								var scale float64
								for _, v := range pair[1] {
									scale = math.Max(scale, math.Abs(float64(v)))
								}
								if d := maxAbsDiff(pair[0], pair[1]); d > 1e-3*scale+1e-9 {
									t.Errorf("%s layer %d module %d: gradient cpu vs xla max |Δ| %g (scale %g)", name, l, mod, d, scale)
								}
							}
						}
					}
				}
			}
		})
	}
}

func modelOf(t *testing.T, dir string) *model.Model {
	t.Helper()
	m, err := model.Load(filepath.Join(testdata, dir), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestExactBF16InputsParity holds the two executors to each other with
// ExactBF16Inputs on a bf16 model (products over unrounded inputs), and
// checks that the option changes the xla executor's logits.
func TestExactBF16InputsParity(t *testing.T) {
	ctx := context.Background()
	m := modelOf(t, "models/tiny-llama-bf16")
	xe, err := xla.New(m, xla.Options{ExactBF16Inputs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer xe.Close()
	ce := cpu.New(m, cpu.Options{ExactBF16Inputs: true})
	rounded := executor(t, "models/tiny-llama-bf16")
	prompt := []int32{5, 77, 12, 300, 41, 9, 150}
	logits := func(ex engine.Executor) []float32 {
		s := ex.NewSequence()
		defer s.Release()
		o, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: prompt, Logits: engine.LogitsAll}})
		if err != nil {
			t.Fatal(err)
		}
		return o[0].Logits.Data
	}
	xl, cl, rl := logits(xe), logits(ce), logits(rounded)
	if d := maxAbsDiff(cl, xl); d > 1e-4 {
		t.Errorf("exact bf16 inputs: cpu vs xla max |Δ| %g", d)
	}
	if d := maxAbsDiff(rl, xl); d < 1e-3 {
		t.Errorf("exact and rounded bf16 inputs differ by only %g", d)
	}
}
