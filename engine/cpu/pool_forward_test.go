package cpu_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/synth"
)

// TestConcurrentForwardsMatchSequential runs two sequences' steps from two
// goroutines at once on one 2-thread executor (so one step runs on the worker
// pool while the other runs its loops alone) and checks every logit against
// the same steps run one at a time on a 1-thread executor. The model is large
// enough that products split into several chunks.
func TestConcurrentForwardsMatchSequential(t *testing.T) {
	cfg, err := synth.Config("smollm2-135m")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Layers, cfg.VocabSize = 2, 2000
	for _, dt := range []model.DType{model.F32, model.BF16} {
		m := synth.FromConfig(cfg, dt, 7)
		prompts := [][]int32{{1, 50, 900, 13, 7, 1999, 4, 4, 88}, {3, 3, 1500, 42}}
		const steps = 4
		run := func(ex *cpu.Executor, prompt []int32) [][]float32 {
			s := ex.NewSequence()
			defer s.Release()
			var got [][]float32
			toks := prompt
			for range steps {
				out, err := ex.Forward(context.Background(), []engine.Row{{Seq: s, Tokens: toks}})
				if err != nil {
					t.Error(err)
					return nil
				}
				l := out[0].Logits.Data
				got = append(got, slices.Clone(l))
				toks = []int32{int32(slices.Index(l, slices.Max(l)))}
			}
			return got
		}
		seq := cpu.New(m, cpu.Options{Threads: 1})
		want := [][][]float32{run(seq, prompts[0]), run(seq, prompts[1])}
		par := cpu.New(m, cpu.Options{Threads: 2})
		for round := range 3 {
			got := make([][][]float32, 2)
			var wg sync.WaitGroup
			for i := range prompts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got[i] = run(par, prompts[i])
				}()
			}
			wg.Wait()
			for i := range prompts {
				for s := range steps {
					if !slices.Equal(got[i][s], want[i][s]) {
						t.Fatalf("%v round %d: sequence %d step %d differs from the sequential run", dt, round, i, s)
					}
				}
			}
		}
	}
}

// BenchmarkDecodeStep is one decode step (one token per sequence, 8-64
// tokens of context, each row's logits into its own reused buffer) of the
// SmolLM2-135M shape with random weights in huge pages, through
// Executor.Forward, for 1 and 8 sequences; it reports the
// weight bytes streamed per second (a step's bound is the machine's read
// bandwidth, cpu.ReadBandwidth).
func BenchmarkDecodeStep(b *testing.B) {
	for _, dt := range []model.DType{model.F32, model.BF16} {
		cfg, err := synth.Config("smollm2-135m")
		if err != nil {
			b.Fatal(err)
		}
		m := synth.FromConfig(cfg, dt, 7)
		if _, err := m.MoveToHugePages(); err != nil {
			b.Fatal(err)
		}
		for _, batch := range []int{1, 8} {
			b.Run(fmt.Sprintf("%v/batch%d", dt, batch), func(b *testing.B) {
				e := cpu.New(m, cpu.Options{})
				ctx := context.Background()
				rows := make([]engine.Row, batch)
				b.SetBytes(m.Bytes())
				for i := 0; b.Loop(); i++ {
					if i%56 == 0 {
						for r := range rows {
							if rows[r].Seq != nil {
								rows[r].Seq.Release()
							}
							rows[r] = engine.Row{Seq: e.NewSequence(), Tokens: make([]int32, 8), Logits: engine.LogitsNone}
						}
						if _, err := e.Forward(ctx, rows); err != nil {
							b.Fatal(err)
						}
						for r := range rows { // one logits buffer per row, as the scheduler's
							rows[r].Tokens, rows[r].Logits = []int32{int32(r)}, engine.LogitsLast
							rows[r].LogitsBuf = make([]float32, cfg.VocabSize)
						}
					}
					if _, err := e.Forward(ctx, rows); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		m.Close()
	}
}

// BenchmarkPrefill is one prompt's prefill (128 and 2000 tokens, logits of
// the last token only) of the SmolLM2-135M shape with bf16 random weights
// and a 400-token vocabulary, through Executor.Forward on a fresh sequence:
// the 128-token case is soo bench's prefill_128_s; at 2000 tokens the
// attention over the growing cache is about 40% of the time.
func BenchmarkPrefill(b *testing.B) {
	cfg, err := synth.Config("smollm2-135m")
	if err != nil {
		b.Fatal(err)
	}
	cfg.VocabSize = 400
	m := synth.FromConfig(cfg, model.BF16, 7)
	defer m.Close()
	e := cpu.New(m, cpu.Options{MaxContext: 4096})
	for _, n := range []int{128, 2000} {
		b.Run(fmt.Sprintf("bf16/tokens%d", n), func(b *testing.B) {
			toks := make([]int32, n)
			for i := range toks {
				toks[i] = int32(i % cfg.VocabSize)
			}
			ctx := context.Background()
			for b.Loop() {
				s := e.NewSequence()
				if _, err := e.Forward(ctx, []engine.Row{{Seq: s, Tokens: toks}}); err != nil {
					b.Fatal(err)
				}
				s.Release()
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
