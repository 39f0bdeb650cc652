package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/xla"
	"github.com/sooserve/sooserve/internal/synth"
)

// prefillTokens is the prompt length of the prefill measurement.
const prefillTokens = 128

// benchResult is the JSON line soo bench --json prints.
type benchResult struct {
	Model                  string    `json:"model"`
	DType                  string    `json:"dtype"`
	BF16Inputs             string    `json:"bf16_inputs"` // rounded or exact (products with bf16 weights)
	Batch                  int       `json:"batch"`
	Vocab                  int       `json:"vocab"`
	Params                 int64     `json:"params"`
	Threads                int       `json:"threads"`
	Backend                string    `json:"backend"`
	WeightBytes            int64     `json:"weight_bytes"`
	DecodeTokensPerS       float64   `json:"decode_tokens_per_s"`
	DecodeStepMS           float64   `json:"decode_step_ms"`
	SingleDecodeTokensPerS float64   `json:"single_decode_tokens_per_s,omitempty"`
	BatchSpeedup           float64   `json:"batch_speedup,omitempty"`  // median of batch_speedups
	BatchSpeedups          []float64 `json:"batch_speedups,omitempty"` // batch rate over the single rate, each from a pair of adjacent runs
	Prefill128S            float64   `json:"prefill_128_s"`
	PrefillTokens          int       `json:"prefill_tokens,omitempty"`
	PrefillS               float64   `json:"prefill_s,omitempty"`
	BandwidthGBs           float64   `json:"bandwidth_gb_s,omitempty"`
	BoundTokensPerS        float64   `json:"bandwidth_bound_tokens_per_s,omitempty"`
	BoundRatio             float64   `json:"bound_ratio,omitempty"`  // median of the cycles' ratios
	BoundRatios            []float64 `json:"bound_ratios,omitempty"` // each decode cycle's rate over the bound measured just before it
	DecodeSteps            int       `json:"decode_steps"`
	Adapters               int       `json:"adapters,omitempty"`
	LoRARank               int       `json:"lora_rank,omitempty"`
	LoRAModules            []string  `json:"lora_modules,omitempty"`
	LoRADType              string    `json:"lora_dtype,omitempty"`
	LoRABaseStepMS         float64   `json:"lora_base_step_ms,omitempty"`
	LoRAStepMS             float64   `json:"lora_step_ms,omitempty"`
	LoRAOverhead           float64   `json:"lora_overhead,omitempty"`
	CPU                    string    `json:"cpu"`
	GoVersion              string    `json:"go"`
	Date                   string    `json:"date"`
}

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	shape := fs.String("shape", "smollm2-135m", "synthetic model shape: "+strings.Join(synth.Shapes(), ", "))
	dir := fs.String("model", "", "benchmark this Hugging Face checkpoint directory instead of a synthetic model")
	dtypeS := fs.String("dtype", "", "weight dtype: f32, bf16 or f16 (default f32 for synthetic models, the stored dtype for --model)")
	bf16Exact := bf16InputsFlag(fs)
	batch := fs.Int("batch", 1, "concurrent sequences decoding in one step")
	vocab := fs.Int("vocab", 0, "override the synthetic model's vocabulary size")
	tokens := fs.Int("tokens", 32, "decode steps to time")
	prefillN := fs.Int("prefill", 0, "also time the prefill of a prompt of this many tokens (prefill_tokens, prefill_s: the better of two runs)")
	threads := fs.Int("threads", 0, "kernel threads (0: GOMAXPROCS)")
	backend := fs.String("backend", "cpu", "executor: cpu, or xla:cuda / xla:cpu / simplego for the GoMLX executor (xla:* needs a -tags xla build and a PJRT plugin; it has no KV cache, so each decode step recomputes the sequence, and no bandwidth bound is reported)")
	seed := fs.Uint64("seed", 1, "random seed of the synthetic weights")
	asJSON := fs.Bool("json", false, "print one JSON line")
	bwMB := fs.Int("bw-mb", 512, "size in MB of the buffer the bandwidth measurement reads")
	nAdapters := fs.Int("adapters", 0, "also time decode with the batch's rows spread over this many random LoRA adapters (row i uses adapter i mod N), against the base in the same run")
	loraRank := fs.Int("lora-rank", 16, "rank of the --adapters adapters")
	loraMods := fs.String("lora-modules", "q_proj,v_proj", "comma-separated modules of the --adapters adapters")
	loraDType := fs.String("lora-dtype", "f32", "how the --adapters adapters are stored: f32, or bf16 (values rounded to bf16 and streamed as bf16, as an adapter loaded from a bf16 file is)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the timed runs to this file (for go tool pprof)")
	save := fs.String("save", "", "write the synthetic model (with the demo tokenizer) as a Hugging Face directory here and exit, e.g. for `serve --model DIR` and `soo load`")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: soo bench [flags]\n\nTimes 128-token prefill and decoding (tokens per second for --batch sequences\nstepping together), and this machine's memory read bandwidth, which bounds decode.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *batch < 1 || *tokens < 1 {
		return fmt.Errorf("--batch and --tokens must be positive")
	}
	if *prefillN < 0 {
		return fmt.Errorf("--prefill must be ≥ 0")
	}
	if *loraDType != "f32" && *loraDType != "bf16" {
		return fmt.Errorf("--lora-dtype %q: want f32 or bf16", *loraDType)
	}
	if *nAdapters < 0 || *loraRank < 1 {
		return fmt.Errorf("--adapters must be ≥ 0 and --lora-rank positive")
	}
	var mods []model.Module
	for _, name := range strings.Split(*loraMods, ",") {
		m, ok := model.ParseModule(strings.TrimSpace(name))
		if !ok {
			return fmt.Errorf("--lora-modules: unknown module %q", name)
		}
		mods = append(mods, m)
	}
	exactBF16, err := bf16Exact()
	if err != nil {
		return err
	}
	var dt *model.DType
	if *dtypeS != "" {
		d, err := model.ParseDType(*dtypeS)
		if err != nil {
			return err
		}
		dt = &d
	}
	if *save != "" {
		d := model.F32
		if dt != nil {
			d = *dt
		}
		if err := synth.WriteDir(*save, *shape, d, *seed, *vocab); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%s, %s, random weights)\n", *save, *shape, d)
		return nil
	}
	var m *model.Model
	name := *shape
	if *dir != "" {
		if *vocab != 0 {
			return fmt.Errorf("--vocab applies to synthetic models only")
		}
		var err error
		if m, err = model.Load(*dir, model.LoadOptions{DType: dt}); err != nil {
			return err
		}
		defer m.Close()
		name = *dir
	} else {
		cfg, err := synth.Config(*shape)
		if err != nil {
			return err
		}
		if *vocab > 0 {
			cfg.VocabSize = *vocab
		}
		d := model.F32
		if dt != nil {
			d = *dt
		}
		m = synth.FromConfig(cfg, d, *seed)
	}
	if _, err := m.MoveToHugePages(); err != nil {
		return err
	}
	th := *threads
	if th <= 0 {
		th = runtime.GOMAXPROCS(0)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var ads []*lora.Adapter
	for i := range *nAdapters {
		a := synth.Adapter(m.Config, fmt.Sprintf("a%d", i), *loraRank, mods, uint64(i+1))
		if *loraDType == "bf16" {
			synth.RoundBF16(a)
			a.CompactBF16()
		}
		ads = append(ads, a)
	}
	r, err := bench(m, benchOptions{backend: *backend, threads: th, batch: *batch, steps: *tokens, bwBytes: int64(*bwMB) << 20,
		adapters: ads, exactBF16: exactBF16, prefill: *prefillN})
	if err != nil {
		return err
	}
	r.Model = name
	if len(ads) > 0 {
		r.LoRADType = *loraDType
	}
	if *asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	fmt.Fprintf(stdout, "model      %s (%s, %.1fM params, vocab %d, %.0f MB of weights read per step)\n", r.Model, r.DType, float64(r.Params)/1e6, r.Vocab, float64(r.WeightBytes)/1e6)
	fmt.Fprintf(stdout, "machine    %s, %d threads, backend %s, read bandwidth %.1f GB/s\n", r.CPU, r.Threads, r.Backend, r.BandwidthGBs)
	fmt.Fprintf(stdout, "prefill    %d tokens in %.3f s (%.0f tokens/s)\n", prefillTokens, r.Prefill128S, prefillTokens/r.Prefill128S)
	if r.PrefillTokens > 0 {
		fmt.Fprintf(stdout, "           %d tokens in %.3f s (%.0f tokens/s)\n", r.PrefillTokens, r.PrefillS, float64(r.PrefillTokens)/r.PrefillS)
	}
	fmt.Fprintf(stdout, "decode     %.1f tokens/s with batch %d (%.2f ms per step, median of %d)\n", r.DecodeTokensPerS, r.Batch, r.DecodeStepMS, r.DecodeSteps)
	if r.Batch > 1 {
		fmt.Fprintf(stdout, "           single sequence %.1f tokens/s: batch speedup %.2fx\n", r.SingleDecodeTokensPerS, r.BatchSpeedup)
	}
	if r.Adapters > 0 {
		fmt.Fprintf(stdout, "lora       %d %s adapters (rank %d on %s) across the batch: %.2f ms per step vs %.2f on the base: %+.1f%%\n",
			r.Adapters, r.LoRADType, r.LoRARank, strings.Join(r.LoRAModules, ","), r.LoRAStepMS, r.LoRABaseStepMS, 100*r.LoRAOverhead)
	}
	if r.BoundTokensPerS == 0 {
		return nil
	}
	fmt.Fprintf(stdout, "bound      %.1f tokens/s if every step only streamed the weights at the measured bandwidth: %.2f of bound\n", r.BoundTokensPerS, r.BoundRatio)
	return nil
}

