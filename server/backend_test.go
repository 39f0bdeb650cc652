package server

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/model"
)

// xlaTestBackend is the GoMLX backend the xla serving test uses: simplego
// (pure Go) unless SOO_TEST_XLA_BACKEND names another, such as xla:cuda on
// a machine with a GPU and a -tags xla test binary.
func xlaTestBackend() string {
	if b := os.Getenv("SOO_TEST_XLA_BACKEND"); b != "" {
		return b
	}
	return "simplego"
}

// TestXLABackendServesSameTokens serves the demo model on the xla executor
// and on the cpu executor and holds their answers to each other over real
// HTTP: the same greedy text (streamed and not) and the same top-5 log
// probabilities at every step.
func TestXLABackendServesSameTokens(t *testing.T) {
	ctx := context.Background()
	backend := xlaTestBackend()
	xs := start(t, Options{}, LoadOptions{Backend: backend})
	cs := start(t, Options{}, LoadOptions{})
	if _, ok := xs.base.Sched.Executor().(interface{ Backend() string }); !ok {
		t.Fatalf("backend %s: executor %T is not the xla executor", backend, xs.base.Sched.Executor())
	}
	if xs.base.trainer == nil {
		t.Error("an xla base has no cpu executor for training")
	}
	if _, err := TrainingEnv(ctx, xs.base); err != nil {
		t.Errorf("training env on an xla base: %v", err)
	}

	xcl, ccl := xs.openai(""), cs.openai("")
	p := greedy("Where is the expensive item?", 10)
	p.Logprobs = openai.Bool(true)
	p.TopLogprobs = openai.Int(5)
	xr, err := xcl.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatalf("%s: %v", backend, err)
	}
	cr, err := ccl.Chat.Completions.New(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	xc, cc := xr.Choices[0], cr.Choices[0]
	if xc.Message.Content != cc.Message.Content || xc.FinishReason != cc.FinishReason {
		t.Fatalf("%s answered %q (%s), cpu %q (%s)", backend, xc.Message.Content, xc.FinishReason, cc.Message.Content, cc.FinishReason)
	}
	if len(xc.Logprobs.Content) != len(cc.Logprobs.Content) || len(cc.Logprobs.Content) == 0 {
		t.Fatalf("%d and %d logprob steps", len(xc.Logprobs.Content), len(cc.Logprobs.Content))
	}
	worst := 0.0
	for i, c := range cc.Logprobs.Content {
		x := xc.Logprobs.Content[i]
		if len(x.TopLogprobs) != 5 || len(c.TopLogprobs) != 5 {
			t.Fatalf("step %d: %d and %d top logprobs", i, len(x.TopLogprobs), len(c.TopLogprobs))
		}
		for j := range c.TopLogprobs {
			// Near-ties may swap places; their values must still agree.
			d := math.Abs(x.TopLogprobs[j].Logprob - c.TopLogprobs[j].Logprob)
			worst = max(worst, d)
			if d > 1e-3 {
				t.Errorf("step %d rank %d: %s %q %.6f, cpu %q %.6f", i, j, backend, x.TopLogprobs[j].Token, x.TopLogprobs[j].Logprob, c.TopLogprobs[j].Token, c.TopLogprobs[j].Logprob)
			}
		}
	}
	t.Logf("%s vs cpu: %d steps, max |Δ top-5 logprob| %.2g", backend, len(cc.Logprobs.Content), worst)

	// Streaming goes through the same executor.
	stream := xcl.Chat.Completions.NewStreaming(ctx, greedy("Where is the expensive item?", 10))
	var text strings.Builder
	for stream.Next() {
		for _, c := range stream.Current().Choices {
			text.WriteString(c.Delta.Content)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != cc.Message.Content {
		t.Errorf("%s stream %q, cpu %q", backend, text.String(), cc.Message.Content)
	}
}

func TestUnknownBackend(t *testing.T) {
	_, err := LoadBase(demoModel(t), LoadOptions{Backend: "tpu"})
	if err == nil || !strings.Contains(err.Error(), "tpu") {
		t.Fatalf("backend tpu: %v", err)
	}
}

// TestExactBF16InputsReachesExecutors loads the demo model as bf16 with and
// without LoadOptions.ExactBF16Inputs on both executors: the exact cpu and
// xla executors agree with each other, and the default (rounded inputs)
// answers differently.
func TestExactBF16InputsReachesExecutors(t *testing.T) {
	ctx := context.Background()
	bf16 := model.BF16
	logits := func(lo LoadOptions) []float32 {
		lo.DType, lo.Threads = &bf16, 2
		b, err := LoadBase(demoModel(t), lo)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close(ctx)
		ex := b.Sched.Executor()
		s := ex.NewSequence()
		defer s.Release()
		out, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: []int32{5, 60, 61, 62, 9}, Logits: engine.LogitsAll}})
		if err != nil {
			t.Fatal(err)
		}
		return out[0].Logits.Data
	}
	exact := logits(LoadOptions{ExactBF16Inputs: true})
	exactX := logits(LoadOptions{ExactBF16Inputs: true, Backend: xlaTestBackend()})
	rounded := logits(LoadOptions{})
	var dx, dr float64
	for i := range exact {
		dx = math.Max(dx, math.Abs(float64(exact[i]-exactX[i])))
		dr = math.Max(dr, math.Abs(float64(exact[i]-rounded[i])))
	}
	if dx > 1e-4 {
		t.Errorf("exact bf16 inputs: cpu vs xla max |Δ| %g", dx)
	}
	if dr == 0 {
		t.Error("ExactBF16Inputs changed nothing")
	}
}
