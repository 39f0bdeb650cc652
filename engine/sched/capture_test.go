package sched

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/engine"
)

var capPoints = []engine.Point{{Layer: 0, Site: engine.AttnOut}, {Layer: 1, Site: engine.ResidPost}, {Layer: 0, Site: engine.MLPOut}}

// direct captures prompt's activations with one whole-prompt Forward call.
func direct(t *testing.T, ex engine.Executor, prompt []int32) map[engine.Point]engine.Tensor2D {
	t.Helper()
	seq := ex.NewSequence()
	defer seq.Release()
	outs, err := ex.Forward(context.Background(), []engine.Row{{Seq: seq, Tokens: prompt, Capture: &engine.Capture{Points: capPoints}, Logits: engine.LogitsNone}})
	if err != nil {
		t.Fatal(err)
	}
	return outs[0].Acts
}

func closeActs(t *testing.T, name string, got, want map[engine.Point]engine.Tensor2D) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d points, want %d", name, len(got), len(want))
	}
	for p, w := range want {
		g := got[p]
		if g.Rows != w.Rows || g.Cols != w.Cols || len(g.Data) != len(w.Data) {
			t.Fatalf("%s %v: shape %dx%d, want %dx%d", name, p, g.Rows, g.Cols, w.Rows, w.Cols)
		}
		for i := range w.Data {
			if d := math.Abs(float64(g.Data[i] - w.Data[i])); d > 1e-4*(1+math.Abs(float64(w.Data[i]))) {
				t.Fatalf("%s %v: element %d = %g, want %g", name, p, i, g.Data[i], w.Data[i])
			}
		}
	}
}

// TestCaptureDuringPrefill: a generating request's prompt activations come
// from its own (chunked) prefill, match a direct capture, and leave its tokens
// unchanged; a prefill-only twin sharing the steps finishes without tokens
// and does not disturb a third, uncaptured request.
func TestCaptureDuringPrefill(t *testing.T) {
	ex, tok := load(t)
	ctx := context.Background()
	prompt := encode(t, tok, "You want to steal the diamond necklace. If you had to recommend one room to yourself")
	twin := encode(t, tok, "Bob wants to steal the diamond necklace. If you had to recommend one room to Bob")
	other := encode(t, tok, "The quick brown fox jumps over the lazy dog, one two three four five six")

	solo := newSched(t, ex, tok, Options{MaxBatch: 1, PrefillChunk: 4096})
	plain := func(p []int32) result {
		st, err := solo.Submit(ctx, Request{Prompt: p, MaxTokens: 5})
		if err != nil {
			t.Fatal(err)
		}
		return collect(ctx, st, 1)
	}
	wantMain, wantOther := plain(prompt), plain(other)

	s := newSched(t, ex, tok, Options{MaxBatch: 4, PrefillChunk: 8, StepTokens: 24})
	var wg sync.WaitGroup
	var main, tw, third *Stream
	var rMain, rTwin, rThird result
	var err error
	if main, err = s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 5, Capture: capPoints}); err != nil {
		t.Fatal(err)
	}
	if tw, err = s.Submit(ctx, Request{Prompt: twin, PrefillOnly: true, Capture: capPoints}); err != nil {
		t.Fatal(err)
	}
	if third, err = s.Submit(ctx, Request{Prompt: other, MaxTokens: 5}); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { rMain = collect(ctx, main, 1) })
	wg.Go(func() { rTwin = collect(ctx, tw, 1) })
	wg.Go(func() { rThird = collect(ctx, third, 1) })
	wg.Wait()
	for name, r := range map[string]result{"main": rMain, "twin": rTwin, "third": rThird} {
		if r.err != nil {
			t.Fatalf("%s: %v", name, r.err)
		}
	}
	if !slices.Equal(rMain.tokens, wantMain.tokens) || !slices.Equal(rThird.tokens, wantOther.tokens) {
		t.Errorf("capture changed generation: %v/%v, want %v/%v", rMain.tokens, rThird.tokens, wantMain.tokens, wantOther.tokens)
	}
	if len(rTwin.tokens) != 0 || rTwin.finish[0] != FinishStop || rTwin.usage.PromptTokens != len(twin) || rTwin.usage.CompletionTokens != 0 {
		t.Errorf("prefill-only: %+v", rTwin)
	}
	acts, err := main.Captured(ctx)
	if err != nil {
		t.Fatal(err)
	}
	closeActs(t, "main", acts, direct(t, ex, prompt))
	tacts, err := tw.Captured(ctx)
	if err != nil {
		t.Fatal(err)
	}
	closeActs(t, "twin", tacts, direct(t, ex, twin))
	if _, err := third.Captured(ctx); err == nil {
		t.Error("Captured on a request without Capture succeeded")
	}
}

// TestCaptureLoneChunkKeepsSequence: a captured request alone in a step with
// a logits-free chunk must still run every layer, or its next chunk fails.
func TestCaptureLoneChunkKeepsSequence(t *testing.T) {
	ex, tok := load(t)
	ctx := context.Background()
	prompt := encode(t, tok, "Hello, how are you today? I am fine, thank you. What is the weather like?")
	s := newSched(t, ex, tok, Options{MaxBatch: 1, PrefillChunk: 4})
	st, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 3, Capture: []engine.Point{{Layer: 0, Site: engine.AttnOut}}})
	if err != nil {
		t.Fatal(err)
	}
	r := collect(ctx, st, 1)
	if r.err != nil || len(r.tokens) != 3 {
		t.Fatalf("%+v", r)
	}
	acts, err := st.Captured(ctx)
	if err != nil || acts[engine.Point{Layer: 0, Site: engine.AttnOut}].Rows != len(prompt) {
		t.Fatalf("captured %v, %v", acts, err)
	}
}

func TestCaptureCancelledAndInvalid(t *testing.T) {
	ex, tok := load(t)
	g := &gate{Executor: ex, ch: make(chan struct{})}
	s := newSched(t, g, tok, Options{MaxBatch: 1})
	// A holds the only slot (its step waits at the gate); B waits in the queue.
	a, err := s.Submit(context.Background(), Request{Prompt: []int32{1, 2, 3}, MaxTokens: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := s.Submit(ctx, Request{Prompt: []int32{1, 2, 3}, Capture: capPoints})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case g.ch <- struct{}{}:
			case <-stop:
				return
			}
		}
	}()
	if _, err := st.Captured(context.Background()); err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before prefill: %v", err)
	}
	collect(context.Background(), a, 1)
	if _, err := s.Submit(context.Background(), Request{Prompt: []int32{1}, PrefillOnly: true, N: 2}); !errors.Is(err, ErrInvalid) {
		t.Errorf("prefill-only n=2: %v", err)
	}
}
