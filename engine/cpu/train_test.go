package cpu_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
	"github.com/sooserve/sooserve/training"
)

// sooLossGrad runs the SOO loss for one pair through ForwardTrain/Backward.
func sooLossGrad(t testing.TB, ex *cpu.Executor, a *lora.Adapter, self, other []int32, pt engine.Point, pool training.Pooling) (float64, *lora.Adapter) {
	ctx := context.Background()
	tape, acts, err := ex.ForwardTrain(ctx, a, [][]int32{self, other}, pt, cpu.TrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	loss, dS, dO, err := training.SOOLoss(acts[0], acts[1], pool)
	if err != nil {
		t.Fatal(err)
	}
	g := cpu.NewGrad(a)
	if err := tape.Backward(ctx, []engine.Tensor2D{dS, dO}, g); err != nil {
		t.Fatal(err)
	}
	return loss, g
}

// TestSOOGradMatchesPyTorch compares the LoRA gradients of the SOO loss with
// the PyTorch reference's float64 autograd for every pooling.
func TestSOOGradMatchesPyTorch(t *testing.T) {
	ref, td, err := refcase.LoadSOOGrad()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(td, ref.Model), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, _, err := adapters.LoadDir("a", filepath.Join(td, ref.Adapter), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{})
	for name, pr := range ref.Poolings {
		t.Run(name, func(t *testing.T) {
			loss, g := sooLossGrad(t, ex, a, ref.SelfIDs, ref.OtherIDs, engine.Point{Layer: ref.Layer, Site: engine.AttnOut}, training.Pooling(name))
			if rel := math.Abs(loss-pr.Loss) / pr.Loss; rel > 1e-5 {
				t.Errorf("loss %g, want %g (rel %g)", loss, pr.Loss, rel)
			}
			want, err := refcase.LoadTensors(td, pr.Tensors)
			if err != nil {
				t.Fatal(err)
			}
			checked := 0
			for key, w := range want {
				if !strings.HasPrefix(key, "grad.") {
					continue
				}
				got := gradTensor(t, g, strings.TrimPrefix(key, "grad."))
				if err := relClose(got, w, 1e-3); err != nil {
					t.Errorf("%s: %v", key, err)
				}
				checked++
			}
			if checked != 42 {
				t.Errorf("checked %d gradient tensors, want 42", checked)
			}
		})
	}
}

// gradTensor finds the gradient for a PEFT key such as
// base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight.
func gradTensor(t testing.TB, g *lora.Adapter, key string) []float32 {
	var layer int
	var path, ab string
	parts := strings.Split(key, ".")
	// base_model model model layers N self_attn q_proj lora_A weight
	fmt.Sscanf(parts[4], "%d", &layer)
	path, ab = parts[6], parts[7]
	mod, ok := model.ParseModule(path)
	if !ok {
		t.Fatalf("bad key %s", key)
	}
	p := g.Get(layer, mod)
	if p == nil {
		t.Fatalf("no gradient for %s", key)
	}
	if ab == "lora_A" {
		return p.A
	}
	return p.B
}

// relClose checks ‖got-want‖∞ ≤ tol·max(‖want‖∞, tiny).
func relClose(got, want []float32, tol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("length %d, want %d", len(got), len(want))
	}
	var scale float64
	for _, w := range want {
		scale = math.Max(scale, math.Abs(float64(w)))
	}
	d := refcase.MaxAbsDiff(got, want)
	if scale == 0 {
		if d > 1e-12 {
			return fmt.Errorf("want exactly zero, max |got| %g", d)
		}
		return nil
	}
	if d > tol*scale {
		return fmt.Errorf("max |Δ| %g exceeds %g × max |want| %g", d, tol, scale)
	}
	return nil
}

