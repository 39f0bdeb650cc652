package sched

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/sample"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/internal/demo"
)

var (
	demoOnce sync.Once
	demoEx   *cpu.Executor
	demoTok  *tokenizer.Tokenizer
	demoErr  error
)

func load(t *testing.T) (*cpu.Executor, *tokenizer.Tokenizer) {
	t.Helper()
	demoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sched-demo")
		if err != nil {
			demoErr = err
			return
		}
		if demoErr = demo.Write(dir); demoErr != nil {
			return
		}
		m, err := model.Load(dir, model.LoadOptions{})
		if err != nil {
			demoErr = err
			return
		}
		demoEx = cpu.New(m, cpu.Options{Threads: 2})
		demoTok, demoErr = tokenizer.Load(dir)
	})
	if demoErr != nil {
		t.Fatal(demoErr)
	}
	return demoEx, demoTok
}

func newSched(t *testing.T, ex engine.Executor, tok *tokenizer.Tokenizer, opts Options) *Scheduler {
	t.Helper()
	opts.NewDecoder = func() TextDecoder { return tok.NewStreamDecoder() }
	s := New(ex, opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

type result struct {
	tokens []int32
	text   []string // per choice
	finish []FinishReason
	usage  Usage
	err    error
}

func collect(ctx context.Context, st *Stream, n int) result {
	r := result{text: make([]string, n), finish: make([]FinishReason, n)}
	for {
		ev, err := st.Recv(ctx)
		if err == io.EOF {
			r.usage = st.Usage()
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
		if ev.Err != nil && r.err == nil {
			r.err = ev.Err
		}
		if ev.HasToken && ev.Index == 0 {
			r.tokens = append(r.tokens, ev.Token)
		}
		r.text[ev.Index] += ev.Text
		if ev.Finish != "" {
			r.finish[ev.Index] = ev.Finish
		}
	}
}

func encode(t *testing.T, tok *tokenizer.Tokenizer, s string) []int32 {
	t.Helper()
	ids, err := tok.Encode(s, tokenizer.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestGreedyBatchIndependent(t *testing.T) {
	ex, tok := load(t)
	var reqs []Request
	for i := range 16 {
		p := encode(t, tok, fmt.Sprintf("Request %d: %s", i, strings.Repeat("the model is asked ", i%5+1)))
		reqs = append(reqs, Request{Prompt: p, MaxTokens: 6 + i%4, EOS: tok.EOS()})
	}
	ctx := context.Background()
	// One at a time, on a scheduler of batch 1 with whole-prompt prefill.
	solo := newSched(t, ex, tok, Options{MaxBatch: 1, PrefillChunk: 4096})
	want := make([]result, len(reqs))
	for i, r := range reqs {
		st, err := solo.Submit(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = collect(ctx, st, 1)
		if want[i].err != nil {
			t.Fatal(want[i].err)
		}
	}
	// All at once, batch 8, small prefill chunks mixed with decode rows.
	batched := newSched(t, ex, tok, Options{MaxBatch: 8, PrefillChunk: 8, StepTokens: 24})
	got := make([]result, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			st, err := batched.Submit(ctx, r)
			if err != nil {
				got[i].err = err
				return
			}
			got[i] = collect(ctx, st, 1)
		})
	}
	wg.Wait()
	for i := range reqs {
		if got[i].err != nil {
			t.Fatalf("request %d: %v", i, got[i].err)
		}
		if !slices.Equal(got[i].tokens, want[i].tokens) || got[i].text[0] != want[i].text[0] || got[i].finish[0] != want[i].finish[0] {
			t.Errorf("request %d: batched %v %q %s, alone %v %q %s", i, got[i].tokens, got[i].text[0], got[i].finish[0], want[i].tokens, want[i].text[0], want[i].finish[0])
		}
		if got[i].usage != want[i].usage {
			t.Errorf("request %d: usage %+v, alone %+v", i, got[i].usage, want[i].usage)
		}
	}
}

func TestLengthStopAndN(t *testing.T) {
	ex, tok := load(t)
	s := newSched(t, ex, tok, Options{MaxBatch: 4})
	ctx := context.Background()
	prompt := encode(t, tok, "Hello, how are you today?")

	st, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	r := collect(ctx, st, 1)
	if r.err != nil || r.finish[0] != FinishLength || len(r.tokens) != 5 || r.usage.CompletionTokens != 5 || r.usage.PromptTokens != len(prompt) {
		t.Fatalf("length: %+v", r)
	}
	text := r.text[0]
	if len(text) < 2 {
		t.Skipf("greedy output %q too short to test stop strings", text)
	}
	// Stop on the generated text's second character: output is cut before it.
	stop := text[1:2]
	cut := text[:strings.Index(text, stop)]
	st, err = s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 5, Stop: []string{stop}})
	if err != nil {
		t.Fatal(err)
	}
	r = collect(ctx, st, 1)
	if r.err != nil || r.finish[0] != FinishStop || r.text[0] != cut {
		t.Fatalf("stop %q: got %q %s, want %q stop", stop, r.text[0], r.finish[0], cut)
	}

	seed := uint64(7)
	req := Request{Prompt: prompt, MaxTokens: 4, N: 3, Params: sample.Params{Temperature: 1, Seed: &seed}, Logprobs: true, TopLogprobs: 2}
	st, err = s.Submit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r1 := collect(ctx, st, 3)
	st, _ = s.Submit(ctx, req)
	r2 := collect(ctx, st, 3)
	if r1.err != nil || !slices.Equal(r1.text, r2.text) {
		t.Fatalf("seeded n=3 not reproducible: %q vs %q (%v)", r1.text, r2.text, r1.err)
	}
	if r1.usage.CompletionTokens > 12 {
		t.Errorf("usage %+v", r1.usage)
	}
}

// gate wraps an executor so a test can hold its steps.
type gate struct {
	engine.Executor
	ch chan struct{}
}

func (g *gate) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	select {
	case <-g.ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Executor.Forward(ctx, rows)
}

func TestCancelFreesSlotAndQueueFull(t *testing.T) {
	ex, tok := load(t)
	g := &gate{Executor: ex, ch: make(chan struct{})}
	s := newSched(t, g, tok, Options{MaxBatch: 1, MaxQueue: 1})
	prompt := encode(t, tok, "Bob wants to know")

	actx, acancel := context.WithCancel(context.Background())
	a, err := s.Submit(actx, Request{Prompt: prompt, MaxTokens: 1000})
	if err != nil {
		t.Fatal(err)
	}
	g.ch <- struct{}{} // A's prefill: A is running
	ctx := context.Background()
	b, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Submit(ctx, Request{Prompt: prompt, MaxTokens: 3}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third request: %v, want ErrQueueFull", err)
	}
	acancel()
	go func() {
		for {
			select {
			case g.ch <- struct{}{}:
			case <-time.After(5 * time.Second):
				return
			}
		}
	}()
	ra := collect(ctx, a, 1)
	if !errors.Is(ra.err, context.Canceled) {
		t.Fatalf("cancelled request ended with %v", ra.err)
	}
	rb := collect(ctx, b, 1)
	if rb.err != nil || len(rb.tokens) != 3 {
		t.Fatalf("second request: %+v", rb)
	}
}

func TestInvalidAndClose(t *testing.T) {
	ex, tok := load(t)
	s := New(ex, Options{MaxContext: 16})
	ctx := context.Background()
	if _, err := s.Submit(ctx, Request{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty prompt: %v", err)
	}
	if _, err := s.Submit(ctx, Request{Prompt: make([]int32, 16)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("long prompt: %v", err)
	}
	st, err := s.Submit(ctx, Request{Prompt: []int32{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r := collect(ctx, st, 1)
	if r.err != nil || r.finish[0] == "" || len(r.tokens)+3 > 16 {
		t.Errorf("drained request: %+v", r)
	}
	if _, err := s.Submit(ctx, Request{Prompt: []int32{1}}); !errors.Is(err, ErrClosed) {
		t.Errorf("after close: %v", err)
	}
	_ = tok
}
