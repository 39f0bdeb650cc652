package sched

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/sample"
)

// TestPromptLogprobs checks the prompt tokens' log-probabilities gathered
// across prefill chunks against one direct forward pass, and that asking for
// them changes none of the generated tokens.
func TestPromptLogprobs(t *testing.T) {
	ex, tok := load(t)
	s := newSched(t, ex, tok, Options{PrefillChunk: 3}) // several chunks per prompt
	ctx := context.Background()
	prompt := encode(t, tok, "The quick brown fox jumps over the lazy dog")
	run := func(withLP bool) ([]PromptLogprob, result) {
		st, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 5, PromptLogprobs: withLP, Logprobs: withLP, TopLogprobs: 2})
		if err != nil {
			t.Fatal(err)
		}
		r := collect(ctx, st, 1)
		if r.err != nil {
			t.Fatal(r.err)
		}
		return st.PromptLogprobs(), r
	}
	lps, with := run(true)
	none, without := run(false)
	if len(none) != 0 || !slices.Equal(with.tokens, without.tokens) {
		t.Errorf("prompt logprobs changed generation: %v vs %v (%d entries without asking)", with.tokens, without.tokens, len(none))
	}
	out, err := ex.Forward(ctx, []engine.Row{{Seq: ex.NewSequence(), Tokens: prompt, Logits: engine.LogitsAll}})
	if err != nil {
		t.Fatal(err)
	}
	if len(lps) != len(prompt) || !lps[0].First || lps[0].Token != prompt[0] {
		t.Fatalf("%d entries for %d prompt tokens; first %+v", len(lps), len(prompt), lps[0])
	}
	for i := 1; i < len(prompt); i++ {
		want := sample.LogSoftmax(out[0].Logits.Row(i - 1))
		e := lps[i]
		if e.Token != prompt[i] || e.First || math.Abs(float64(e.Logprob-want[prompt[i]])) > 1e-4 || len(e.Top) != 2 || e.Top[0].Token != sample.Argmax(want) {
			t.Errorf("entry %d: %+v, want token %d logprob %g", i, e, prompt[i], want[prompt[i]])
		}
	}
}