// benchOptions is what bench measures, and how.
type benchOptions struct {
	backend        string
	threads, batch int
	steps          int   // decode steps to time
	bwBytes        int64 // size of the bandwidth probe's buffer
	adapters       []*lora.Adapter
	exactBF16      bool
	prefill        int // also time a prefill of this many tokens (0: only the 128-token one)
}

// bench measures m on this machine with the named executor backend; with
// adapters, also decode with row i of the batch on adapters[i%len(adapters)].
func bench(m *model.Model, o benchOptions) (*benchResult, error) {
	backend, threads, batch, steps, bwBytes, adapters, exactBF16 := o.backend, o.threads, o.batch, o.steps, o.bwBytes, o.adapters, o.exactBF16
	cfg := m.Config
	r := &benchResult{
		DType: m.Layers[0].Proj[model.Q].W.DType.String(), BF16Inputs: "rounded", Batch: batch, Vocab: cfg.VocabSize, Threads: threads,
		WeightBytes: m.Bytes(), DecodeSteps: steps, CPU: cpuName(), GoVersion: runtime.Version(),
		Date: time.Now().UTC().Format(time.RFC3339),
	}
	r.Params = int64(m.Embed.Rows) * int64(m.Embed.Cols)
	for _, l := range m.Layers {
		for _, p := range l.Proj {
			r.Params += int64(p.W.Rows) * int64(p.W.Cols)
		}
	}
	if m.LMHead != &m.Embed {
		r.Params += int64(m.LMHead.Rows) * int64(m.LMHead.Cols)
	}
	if exactBF16 {
		r.BF16Inputs = "exact"
	}
	var ex engine.Executor
	switch backend {
	case "", "cpu":
		r.Backend = "cpu"
		r.BandwidthGBs = cpu.ReadBandwidth(bwBytes, threads, 5) / 1e9
		runtime.GC()
		ex = cpu.New(m, cpu.Options{Threads: threads, ExactBF16Inputs: exactBF16})
	default:
		xe, err := xla.New(m, xla.Options{Backend: backend, ExactBF16Inputs: exactBF16})
		if err != nil {
			return nil, fmt.Errorf("--backend %s: %w", backend, err)
		}
		defer xe.Close()
		r.Backend, ex = xe.Backend(), xe
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	prompt := func(n int) []int32 {
		p := make([]int32, n)
		for i := range p {
			p[i] = int32(rng.IntN(cfg.VocabSize))
		}
		return p
	}
	// Prefill: the median of three fresh sequences, after a warm-up that
	// touches every weight.
	var pre []float64
	for i := range 4 {
		s := ex.NewSequence()
		t0 := time.Now()
		if _, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: prompt(prefillTokens)}}); err != nil {
			return nil, err
		}
		if i > 0 {
			pre = append(pre, time.Since(t0).Seconds())
		}
		s.Release()
	}
	r.Prefill128S = median(pre)
	if o.prefill > 0 {
		// A longer prompt (its attention grows with the square of its
		// length): the better of two fresh sequences.
		r.PrefillTokens, r.PrefillS = o.prefill, math.Inf(1)
		for range 2 {
			s := ex.NewSequence()
			t0 := time.Now()
			if _, err := ex.Forward(ctx, []engine.Row{{Seq: s, Tokens: prompt(o.prefill)}}); err != nil {
				return nil, fmt.Errorf("--prefill %d: %w", o.prefill, err)
			}
			r.PrefillS = min(r.PrefillS, time.Since(t0).Seconds())
			s.Release()
		}
	}

	// decodeCycles times steps decode steps of batch sequences (after two
	// warm-up steps) and returns their times in cycles groups of
	// steps/cycles; pause, if not nil, runs untimed before each group.
	// With alternate, the rows carry ads on every other step only, and the
	// two groups are the steps without and with them. decode is one
	// group's median.
	decodeCycles := func(batch int, ads []*lora.Adapter, cycles int, pause func(), alternate bool) ([][]float64, error) {
		seqs := make([]engine.Sequence, batch)
		rows := make([]engine.Row, batch)
		for i := range seqs {
			seqs[i] = ex.NewSequence()
			// Each row's logits reuse one buffer, as the scheduler's do.
			rows[i] = engine.Row{Seq: seqs[i], Tokens: prompt(8), LogitsBuf: make([]float32, cfg.VocabSize)}
			if len(ads) > 0 {
				rows[i].Adapter = ads[i%len(ads)]
			}
		}
		defer func() {
			for _, s := range seqs {
				s.Release()
			}
		}()
		out, err := ex.Forward(ctx, rows)
		if err != nil {
			return nil, err
		}
		per := max(1, steps/cycles)
		times := make([][]float64, 0, cycles)
		if alternate {
			times = make([][]float64, 2)
		}
		n := steps
		if alternate {
			n = max(n, 2) // a step of each kind
		}
		for step := 0; step < n+2; step++ {
			if k := step - 2; !alternate && k >= 0 && k%per == 0 && len(times) < cycles {
				if pause != nil {
					pause()
				}
				times = append(times, nil)
			}
			g := len(times) - 1
			for i := range rows {
				rows[i].Tokens = []int32{argmax(out[i].Logits.Data)}
				if alternate {
					g = step % 2
					rows[i].Adapter = nil
					if g == 1 {
						rows[i].Adapter = ads[i%len(ads)]
					}
				}
			}
			t0 := time.Now()
			if out, err = ex.Forward(ctx, rows); err != nil {
				return nil, err
			}
			if step >= 2 { // two warm-up steps
				times[g] = append(times[g], time.Since(t0).Seconds())
			}
		}
		return times, nil
	}
	decode := func(batch int, ads []*lora.Adapter) (float64, error) {
		t, err := decodeCycles(batch, ads, 1, nil, false)
		if err != nil {
			return 0, err
		}
		return median(t[0]), nil
	}
	// The main decode run alternates with bandwidth measurements (four
	// cycles): this host's bandwidth moves by ±25% within seconds, so each
	// cycle's decode rate is held to the bandwidth measured just before it,
	// and the bound ratio is the median of the cycles' ratios.
	const cycles = 4
	var bws []float64
	var pause func()
	if r.BandwidthGBs > 0 {
		probe := cpu.NewBandwidthProbe(bwBytes)
		defer probe.Close()
		pause = func() { bws = append(bws, probe.Measure(threads, 3)/1e9) }
	}
	ct, err := decodeCycles(batch, nil, cycles, pause, false)
	if err != nil {
		return nil, err
	}
	var all, ratios []float64
	for c, t := range ct {
		all = append(all, t...)
		if c < len(bws) {
			bound := float64(batch) * bws[c] * 1e9 / float64(r.WeightBytes)
			ratios = append(ratios, float64(batch)/median(t)/bound)
		}
	}
	st := median(all)
	if len(adapters) > 0 {
		// Steps with and without the adapters alternate on the same
		// sequences (three runs of steps steps), so both see the same host
		// (its bandwidth moves by ±25% within seconds: whole runs
		// alternating put the two in different phases); the medians of
		// the two sets of steps are compared.
		var base, with []float64
		for range 3 {
			t, err := decodeCycles(batch, adapters, 2, nil, true)
			if err != nil {
				return nil, err
			}
			base, with = append(base, t[0]...), append(with, t[1]...)
		}
		r.Adapters, r.LoRARank = len(adapters), adapters[0].Rank
		for _, m := range adapters[0].Modules {
			r.LoRAModules = append(r.LoRAModules, m.String())
		}
		r.LoRABaseStepMS, r.LoRAStepMS = median(base)*1e3, median(with)*1e3
		r.LoRAOverhead = r.LoRAStepMS/r.LoRABaseStepMS - 1
	}
	r.DecodeStepMS = st * 1e3
	r.DecodeTokensPerS = float64(batch) / st
	if batch > 1 {
		// The single-sequence rate and the speedup over it come from runs
		// of one sequence alternating with runs of the batch, three each,
		// so each pair sees the same host: timed once after the batch, the
		// single sequence could land in another bandwidth phase and move
		// the ratio by ±20% from run to run.
		var singles []float64
		for range 3 {
			s1, err := decode(1, nil)
			if err != nil {
				return nil, err
			}
			sb, err := decode(batch, nil)
			if err != nil {
				return nil, err
			}
			singles = append(singles, s1)
			r.BatchSpeedups = append(r.BatchSpeedups, float64(batch)*s1/sb)
		}
		r.SingleDecodeTokensPerS = 1 / median(singles)
		r.BatchSpeedup = median(r.BatchSpeedups)
	}
	if r.BandwidthGBs > 0 {
		// One step streams every projection and the LM head once for all
		// rows. The bandwidth reported is the median of the measurement
		// before prefill and those between decode cycles.
		r.BandwidthGBs = median(append(bws, r.BandwidthGBs))
		r.BoundTokensPerS = float64(batch) * r.BandwidthGBs * 1e9 / float64(r.WeightBytes)
		r.BoundRatio = median(ratios)
		r.BoundRatios = ratios
	}
	return r, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func argmax(v []float32) int32 {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return int32(best)
}

// cpuName returns the processor's model name from /proc/cpuinfo, or GOARCH.
func cpuName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}
