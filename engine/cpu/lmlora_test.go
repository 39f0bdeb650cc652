package cpu_test

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// lmLoRAAdapters names each lm_grad case's model's test adapter.
var lmLoRAAdapters = map[string]string{
	"models/tiny-llama":  "adapters/tiny-llama-lora",
	"models/tiny-qwen2":  "adapters/tiny-qwen2-lora",
	"models/tiny-gemma2": "adapters/tiny-gemma2-lora",
}

func lmLoRA(t testing.TB, ex *cpu.Executor, a *lora.Adapter, b cpu.LMBatch, opts cpu.LMLoRAOptions, withGrad bool) (float64, *lora.Adapter) {
	t.Helper()
	var g *lora.Adapter
	if withGrad {
		g = cpu.NewGrad(a)
	}
	res, err := ex.LMLossGradLoRA(context.Background(), a, b, g, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res.Loss, g
}

// TestLMLoRAGradMatchesFullParameterPath checks the LoRA gradient of the LM
// loss against an independent path: the full-parameter gradient dW' of
// LMLossGrad on the model with the adapter merged (W' = W + s·B·A), through
// the chain rule dB = s·dW'·Aᵀ and dA = s·Bᵀ·dW'; the losses must agree too.
func TestLMLoRAGradMatchesFullParameterPath(t *testing.T) {
	cases, td := loadLMCases(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			m := writableModel(t, filepath.Join(td, c.Model))
			a, _, err := adapters.LoadDir("a", filepath.Join(td, lmLoRAAdapters[c.Model]), m.Config)
			if err != nil {
				t.Fatal(err)
			}
			b := c.batch()
			loss, g := lmLoRA(t, cpu.New(m, cpu.Options{}), a, b, cpu.LMLoRAOptions{}, true)
			// Merge the adapter into the base weights.
			checked := 0
			for l := range a.Layers {
				for mod, p := range a.Layers[l] {
					if p == nil {
						continue
					}
					W := m.Layers[l].Proj[mod].W.F32
					for o := range p.Out {
						for i := range p.In {
							var s float64
							for r := range p.R {
								s += float64(p.B[o*p.R+r]) * float64(p.A[r*p.In+i])
							}
							W[o*p.In+i] += float32(float64(p.Scale) * s)
						}
					}
				}
			}
			res, full := lmGrad(t, cpu.New(m, cpu.Options{}), b, cpu.LMOptions{})
			if math.Abs(res.Loss-loss) > 1e-5*math.Abs(loss) {
				t.Errorf("loss with the adapter %.8g, with it merged %.8g", loss, res.Loss)
			}
			for l := range a.Layers {
				for mod, p := range a.Layers[l] {
					if p == nil {
						continue
					}
					dW := full.Layers[l].W[mod]
					wantA, wantB := make([]float32, len(p.A)), make([]float32, len(p.B))
					for o := range p.Out {
						for r := range p.R {
							var s float64
							for i := range p.In {
								s += float64(dW[o*p.In+i]) * float64(p.A[r*p.In+i])
							}
							wantB[o*p.R+r] = float32(float64(p.Scale) * s)
						}
					}
					for r := range p.R {
						for i := range p.In {
							var s float64
							for o := range p.Out {
								s += float64(p.B[o*p.R+r]) * float64(dW[o*p.In+i])
							}
							wantA[r*p.In+i] = float32(float64(p.Scale) * s)
						}
					}
					gp := g.Layers[l][mod]
					if err := relClose(gp.A, wantA, 2e-3); err != nil {
						t.Errorf("layer %d %s dA: %v", l, model.Module(mod), err)
					}
					if err := relClose(gp.B, wantB, 2e-3); err != nil {
						t.Errorf("layer %d %s dB: %v", l, model.Module(mod), err)
					}
					checked++
				}
			}
			if checked < 4 {
				t.Errorf("only %d pairs checked", checked)
			}
		})
	}
}

