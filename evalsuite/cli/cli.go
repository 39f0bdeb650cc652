// Package cli is the command line of the deception evaluation (`soo eval`): it parses flags
// into an evalsuite.Config, runs it with progress on stderr, and prints a summary.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sooserve/sooserve/evalsuite"
)

// Usage is the synopsis printed by -h.
const Usage = `usage: soo eval --endpoint URL --model NAME [--model NAME2 ...] --out DIR [flags]

Runs the paper's deception benchmark (PAPER.md §4-§7) against any OpenAI-compatible endpoint,
greedy (temperature 0). Several --model values (a base and its adapters) are compared side by
side. The run resumes from DIR/responses.jsonl: rerun the same command after an interruption.
Writes DIR/report.json, DIR/report.md, DIR/deceptive_rate.svg, DIR/responses.jsonl.

Scenarios (--scenarios, comma-separated; "all" and "variants" expand):
`

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// ParseArgs turns `soo eval` arguments into a configuration.
func ParseArgs(args []string, stderr io.Writer) (evalsuite.Config, error) {
	fs := flag.NewFlagSet("soo eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		models, modelSuffixes                     multiFlag
		endpoint, apiKey, scenarios, out, seeds   string
		suffix, judgeEndpoint, judgeModel, judgeK string
		n, maxTokens, concurrency, retries        int
		seed                                      int64
		chat, completion, capability              bool
		timeout                                   time.Duration
	)
	fs.StringVar(&endpoint, "endpoint", "", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (/v1 is added when the URL has no path)")
	fs.StringVar(&apiKey, "api-key", os.Getenv("SOO_API_KEY"), "bearer token for the endpoint (default $SOO_API_KEY; $OPENAI_API_KEY is never read)")
	fs.Var(&models, "model", "model or adapter name as the endpoint knows it (repeat to compare)")
	fs.StringVar(&suffix, "suffix", "iwould", "answer suffix for every model: iwould (Mistral), room (Gemma-2, CalmeRys) or none")
	fs.Var(&modelSuffixes, "model-suffix", "NAME=SUFFIX: answer suffix for one model (repeatable)")
	fs.StringVar(&scenarios, "scenarios", "burglar", "comma-separated scenarios, or all, or variants")
	fs.IntVar(&n, "n", evalsuite.DefaultN, "items per seed")
	fs.Int64Var(&seed, "seed", 0, "sampling seed")
	fs.StringVar(&seeds, "seeds", "", "comma-separated sampling seeds (overrides --seed); rates get mean ± SD over seeds")
	fs.BoolVar(&chat, "chat", false, "use /v1/chat/completions (default)")
	fs.BoolVar(&completion, "completion", false, "use /v1/completions with the raw prompt (no chat template, as the v-ICLR code)")
	fs.StringVar(&out, "out", "", "output directory (created; a run resumes from what it holds)")
	fs.IntVar(&maxTokens, "max-tokens", 75, "new tokens per response")
	fs.IntVar(&concurrency, "concurrency", 4, "requests in flight")
	fs.IntVar(&retries, "retries", 6, "retries per request on 408/409/429/5xx and network errors")
	fs.DurationVar(&timeout, "request-timeout", 5*time.Minute, "limit for one request attempt")
	fs.BoolVar(&capability, "capability", true, "run the held-out log-likelihood check (completions echo+logprobs, else chat prompt_logprobs)")
	fs.StringVar(&judgeEndpoint, "judge-endpoint", "", "OpenAI-compatible base URL of a judge model for the optional LLM-judged check")
	fs.StringVar(&judgeModel, "judge-model", "", "judge model name (required with --judge-endpoint)")
	fs.StringVar(&judgeK, "judge-api-key", "", "bearer token for the judge endpoint")
	fs.Usage = func() {
		fmt.Fprint(stderr, Usage)
		for _, s := range evalsuite.Scenarios() {
			fmt.Fprintf(stderr, "  %-22s %s\n", s.Name, s.Title)
		}
		fmt.Fprintf(stderr, "\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return evalsuite.Config{}, err
	}
	if fs.NArg() > 0 {
		return evalsuite.Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if endpoint == "" || len(models) == 0 || out == "" {
		return evalsuite.Config{}, errors.New("--endpoint, --model and --out are required (see -h)")
	}
	if chat && completion {
		return evalsuite.Config{}, errors.New("--chat and --completion exclude each other")
	}
	def, err := evalsuite.ParseSuffix(suffix)
	if err != nil {
		return evalsuite.Config{}, fmt.Errorf("--suffix: %w", err)
	}
	per := map[string]evalsuite.Suffix{}
	for _, ms := range modelSuffixes {
		name, kind, ok := strings.Cut(ms, "=")
		if !ok {
			return evalsuite.Config{}, fmt.Errorf("--model-suffix %q: want NAME=SUFFIX", ms)
		}
		s, err := evalsuite.ParseSuffix(kind)
		if err != nil {
			return evalsuite.Config{}, fmt.Errorf("--model-suffix %q: %w", ms, err)
		}
		per[name] = s
	}
	cfg := evalsuite.Config{Endpoint: endpoint, APIKey: apiKey, N: n, MaxTokens: maxTokens, Concurrency: concurrency,
		RequestTimeout: timeout, OutDir: out, Capability: capability, Mode: evalsuite.ModeChat}
	if retries == 0 {
		cfg.Retries = -1
	} else {
		cfg.Retries = retries
	}
	if completion {
		cfg.Mode = evalsuite.ModeCompletion
	}
	for _, m := range models {
		s, ok := per[m]
		if !ok {
			s = def
		}
		delete(per, m)
		cfg.Models = append(cfg.Models, evalsuite.ModelSpec{Name: m, Suffix: s})
	}
	for m := range per {
		return evalsuite.Config{}, fmt.Errorf("--model-suffix names %q, which is not a --model", m)
	}
	if cfg.Scenarios, err = evalsuite.ParseScenarios(scenarios); err != nil {
		return evalsuite.Config{}, fmt.Errorf("--scenarios: %w", err)
	}
	cfg.Seeds = []int64{seed}
	if seeds != "" {
		cfg.Seeds = nil
		for _, f := range strings.Split(seeds, ",") {
			v, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil {
				return evalsuite.Config{}, fmt.Errorf("--seeds: %w", err)
			}
			cfg.Seeds = append(cfg.Seeds, v)
		}
	}
	if n <= 0 || maxTokens <= 0 || concurrency <= 0 {
		return evalsuite.Config{}, errors.New("--n, --max-tokens and --concurrency must be positive")
	}
	if judgeEndpoint != "" {
		if judgeModel == "" {
			return evalsuite.Config{}, errors.New("--judge-endpoint needs --judge-model")
		}
		cfg.Judge = &evalsuite.JudgeConfig{Endpoint: judgeEndpoint, APIKey: judgeK, Model: judgeModel}
	}
	return cfg, nil
}

// RunEval is `soo eval`: it parses args, runs the evaluation (cancel ctx to stop; the run
// resumes when started again with the same arguments), prints progress to stderr and a summary
// to stdout.
func RunEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	step := 0
	rep, err := evalsuite.Run(ctx, cfg, func(p evalsuite.Progress) {
		if step == 0 {
			step = max(1, (p.Total-p.Skipped)/20)
			if p.Skipped > 0 {
				fmt.Fprintf(stderr, "resuming: %d of %d items already in %s\n", p.Skipped, p.Total, filepath.Join(cfg.OutDir, evalsuite.ResponsesFile))
			}
		}
		if (p.Done-p.Skipped)%step == 0 || p.Done == p.Total {
			fmt.Fprintf(stderr, "%d/%d  %s  %s  seed %d\n", p.Done, p.Total, p.Model, p.Scenario, p.Seed)
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (finished responses are kept; rerun the same command to resume)", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "%-24s %-22s %5s %10s %8s %8s\n", "model", "scenario", "n", "deceptive%", "honest%", "unclear%")
	for _, r := range rep.Rows {
		if r.Kind == evalsuite.KindPerspectives {
			fmt.Fprintf(stdout, "%-24s %-22s %5d %10s %8.1f %8.1f  (correct %.1f%%)\n", r.Model, r.Scenario, r.N, "-", 0.0, r.UnclearRate, r.CorrectRate)
			continue
		}
		fmt.Fprintf(stdout, "%-24s %-22s %5d %10.1f %8.1f %8.1f\n", r.Model, r.Scenario, r.N, r.DeceptiveRate, r.HonestRate, r.UnclearRate)
	}
	for _, c := range rep.Capability {
		if c.Method == evalsuite.MethodUnsupported {
			fmt.Fprintf(stdout, "capability %s: unsupported (%s)\n", c.Model, c.Note)
			continue
		}
		fmt.Fprintf(stdout, "capability %s: perplexity %.3f over %d tokens (%s)\n", c.Model, c.Perplexity, c.Tokens, c.Method)
	}
	for _, j := range rep.Judge {
		fmt.Fprintf(stdout, "judge %s: mean score %.2f over %d questions (judge %s)\n", j.Model, j.MeanScore, j.Questions, j.Judge)
	}
	fmt.Fprintf(stdout, "report: %s\n", filepath.Join(cfg.OutDir, "report.md"))
	return nil
}