// TestSOOGradFiniteDifferences checks the backward pass by central finite
// differences on architectures and sites the PyTorch fixture does not cover:
// gemma2 (soft-capping, sliding window, sandwich norms, GeGLU) through
// resid_post, qwen2 (biases) through mlp_out, and llama with rsLoRA.
func TestSOOGradFiniteDifferences(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		model, adapter string
		pt             engine.Point
		pool           training.Pooling
		softcap        float32 // overrides the attention soft-cap when set
	}{
		{"models/tiny-gemma2", "adapters/tiny-gemma2-lora", engine.Point{Layer: 2, Site: engine.ResidPost}, training.PoolMean, 0},
		// A cap of 0.5 saturates tanh, so its derivative matters.
		{"models/tiny-gemma2", "adapters/tiny-gemma2-lora", engine.Point{Layer: 1, Site: engine.AttnOut}, training.PoolFull, 0.5},
		{"models/tiny-qwen2", "adapters/tiny-qwen2-lora", engine.Point{Layer: 1, Site: engine.MLPOut}, training.PoolFull, 0},
		{"models/tiny-llama", "adapters/tiny-llama-lora-qv", engine.Point{Layer: 2, Site: engine.AttnOut}, training.PoolLast, 0},
	} {
		t.Run(fmt.Sprintf("%s/%s/cap%g", filepath.Base(tc.model), tc.pt.Site, tc.softcap), func(t *testing.T) {
			m, err := model.Load(filepath.Join(td, tc.model), model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if tc.softcap != 0 {
				m.Config.AttnSoftcap = tc.softcap
			}
			a, _, err := adapters.LoadDir("a", filepath.Join(td, tc.adapter), m.Config)
			if err != nil {
				t.Fatal(err)
			}
			ex := cpu.New(m, cpu.Options{})
			self := []int32{11, 42, 7, 99, 150, 3, 260, 18, 77, 5}
			other := []int32{11, 42, 8, 99, 151, 64, 260, 19}
			_, g := sooLossGrad(t, ex, a, self, other, tc.pt, tc.pool)
			lossAt := func() float64 {
				_, acts, err := ex.ForwardTrain(context.Background(), a, [][]int32{self, other}, tc.pt, cpu.TrainOptions{})
				if err != nil {
					t.Fatal(err)
				}
				l, _, _, _ := training.SOOLoss(acts[0], acts[1], tc.pool)
				return l
			}
			checked := 0
			for l := range a.Layers {
				for mod, p := range a.Layers[l] {
					if p == nil {
						continue
					}
					gp := g.Layers[l][mod]
					for _, which := range []struct {
						w, gw []float32
					}{{p.A, gp.A}, {p.B, gp.B}} {
						i := argmaxAbs(which.gw)
						if math.Abs(float64(which.gw[i])) < 1e-4 {
							continue
						}
						orig := which.w[i]
						const h = 1e-2
						which.w[i] = orig + h
						up := lossAt()
						which.w[i] = orig - h
						down := lossAt()
						which.w[i] = orig
						fd := (up - down) / (2 * h)
						if got := float64(which.gw[i]); math.Abs(got-fd) > 2e-2*math.Abs(fd)+1e-6 {
							t.Errorf("layer %d %s [%d]: backward %g, finite difference %g", l, model.Module(mod), i, got, fd)
						}
						checked++
					}
				}
			}
			if checked < 6 {
				t.Errorf("only %d parameters had gradients to check", checked)
			}
		})
	}
}

func argmaxAbs(v []float32) int {
	best := 0
	for i, x := range v {
		if math.Abs(float64(x)) > math.Abs(float64(v[best])) {
			best = i
		}
	}
	return best
}

