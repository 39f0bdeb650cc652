package adapters_test

import (
	"bytes"
	"context"
	"fmt"
	"mime"
	"sync"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/sched"
	"github.com/sooserve/sooserve/internal/synth"
)

var (
	smolOnce sync.Once
	smol     *model.Model
)

// smolSched returns a scheduler over a random-weight model of the
// SmolLM2-135M shape (f32), built once per test binary.
func smolSched(b *testing.B) (*sched.Scheduler, *model.Config) {
	b.Helper()
	smolOnce.Do(func() {
		var err error
		smol, err = synth.Model("smollm2-135m", model.F32, 1)
		if err != nil {
			b.Fatal(err)
		}
	})
	ex := cpu.New(smol, cpu.Options{MaxContext: 512})
	s := sched.New(ex, sched.Options{MaxBatch: 8, MaxContext: 512})
	b.Cleanup(func() { s.Close(context.Background()) })
	return s, smol.Config
}

func firstToken(ctx context.Context, s *sched.Scheduler, a *lora.Adapter, prompt []int32, maxTokens int) (int, error) {
	st, err := s.Submit(ctx, sched.Request{Prompt: prompt, Adapter: a, MaxTokens: maxTokens})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		ev, err := st.Recv(ctx)
		if err != nil {
			return n, err
		}
		if ev.HasToken {
			n++
		}
		if ev.Err != nil {
			return n, ev.Err
		}
		if ev.Finish != "" {
			return n, nil
		}
	}
}

// BenchmarkReplaceToFirstToken measures, for a rank-8 q/v adapter on the
// SmolLM2-135M shape, the time from an upload's bytes having arrived
// (multipart body in memory) to the first token generated with the new
// version: parse, validate and bind, store (disk, fsynced), swap, and a
// request's 8-token prefill and first sampled token.
func BenchmarkReplaceToFirstToken(b *testing.B) {
	ctx := context.Background()
	s, cfg := smolSched(b)
	st, err := adapters.OpenDisk(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	r, err := adapters.Open(ctx, adapters.Options{Base: cfg, BaseID: "smol", Store: st})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var bodies [2][]byte
	var boundary [2]string
	for i := range bodies {
		body, ct := adapterstest.Multipart("honest", adapterstest.Random(cfg, 8, []string{"q_proj", "v_proj"}, uint64(i), 0.01))
		_, params, _ := mime.ParseMediaType(ct)
		bodies[i], boundary[i] = body, params["boundary"]
	}
	prompt8 := []int32{1, 20, 300, 4000, 50, 600, 7000, 80}
	for _, kind := range []string{"base-only", "upload", "replace"} {
		for _, plen := range []int{1, 8} {
			prompt := prompt8[:plen]
			b.Run(fmt.Sprintf("%s/prompt=%d", kind, plen), func(b *testing.B) {
				if kind == "base-only" {
					start := time.Now()
					for i := 0; i < b.N; i++ {
						if _, err := firstToken(ctx, s, nil, prompt, 1); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/first-token")
					return
				}
				var total, stages [3]time.Duration
				for i := 0; i < b.N; i++ {
					if kind == "upload" {
						r.Delete(ctx, "honest")
					}
					start := time.Now()
					u, err := adapters.ReadUpload(bytes.NewReader(bodies[i%2]), boundary[i%2], adapters.Limits{})
					if err != nil {
						b.Fatal(err)
					}
					rec, err := r.Put(ctx, u.Name, u.Files, kind == "replace")
					if err != nil {
						b.Fatal(err)
					}
					stored := time.Now()
					a, got, err := r.Acquire(ctx, "honest")
					if err != nil || got.Version != rec.Version {
						b.Fatalf("acquire: %v", err)
					}
					if _, err := firstToken(ctx, s, a, prompt, 1); err != nil {
						b.Fatal(err)
					}
					end := time.Now()
					stages[0] += stored.Sub(start)
					stages[1] += end.Sub(stored)
					total[0] += end.Sub(start)
				}
				b.ReportMetric(float64(total[0].Microseconds())/1000/float64(b.N), "ms/first-token")
				b.ReportMetric(float64(stages[0].Microseconds())/1000/float64(b.N), "ms/store")
				b.ReportMetric(float64(stages[1].Microseconds())/1000/float64(b.N), "ms/prefill+token")
			})
		}
	}
}

// BenchmarkMixedAdapterThroughput compares the generated tokens per second
// of 8 concurrent requests (32 tokens each) on the SmolLM2-135M shape, all
// on the base model, against the same batch spread over 4 rank-8 q/v
// adapters (2 requests each).
func BenchmarkMixedAdapterThroughput(b *testing.B) {
	ctx := context.Background()
	s, cfg := smolSched(b)
	var ads []*lora.Adapter
	for i := range 4 {
		a, _, err := adapters.Validate(fmt.Sprintf("a%d", i), adapterstest.Random(cfg, 8, []string{"q_proj", "v_proj"}, uint64(i), 0.01), cfg, adapters.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		ads = append(ads, a)
	}
	run := func(adapterOf func(i int) *lora.Adapter) (int, time.Duration) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		tokens := 0
		start := time.Now()
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := firstToken(ctx, s, adapterOf(i), []int32{1, int32(100 + i), 200, 300}, 32)
				if err != nil {
					b.Error(err)
				}
				mu.Lock()
				tokens += n
				mu.Unlock()
			}()
		}
		wg.Wait()
		return tokens, time.Since(start)
	}
	var baseTok, mixTok int
	var baseT, mixT time.Duration
	for i := 0; i < b.N; i++ {
		n, d := run(func(int) *lora.Adapter { return nil })
		baseTok, baseT = baseTok+n, baseT+d
		n, d = run(func(i int) *lora.Adapter { return ads[i%4] })
		mixTok, mixT = mixTok+n, mixT+d
	}
	base := float64(baseTok) / baseT.Seconds()
	mixed := float64(mixTok) / mixT.Seconds()
	b.ReportMetric(base, "base-tok/s")
	b.ReportMetric(mixed, "mixed-tok/s")
	b.ReportMetric(mixed/base, "ratio")
}
