package sched

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// brokenAdapter returns an adapter for cfg whose q_proj and v_proj updates
// overflow float32 (every weight 1e30), built in memory: no upload or load
// path accepts such an adapter, but a numerically broken model gives the
// same NaN logits.
func brokenAdapter(cfg *model.Config) *lora.Adapter {
	const r = 2
	a := &lora.Adapter{Name: "broken", Rank: r, Alpha: r, Modules: []model.Module{model.Q, model.V},
		Layers: make([][model.NumModules]*lora.Pair, cfg.Layers)}
	for l := range a.Layers {
		for _, m := range a.Modules {
			out, in := cfg.Shape(m)
			p := &lora.Pair{R: r, In: in, Out: out, Scale: 1, A: make([]float32, r*in), B: make([]float32, out*r)}
			for i := range p.A {
				p.A[i] = 1e30
			}
			for i := range p.B {
				p.B[i] = 1e30
			}
			a.Layers[l][m] = p
		}
	}
	return a
}

// poisonExecutor sets one value of every logits row to bad once more than
// after decode steps with logits have run.
type poisonExecutor struct {
	engine.Executor
	after int
	bad   float32

	mu    sync.Mutex
	steps int
}

func (e *poisonExecutor) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	outs, err := e.Executor.Forward(ctx, rows)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, r := range rows {
		if r.Logits == engine.LogitsNone || outs[i].Logits.Rows == 0 {
			continue
		}
		e.steps++
		if e.steps > e.after {
			row := outs[i].Logits.Row(outs[i].Logits.Rows - 1)
			row[len(row)/2] = e.bad
		}
	}
	return outs, nil
}

// TestNonFiniteLogitsEndChoice: a choice whose logits hold a NaN or an
// infinity ends with an error wrapping ErrNonFinite (never a made-up token
// or an empty "stop"), at the first token or mid-generation, and a request
// on the base model in the same batch is not affected.
func TestNonFiniteLogitsEndChoice(t *testing.T) {
	ex, tok := load(t)
	ctx := context.Background()
	prompt := encode(t, tok, "Hello, how are you today?")

	solo := newSched(t, ex, tok, Options{MaxBatch: 1})
	st, err := solo.Submit(ctx, Request{Prompt: prompt, MaxTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	want := collect(ctx, st, 1)
	if want.err != nil || len(want.tokens) != 6 {
		t.Fatalf("base alone: %+v", want)
	}

	// A broken adapter next to a base request, in one batch.
	s := newSched(t, ex, tok, Options{MaxBatch: 4})
	bad, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 6, Adapter: brokenAdapter(ex.Config()), N: 2})
	if err != nil {
		t.Fatal(err)
	}
	good, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	br, gr := collect(ctx, bad, 2), collect(ctx, good, 1)
	if !errors.Is(br.err, ErrNonFinite) || !strings.Contains(br.err.Error(), "after 0 generated tokens") || len(br.tokens) != 0 ||
		br.text[0] != "" || br.usage.CompletionTokens != 0 {
		t.Errorf("broken adapter: %+v, want ErrNonFinite before any token", br)
	}
	if gr.err != nil || !slices.Equal(gr.tokens, want.tokens) || gr.text[0] != want.text[0] {
		t.Errorf("base request beside it: %v %q (%v), alone %v %q", gr.tokens, gr.text[0], gr.err, want.tokens, want.text[0])
	}

	// Logits that turn non-finite mid-generation: the tokens so far, then
	// the error; an infinity is as bad as a NaN.
	for _, v := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		pe := &poisonExecutor{Executor: ex, after: 3, bad: v}
		ps := newSched(t, pe, tok, Options{MaxBatch: 1})
		st, err := ps.Submit(ctx, Request{Prompt: prompt, MaxTokens: 6})
		if err != nil {
			t.Fatal(err)
		}
		r := collect(ctx, st, 1)
		if !errors.Is(r.err, ErrNonFinite) || !strings.Contains(r.err.Error(), "after 3 generated tokens") ||
			!slices.Equal(r.tokens, want.tokens[:3]) || r.finish[0] != FinishStop {
			t.Errorf("%v after 3 tokens: %+v", v, r)
		}
	}

	// Prompt logprobs: the first non-finite prompt row ends the choice.
	st, err = s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 2, PromptLogprobs: true, Adapter: brokenAdapter(ex.Config())})
	if err != nil {
		t.Fatal(err)
	}
	r := collect(ctx, st, 1)
	if !errors.Is(r.err, ErrNonFinite) || !strings.Contains(r.err.Error(), "at prompt position") || len(r.tokens) != 0 {
		t.Errorf("prompt logprobs: %+v", r)
	}
	for _, lp := range st.PromptLogprobs() {
		if math.IsNaN(float64(lp.Logprob)) {
			t.Errorf("a NaN prompt logprob was recorded: %+v", lp)
		}
	}
}