// TestDropoutIsSeededAndDifferentiated checks that dropout masks depend on
// the seed only, and that the gradient with dropout matches finite
// differences under the same mask.
func TestDropoutIsSeededAndDifferentiated(t *testing.T) {
	td, _ := refcase.TestData()
	m, err := model.Load(filepath.Join(td, "models/tiny-llama"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, _, err := adapters.LoadDir("a", filepath.Join(td, "adapters/tiny-llama-lora"), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	ex := cpu.New(m, cpu.Options{})
	ctx := context.Background()
	pt := engine.Point{Layer: 1, Site: engine.AttnOut}
	seqs := [][]int32{{1, 2, 3, 4, 5}, {1, 2, 9, 4}}
	run := func(seed uint64) (float64, *lora.Adapter) {
		tape, acts, err := ex.ForwardTrain(ctx, a, seqs, pt, cpu.TrainOptions{Dropout: 0.3, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		l, dS, dO, _ := training.SOOLoss(acts[0], acts[1], training.PoolFull)
		g := cpu.NewGrad(a)
		if err := tape.Backward(ctx, []engine.Tensor2D{dS, dO}, g); err != nil {
			t.Fatal(err)
		}
		return l, g
	}
	l1, g := run(7)
	l2, _ := run(7)
	l3, _ := run(8)
	if l1 != l2 || l1 == l3 {
		t.Fatalf("losses %g %g %g: same seed must repeat, another seed must differ", l1, l2, l3)
	}
	p, gp := a.Layers[0][model.Q], g.Layers[0][model.Q]
	i := argmaxAbs(gp.A)
	orig := p.A[i]
	const h = 1e-2
	p.A[i] = orig + h
	up, _ := run(7)
	p.A[i] = orig - h
	down, _ := run(7)
	p.A[i] = orig
	if fd := (up - down) / (2 * h); math.Abs(float64(gp.A[i])-fd) > 2e-2*math.Abs(fd) {
		t.Errorf("dropout gradient %g, finite difference %g", gp.A[i], fd)
	}
}

// TestTrainPassIsExact checks that a training pass is bit-for-bit
// repeatable: with a fresh or a reused Workspace (whose buffers hold the
// previous pass's values), with one thread or several, and with sequences of
// another length in between (so buffers are reused at other sizes).
func TestTrainPassIsExact(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(td, "models/tiny-gemma2"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, _, err := adapters.LoadDir("a", filepath.Join(td, "adapters/tiny-gemma2-lora"), m.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pt := engine.Point{Layer: 2, Site: engine.ResidPost}
	long := [][]int32{{11, 42, 7, 99, 150, 3, 260, 18, 77, 5, 9, 12, 13}, {11, 42, 8, 99, 151, 64, 260, 19}}
	short := [][]int32{{1, 2, 3}, {4, 5, 6, 7}}
	run := func(ex *cpu.Executor, ws *cpu.Workspace, seqs [][]int32) (float64, *lora.Adapter) {
		tape, acts, err := ex.ForwardTrain(ctx, a, seqs, pt, cpu.TrainOptions{Dropout: 0.2, Seed: 3, Workspace: ws})
		if err != nil {
			t.Fatal(err)
		}
		l, dS, dO, err := training.SOOLoss(acts[0], acts[1], training.PoolMean)
		if err != nil {
			t.Fatal(err)
		}
		g := cpu.NewGrad(a)
		if err := tape.Backward(ctx, []engine.Tensor2D{dS, dO}, g); err != nil {
			t.Fatal(err)
		}
		return l, g
	}
	one, two := cpu.New(m, cpu.Options{Threads: 1}), cpu.New(m, cpu.Options{Threads: 2})
	wantLoss, want := run(one, nil, long)
	var ws cpu.Workspace
	for i, c := range []struct {
		ex *cpu.Executor
		ws *cpu.Workspace
	}{{two, nil}, {two, &ws}, {one, &ws}, {two, &ws}} {
		run(c.ex, c.ws, short)
		loss, g := run(c.ex, c.ws, long)
		if loss != wantLoss {
			t.Errorf("run %d: loss %v, want %v", i, loss, wantLoss)
		}
		for l := range g.Layers {
			for mod, p := range g.Layers[l] {
				if p == nil {
					continue
				}
				w := want.Layers[l][mod]
				if d := refcase.MaxAbsDiff(p.A, w.A) + refcase.MaxAbsDiff(p.B, w.B); d != 0 {
					t.Errorf("run %d: layer %d %s: gradient differs by %g", i, l, model.Module(mod), d)
				}
			}
		}
	}
}