// TestLMLoRAGradFiniteDifferences checks the LoRA gradient of the LM loss by
// central finite differences at the largest entry of every A and B, with
// and without dropout (same seed for every pass).
func TestLMLoRAGradFiniteDifferences(t *testing.T) {
	cases, td := loadLMCases(t)
	for _, c := range cases {
		for _, drop := range []float64{0, 0.3} {
			t.Run(c.Name, func(t *testing.T) {
				m := writableModel(t, filepath.Join(td, c.Model))
				a, _, err := adapters.LoadDir("a", filepath.Join(td, lmLoRAAdapters[c.Model]), m.Config)
				if err != nil {
					t.Fatal(err)
				}
				ex := cpu.New(m, cpu.Options{})
				b := c.batch()
				opts := cpu.LMLoRAOptions{Dropout: drop, Seed: 5}
				_, g := lmLoRA(t, ex, a, b, opts, true)
				checked := 0
				for l := range a.Layers {
					for mod, p := range a.Layers[l] {
						if p == nil {
							continue
						}
						gp := g.Layers[l][mod]
						for _, w := range []struct{ w, gw []float32 }{{p.A, gp.A}, {p.B, gp.B}} {
							i := argmaxAbs(w.gw)
							if math.Abs(float64(w.gw[i])) < 1e-4 {
								continue
							}
							orig := w.w[i]
							const h = 1e-2
							w.w[i] = orig + h
							up, _ := lmLoRA(t, ex, a, b, opts, false)
							w.w[i] = orig - h
							down, _ := lmLoRA(t, ex, a, b, opts, false)
							w.w[i] = orig
							fd := (up - down) / (2 * h)
							if got := float64(w.gw[i]); math.Abs(got-fd) > 2e-2*math.Abs(fd)+1e-5 {
								t.Errorf("dropout %g layer %d %s [%d]: backward %g, finite difference %g", drop, l, model.Module(mod), i, got, fd)
							}
							checked++
						}
					}
				}
				if checked < 6 {
					t.Errorf("only %d entries had gradients to check", checked)
				}
			})
		}
	}
}

// TestLMLoRADropoutAndRefusals checks that the dropout masks follow the
// seed, that a zero adapter gives the base model's loss, that the loss
// alone equals the loss of a pass with gradients, and the refusals.
func TestLMLoRADropoutAndRefusals(t *testing.T) {
	cases, td := loadLMCases(t)
	c := cases[0]
	m := writableModel(t, filepath.Join(td, c.Model))
	a, _, err := adapters.LoadDir("a", filepath.Join(td, lmLoRAAdapters[c.Model]), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{})
	b := c.batch()
	l1, g1 := lmLoRA(t, ex, a, b, cpu.LMLoRAOptions{Dropout: 0.3, Seed: 1}, true)
	l2, g2 := lmLoRA(t, ex, a, b, cpu.LMLoRAOptions{Dropout: 0.3, Seed: 1, Workspace: new(cpu.Workspace)}, true)
	l3, _ := lmLoRA(t, ex, a, b, cpu.LMLoRAOptions{Dropout: 0.3, Seed: 2}, false)
	l4, _ := lmLoRA(t, ex, a, b, cpu.LMLoRAOptions{Dropout: 0.3, Seed: 1}, false)
	if l1 != l2 || l1 != l4 || l1 == l3 {
		t.Errorf("losses %g %g %g %g: the same seed must repeat exactly, another must differ", l1, l2, l4, l3)
	}
	for l := range g1.Layers {
		for mod, p := range g1.Layers[l] {
			if p == nil {
				continue
			}
			if relClose(p.A, g2.Layers[l][mod].A, 0) != nil || relClose(p.B, g2.Layers[l][mod].B, 0) != nil {
				t.Errorf("layer %d %s: gradients differ between two passes with the same seed", l, model.Module(mod))
			}
		}
	}
	zero := a.ZerosLike()
	lz, _ := lmLoRA(t, ex, zero, b, cpu.LMLoRAOptions{}, true)
	if base := lmLoss(t, ex, b); math.Abs(lz-base) > 1e-6*base {
		t.Errorf("zero adapter loss %g, base model %g", lz, base)
	}
	ctx := context.Background()
	if _, err := ex.LMLossGradLoRA(ctx, nil, b, cpu.NewGrad(a), cpu.LMLoRAOptions{}); err == nil {
		t.Error("a gradient without an adapter was accepted")
	}
	if _, err := ex.LMLossGradLoRA(ctx, a, b, nil, cpu.LMLoRAOptions{Dropout: 1}); err == nil {
		t.Error("dropout 1 was accepted")
	}
	other := a.ZerosLike()
	for l := range other.Layers {
		other.Layers[l] = [model.NumModules]*lora.Pair{}
	}
	if _, err := ex.LMLossGradLoRA(ctx, a, b, other, cpu.LMLoRAOptions{}); err == nil {
		t.Error("a gradient shaped unlike the adapter was accepted")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ex.LMLossGradLoRA(cctx, a, b, cpu.NewGrad(a), cpu.LMLoRAOptions{}); err == nil {
		t.Error("a cancelled context was not reported")
	}
}
