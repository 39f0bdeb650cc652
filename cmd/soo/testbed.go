package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sooserve/sooserve/testbed"
)

// runTestbed is `soo testbed`: for now one subcommand, build.
func runTestbed(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "build" {
		fmt.Fprintf(stderr, "usage: soo testbed build [flags]   train the testbed model from scratch (see soo testbed build -h)\n")
		return errors.New("unknown or missing subcommand")
	}
	return runTestbedBuild(args[1:], stdout, stderr)
}

// runTestbedBuild is `soo testbed build`: the testbed model trained from
// scratch on the synthetic world, with a progress bar, gate evaluations as
// it goes, checkpoints (--resume goes on from them; Ctrl-C saves one) and a
// Hugging Face directory at the end.
func runTestbedBuild(args []string, stdout, stderr io.Writer) error {
	d := testbed.DefaultOptions()
	fs := flag.NewFlagSet("soo testbed build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "output directory (Hugging Face layout; OUT/checkpoint while it runs)")
	seed := fs.Uint64("seed", d.Seed, "seed of the world, tokenizer, initialisation and data")
	vocab := fs.Int("vocab", d.VocabSize, "tokenizer vocabulary size, special tokens included")
	hidden := fs.Int("hidden", d.Shape.Hidden, "hidden size")
	layers := fs.Int("layers", d.Shape.Layers, "decoder layers")
	heads := fs.Int("heads", d.Shape.Heads, "attention heads")
	kvHeads := fs.Int("kv-heads", d.Shape.KVHeads, "key/value heads")
	inter := fs.Int("intermediate", d.Shape.Intermediate, "MLP intermediate size")
	maxPos := fs.Int("max-positions", d.Shape.MaxPositions, "max_position_embeddings")
	untied := fs.Bool("untied", d.Shape.Untied, "an LM head of its own instead of tied embeddings")
	rowLen := fs.Int("row", d.RowLen, "tokens per packed row")
	rows := fs.Int("batch", d.BatchRows, "rows per step")
	s1, s2 := d.Stages[0], d.Stages[1]
	s1Tokens := fs.Int64("stage1-tokens", s1.Tokens, "stage 1 (simple world) token budget (a maximum with --until-gates)")
	s1LR := fs.Float64("stage1-lr", s1.LR, "stage 1 peak learning rate")
	s1Min := fs.Float64("stage1-min-lr", s1.MinLR, "stage 1 learning rate at the end of the cosine")
	s1Warm := fs.Int("stage1-warmup", s1.Warmup, "stage 1 warm-up steps")
	s2Tokens := fs.Int64("stage2-tokens", s2.Tokens, "stage 2 (full world) token budget; 0 skips stage 2")
	s2LR := fs.Float64("stage2-lr", s2.LR, "stage 2 peak learning rate")
	s2Min := fs.Float64("stage2-min-lr", s2.MinLR, "stage 2 learning rate at the end of the cosine")
	s2Warm := fs.Int("stage2-warmup", s2.Warmup, "stage 2 warm-up steps")
	beta2 := fs.Float64("beta2", d.Beta2, "AdamW beta2")
	wd := fs.Float64("weight-decay", d.WeightDecay, "AdamW weight decay (matrices only)")
	clip := fs.Float64("clip", d.ClipNorm, "global gradient-norm clip (0: none)")
	untilGates := fs.Bool("until-gates", d.UntilGates, "end stage 1 at the first evaluation where burglar deceptive and self truthful reach --stage1-gate in each order")
	gate := fs.Float64("stage1-gate", d.StageOneGate, "stage 1 gate, percent")
	evalEvery := fs.Int64("eval-every", d.EvalEvery, "training tokens between gate evaluations")
	evalItems := fs.Int("eval-items", d.EvalItems, "held-out items per kind (each in both orders) in evaluations during training")
	finalItems := fs.Int("final-items", d.FinalItems, "held-out items per kind (each in both orders) in the final evaluation (gates.json)")
	ckptEvery := fs.Duration("checkpoint-every", d.CheckpointEvery, "wall time between checkpoints (0: only at stage ends and on interrupt)")
	resume := fs.Bool("resume", false, "go on from OUT/checkpoint (same flags as the interrupted build)")
	threads := fs.Int("threads", 0, "executor threads (0: GOMAXPROCS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return errors.New("--out is required")
	}
	o := d
	o.Out, o.Seed, o.VocabSize, o.RowLen, o.BatchRows = *out, *seed, *vocab, *rowLen, *rows
	o.Shape = testbed.Shape{Hidden: *hidden, Layers: *layers, Heads: *heads, KVHeads: *kvHeads, Intermediate: *inter,
		MaxPositions: *maxPos, RopeTheta: d.Shape.RopeTheta, Untied: *untied}
	o.Stages = []testbed.Stage{{Mix: "simple", Tokens: *s1Tokens, LR: *s1LR, MinLR: *s1Min, Warmup: *s1Warm}}
	if *s2Tokens > 0 {
		o.Stages = append(o.Stages, testbed.Stage{Mix: "full", Tokens: *s2Tokens, LR: *s2LR, MinLR: *s2Min, Warmup: *s2Warm})
	}
	o.Beta2, o.WeightDecay, o.ClipNorm = *beta2, *wd, *clip
	o.UntilGates, o.StageOneGate, o.EvalEvery, o.EvalItems, o.FinalItems = *untilGates, *gate, *evalEvery, *evalItems, *finalItems
	o.CheckpointEvery, o.Resume, o.Threads = *ckptEvery, *resume, *threads
	bar := newProgressLine(stderr)
	o.Logger = slog.New(slog.NewTextHandler(bar, nil))
	o.OnProgress = bar.update
	o.OnEval = func(r testbed.EvalRecord) { bar.println(r.Line()) }

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := testbed.Build(ctx, o)
	bar.finish()
	if err != nil {
		if errors.Is(err, testbed.ErrInterrupted) {
			return fmt.Errorf("%w; go on with the same flags and --resume", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %d parameters, %.2fM tokens in %s (%.0f tokens/s in steps)\n", res.Dir, res.Params,
		float64(res.Tokens)/1e6, (time.Duration(res.WallSeconds) * time.Second).String(), res.TokensPerSec)
	for i, s := range res.Stages {
		fmt.Fprintf(stdout, "stage %d %s: %d steps, %.2fM tokens, ended by %s, loss %.4f\n", i+1, s.Mix, s.Steps, float64(s.Tokens)/1e6, s.EndedBy, s.Loss)
	}
	fmt.Fprintf(stdout, "final (%d items x 2 orders per kind): %s\n", res.Final.Items, res.Final.Line())
	for _, g := range res.Gates {
		fmt.Fprintf(stdout, "  %-32s want >= %3.0f%%  got %5.1f%%  %s\n", g.Name, g.Want, g.Got, map[bool]string{true: "met", false: "NOT MET"}[g.Met])
	}
	if !res.GatesMet {
		fmt.Fprintf(stdout, "the gates are not all met\n")
	}
	return nil
}

// progressLine draws the build's progress: one line redrawn in place on a
// terminal, a plain line every 30 seconds otherwise (a log file).
type progressLine struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressLine(w io.Writer) *progressLine {
	p := &progressLine{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progressLine) update(pr testbed.Progress) {
	now := time.Now()
	if !p.tty && now.Sub(p.last) < 30*time.Second && pr.Step != pr.Steps {
		return
	}
	if p.tty && now.Sub(p.last) < 200*time.Millisecond && pr.Step != pr.Steps {
		return
	}
	p.last = now
	const width = 24
	done := width * pr.Step / max(1, pr.Steps)
	line := fmt.Sprintf("[%s%s] stage %d/%d %s step %d/%d %.2fM tok loss %.4f lr %.2e gnorm %.2f %.0f tok/s elapsed %s ETA <= %s",
		strings.Repeat("#", done), strings.Repeat(".", width-done), pr.Stage, pr.Stages, pr.Mix, pr.Step, pr.Steps,
		float64(pr.Tokens)/1e6, pr.Loss, pr.LR, pr.GradNorm, pr.TokensPerSec, pr.Elapsed.Round(time.Second), pr.ETA.Round(time.Second))
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
		p.drawn = true
		return
	}
	fmt.Fprintln(p.w, line)
}

// clear erases the progress line on a terminal, so a log line takes its place.
func (p *progressLine) clear() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// println prints a log line, above the progress line on a terminal.
func (p *progressLine) println(s string) {
	p.clear()
	fmt.Fprintln(p.w, s)
}

// Write writes log output (slog's handler) above the progress line.
func (p *progressLine) Write(b []byte) (int, error) {
	p.clear()
	return p.w.Write(b)
}

func (p *progressLine) finish() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
