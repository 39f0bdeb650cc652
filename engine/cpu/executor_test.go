package cpu_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
)

func tinyLlama(t *testing.T, opts cpu.Options) *cpu.Executor {
	t.Helper()
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(td, "models/tiny-llama"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return cpu.New(m, opts)
}

func TestForwardRejectsBadRows(t *testing.T) {
	ex := tinyLlama(t, cpu.Options{MaxContext: 16})
	other := tinyLlama(t, cpu.Options{})
	ctx := context.Background()
	s := ex.NewSequence()
	released := ex.NewSequence()
	released.Release()
	for _, tc := range []struct {
		name string
		rows []engine.Row
		want string
	}{
		{"empty", []engine.Row{{Seq: s}}, "no tokens"},
		{"vocab", []engine.Row{{Seq: s, Tokens: []int32{320}}}, "outside the vocabulary"},
		{"negative", []engine.Row{{Seq: s, Tokens: []int32{-1}}}, "outside the vocabulary"},
		{"context", []engine.Row{{Seq: s, Tokens: make([]int32, 17)}}, "exceed the context of 16"},
		{"twice", []engine.Row{{Seq: s, Tokens: []int32{1}}, {Seq: s, Tokens: []int32{2}}}, "twice"},
		{"foreign", []engine.Row{{Seq: other.NewSequence(), Tokens: []int32{1}}}, "does not belong"},
		{"released", []engine.Row{{Seq: released, Tokens: []int32{1}}}, "released"},
		{"layer", []engine.Row{{Seq: s, Tokens: []int32{1}, Capture: &engine.Capture{Points: []engine.Point{{Layer: 3}}}}}, "out of range"},
		{"range", []engine.Row{{Seq: s, Tokens: []int32{1, 2}, Capture: &engine.Capture{Points: []engine.Point{{}}, From: 2}}}, "capture range"},
	} {
		_, err := ex.Forward(ctx, tc.rows)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	if s.Len() != 0 {
		t.Errorf("rejected steps changed the sequence: len %d", s.Len())
	}
}

func TestCaptureOnlyStepSkipsUpperLayers(t *testing.T) {
	ex := tinyLlama(t, cpu.Options{})
	ctx := context.Background()
	pt := engine.Point{Layer: 0, Site: engine.MLPOut}
	full, short := ex.NewSequence(), ex.NewSequence()
	toks := []int32{4, 8, 15, 16, 23, 42}
	a, err := ex.Forward(ctx, []engine.Row{{Seq: full, Tokens: toks, Capture: &engine.Capture{Points: []engine.Point{pt}, From: 2, To: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ex.Forward(ctx, []engine.Row{{Seq: short, Tokens: toks, Logits: engine.LogitsNone, Capture: &engine.Capture{Points: []engine.Point{pt}, From: 2, To: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := b[0].Acts[pt]; got.Rows != 3 || !slices.Equal(got.Data, a[0].Acts[pt].Data) || b[0].Logits.Data != nil {
		t.Errorf("capture-only step: rows %d, logits %v", got.Rows, b[0].Logits.Data != nil)
	}
	_, err = ex.Forward(ctx, []engine.Row{{Seq: short, Tokens: []int32{1}}})
	if !errors.Is(err, cpu.ErrPartialSequence) {
		t.Errorf("extending a partial sequence: %v", err)
	}
}

func TestTruncateReusesPrefix(t *testing.T) {
	ex := tinyLlama(t, cpu.Options{})
	ctx := context.Background()
	s := ex.NewSequence()
	if _, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: []int32{1, 2, 3, 4, 5}}}); err != nil {
		t.Fatal(err)
	}
	s.(*cpu.Sequence).Truncate(3)
	got, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: []int32{9, 9}}})
	if err != nil {
		t.Fatal(err)
	}
	want, err := ex.Forward(ctx, []engine.Row{{Seq: ex.NewSequence(), Tokens: []int32{1, 2, 3, 9, 9}}})
	if err != nil {
		t.Fatal(err)
	}
	if d := refcase.MaxAbsDiff(got[0].Logits.Data, want[0].Logits.Data); d > 1e-5 {
		t.Errorf("truncated prefix reuse differs by %g", d)
	}
}

func TestForwardHonoursCancel(t *testing.T) {
	ex := tinyLlama(t, cpu.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ex.Forward(ctx, []engine.Row{{Seq: ex.NewSequence(), Tokens: []int32{1}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled forward: %v", err)
	}
}

// TestLongDecodeMatchesPrefill decodes past the KV cache's first allocation
// (it grows as tokens arrive), one token per step and in uneven chunks, and
// holds the logits to one prefill of the whole sequence, bit for bit: on
// grouped-query attention, a sliding window with soft-capping (gemma2) and
// bf16 weights. (A prefill attends a few tokens per task, a decode step one.)
func TestLongDecodeMatchesPrefill(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"tiny-llama", "tiny-llama-bf16", "tiny-qwen2", "tiny-gemma2"} {
		t.Run(dir, func(t *testing.T) {
			m, err := model.Load(filepath.Join(td, "models", dir), model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ex := cpu.New(m, cpu.Options{Threads: 2})
			ctx := context.Background()
			n := min(300, ex.MaxContext())
			toks := make([]int32, n)
			for i := range toks {
				toks[i] = int32((i*7 + 3) % ex.Config().VocabSize)
			}
			want, err := ex.Forward(ctx, []engine.Row{{Seq: ex.NewSequence(), Tokens: toks, Logits: engine.LogitsAll}})
			if err != nil {
				t.Fatal(err)
			}
			V := ex.Config().VocabSize
			for _, chunks := range [][]int{{n - 40, 1}, {100, 150, 7, 1}, {1, 2, 3, 5}} {
				s := ex.NewSequence()
				pos := 0
				for i := 0; pos < n; i++ {
					c := chunks[min(i, len(chunks)-1)]
					c = min(c, n-pos)
					got, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: toks[pos : pos+c], Logits: engine.LogitsAll}})
					if err != nil {
						t.Fatal(err)
					}
					if d := refcase.MaxAbsDiff(got[0].Logits.Data, want[0].Logits.Data[pos*V:(pos+c)*V]); d != 0 ||
						!slices.Equal(got[0].Logits.Data, want[0].Logits.Data[pos*V:(pos+c)*V]) {
						t.Fatalf("chunks %v: tokens [%d,%d) differ from the prefill by %g", chunks, pos, pos+c, d)
					}
					pos += c
				}
				s.Release()
			}
		})
	}
}

// TestLogitsBuf checks that a row's own logits buffer receives its logits
// (the output aliases it), that the logits are those of a run without
// buffers, step after step with reused scratch, and that a buffer too small
// or absent gets fresh memory.
func TestLogitsBuf(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	// tiny-gemma2 soft-caps its logits: the cap must reach the buffers too.
	for _, dir := range []string{"models/tiny-llama", "models/tiny-gemma2"} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			m, err := model.Load(filepath.Join(td, dir), model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			logitsBuf(t, cpu.New(m, cpu.Options{}))
		})
	}
}

func logitsBuf(t *testing.T, ex *cpu.Executor) {
	V := ex.Config().VocabSize
	ctx := context.Background()
	prompts := [][]int32{{1, 2, 3}, {4, 5}, {6}}
	// Reference: no buffers.
	var want [][][]float32 // [step][row]
	seqs := []engine.Sequence{ex.NewSequence(), ex.NewSequence(), ex.NewSequence()}
	rows := make([]engine.Row, 3)
	for i := range rows {
		rows[i] = engine.Row{Seq: seqs[i], Tokens: prompts[i]}
	}
	for step := 0; step < 4; step++ {
		outs, err := ex.Forward(ctx, rows)
		if err != nil {
			t.Fatal(err)
		}
		var got [][]float32
		for i := range rows {
			got = append(got, slices.Clone(outs[i].Logits.Data))
			rows[i].Tokens = []int32{int32(7 + step + i)}
		}
		want = append(want, got)
	}
	// Row 0 has a buffer, row 1 one too small, row 2 none.
	bufs := [][]float32{make([]float32, V+5), make([]float32, V-1), nil}
	seqs = []engine.Sequence{ex.NewSequence(), ex.NewSequence(), ex.NewSequence()}
	for i := range rows {
		rows[i] = engine.Row{Seq: seqs[i], Tokens: prompts[i], LogitsBuf: bufs[i]}
	}
	for step := 0; step < 4; step++ {
		outs, err := ex.Forward(ctx, rows)
		if err != nil {
			t.Fatal(err)
		}
		for i := range rows {
			got := outs[i].Logits.Data
			if !slices.Equal(got, want[step][i]) {
				t.Fatalf("step %d row %d: logits differ from the run without buffers", step, i)
			}
			aliases := &got[0] == &bufs[0][0]
			if (i == 0) != aliases {
				t.Errorf("step %d row %d: output aliases the row's buffer: %v", step, i, aliases)
			}
			rows[i].Tokens = []int32{int32(7 + step + i)}
		}
	}
}

// TestKVGrowthBounded checks that a sequence's cache never gets more room
// than the executor's context, however it grows, and that its contents
// survive each regrowth (the decode after a long prompt matches a prefill).
func TestKVGrowthBounded(t *testing.T) {
	ex := tinyLlama(t, cpu.Options{MaxContext: 100})
	ctx := context.Background()
	prompt := make([]int32, 90)
	for i := range prompt {
		prompt[i] = int32(1 + i%200)
	}
	s := ex.NewSequence()
	if _, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: prompt[:80], Logits: engine.LogitsNone}}); err != nil {
		t.Fatal(err)
	}
	var last []float32
	for i := 80; i < 90; i++ {
		out, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: prompt[i : i+1]}})
		if err != nil {
			t.Fatal(err)
		}
		last = out[0].Logits.Data
	}
	if v, k := cpu.KVCapacity(s); v > 100 || k > 112 {
		t.Errorf("caches have room for %d (V) and %d (K, in blocks of 16) positions, context is 100", v, k)
	}
	whole, err := ex.Forward(ctx, []engine.Row{{Seq: ex.NewSequence(), Tokens: prompt}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(last, whole[0].Logits.Data) {
		t.Error("decoding after regrowth differs from one prefill")
	}
}

// TestExactBF16Inputs checks Options.ExactBF16Inputs: a bf16 model's logits
// and activations (batched rows, prefill and decode) equal, bit for bit,
// those of the same weights stored f32, and differ from the default's, whose
// products read their inputs rounded to bf16.
func TestExactBF16Inputs(t *testing.T) {
	td, err := refcase.TestData()
	if err != nil {
		t.Fatal(err)
	}
	load := func(dt *model.DType) *model.Model {
		m, err := model.Load(filepath.Join(td, "models/tiny-llama-bf16"), model.LoadOptions{DType: dt})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	f32 := model.F32
	bf, wide := load(nil), load(&f32)
	if bf.Layers[0].Proj[model.Q].W.DType != model.BF16 || wide.Layers[0].Proj[model.Q].W.DType != model.F32 {
		t.Fatal("the test needs bf16 weights and their f32 copy")
	}
	run := func(ex *cpu.Executor) [][]float32 {
		ctx := context.Background()
		seqs := []engine.Sequence{ex.NewSequence(), ex.NewSequence()}
		var out [][]float32
		cap := &engine.Capture{Points: []engine.Point{{Layer: 1, Site: engine.MLPOut}}}
		for _, toks := range [][][]int32{{{5, 9, 33, 200, 7, 8, 9, 10, 11}, {250, 3}}, {{1}, {2}}, {{40}, {41}}} {
			rows := make([]engine.Row, len(seqs))
			for i := range rows {
				rows[i] = engine.Row{Seq: seqs[i], Tokens: toks[i], Logits: engine.LogitsAll, Capture: cap}
			}
			o, err := ex.Forward(ctx, rows)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range o {
				out = append(out, r.Logits.Data, r.Acts[cap.Points[0]].Data)
			}
		}
		return out
	}
	exact, want, rounded := run(cpu.New(bf, cpu.Options{ExactBF16Inputs: true})), run(cpu.New(wide, cpu.Options{})), run(cpu.New(bf, cpu.Options{}))
	for i := range want {
		if !slices.Equal(exact[i], want[i]) {
			t.Errorf("output %d: exact bf16 inputs differ from the f32 weights' (max |Δ| %g)", i, refcase.MaxAbsDiff(exact[i], want[i]))
		}
	}
	if slices.Equal(exact[0], rounded[0]) {
		t.Error("rounded and exact inputs gave the same logits")
	}
}
