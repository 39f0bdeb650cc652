// Package cli implements the `soo rl` subcommands: train, soo-finetune and
// eval (PAPER.md §8). Main is the entry point used by cmd/soo.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sooserve/sooserve/rl/env"
	"github.com/sooserve/sooserve/rl/maddpg"
	"github.com/sooserve/sooserve/rl/nn"
	"github.com/sooserve/sooserve/rl/plots"
	"github.com/sooserve/sooserve/rl/soo"
)

const usage = `usage: soo rl <command> [flags]

commands:
  train         train an honest or deceptive MADDPG baseline (--variant honest|deceptive)
  soo-finetune  fine-tune a deceptive baseline's blue agent with SOO
  eval          count surfaces, behavioural differences, SOO classification, plots
`

// Main runs `soo rl` with args (the arguments after "rl").
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return fmt.Errorf("rl: missing command")
		}
		return nil
	}
	switch args[0] {
	case "train":
		return runTrain(ctx, args[1:], stdout, stderr)
	case "soo-finetune":
		return runFinetune(ctx, args[1:], stdout, stderr)
	case "eval":
		return runEval(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("rl: unknown command %q", args[0])
}

// trainFlags are the MADDPG settings shared by train and soo-finetune.
type trainFlags struct {
	seed                                        uint64
	episodes, epLen, batch, buffer, spu, explEp int
	noiseInit, noiseFinal, lr                   float64
	checkpointEvery                             int
	regPreTanh                                  bool
}

func (t *trainFlags) register(fs *flag.FlagSet, episodes int) {
	fs.Uint64Var(&t.seed, "seed", 1, "random seed (environment, noise, sampling, initialisation)")
	fs.IntVar(&t.episodes, "episodes", episodes, "episodes (paper: 40000 baselines, 10000 SOO)")
	fs.IntVar(&t.epLen, "episode-len", 50, "steps per episode (paper: 50)")
	fs.IntVar(&t.batch, "batch", 128, "minibatch size (paper: 1024)")
	fs.IntVar(&t.buffer, "buffer", 1_000_000, "replay buffer capacity (paper: 1e6)")
	fs.IntVar(&t.spu, "steps-per-update", 10, "environment steps between update rounds (paper: 100)")
	fs.IntVar(&t.explEp, "exploration-eps", -1, "episodes of linear noise decay (paper: 25000; -1: 5/8 of --episodes, the paper's ratio)")
	fs.Float64Var(&t.noiseInit, "noise-init", 0.3, "initial OU noise scale")
	fs.Float64Var(&t.noiseFinal, "noise-final", 0, "final OU noise scale")
	fs.Float64Var(&t.lr, "lr", 0.01, "Adam learning rate (policy and critic)")
	fs.IntVar(&t.checkpointEvery, "checkpoint-every", 500, "also save the checkpoint every N episodes (0: only at the end)")
	fs.BoolVar(&t.regPreTanh, "reg-pre-tanh", true, "apply the 1e-3 policy L2 penalty before tanh (false: on the action, as MADDPG-PyTorch; see RESULTS.md)")
}

func (t *trainFlags) config(v env.Variant) maddpg.Config {
	c := maddpg.PaperConfig(v, t.seed)
	c.Episodes, c.EpisodeLen, c.Batch, c.BufferSize, c.StepsPerUpdate = t.episodes, t.epLen, t.batch, t.buffer, t.spu
	c.ExplorationEps = t.explEp
	if c.ExplorationEps < 0 {
		c.ExplorationEps = t.episodes * 5 / 8
	}
	c.NoiseInit, c.NoiseFinal = t.noiseInit, t.noiseFinal
	c.Hyper.LR = t.lr
	c.Hyper.RegPreTanh = t.regPreTanh
	return c
}

// progress prints a one-line progress bar to w, at most every 200 ms.
type progress struct {
	w     io.Writer
	total int
	start time.Time
	last  time.Time
	sum   [2]float64
	n     int
}

func newProgress(w io.Writer, total int) *progress {
	return &progress{w: w, total: total, start: time.Now()}
}

func (p *progress) episode(ep int, ret [2]float64) {
	p.sum[0] += ret[0]
	p.sum[1] += ret[1]
	p.n++
	done := ep + 1
	if time.Since(p.last) < 200*time.Millisecond && done != p.total && done%100 != 0 {
		return
	}
	p.last = time.Now()
	const width = 30
	fill := width * done / max(1, p.total)
	el := time.Since(p.start)
	eta := time.Duration(float64(el) * float64(p.total-done) / float64(max(1, done)))
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d eps  mean return red %6.1f blue %6.1f  %s eta %s ",
		strings.Repeat("#", fill), strings.Repeat(".", width-fill), done, p.total,
		p.sum[0]/float64(p.n), p.sum[1]/float64(p.n), el.Round(time.Second), eta.Round(time.Second))
	if done%100 == 0 || done == p.total {
		fmt.Fprintln(p.w)
		p.sum, p.n = [2]float64{}, 0
	}
}

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo rl train", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tf trainFlags
	tf.register(fs, 2000)
	variant := fs.String("variant", "", "blue reward: honest or deceptive (required)")
	out := fs.String("out", "", "checkpoint path (.json, required); a returns plot is written next to it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	v, err := env.ParseVariant(*variant)
	if err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("rl train: --out is required")
	}
	cfg := tf.config(v)
	r := maddpg.NewRun(cfg)
	meta := map[string]string{"kind": "baseline", "variant": v.String()}
	fmt.Fprintf(stdout, "training %s baseline: seed %d, %d episodes × %d steps, batch %d, update every %d steps\n",
		v, cfg.Seed, cfg.Episodes, cfg.EpisodeLen, cfg.Batch, cfg.StepsPerUpdate)
	return trainAndSave(ctx, r, maddpg.Hooks{}, tf.checkpointEvery, *out, meta, stdout, stderr)
}

func trainAndSave(ctx context.Context, r *maddpg.Run, h maddpg.Hooks, every int, out string, meta map[string]string, stdout, stderr io.Writer) error {
	pr := newProgress(stderr, r.Config.Episodes)
	base := len(r.Returns)
	var ckErr error
	h.Episode = func(ep int, ret [2]float64) {
		pr.episode(ep, ret)
		if every > 0 && (ep+1)%every == 0 && ep+1 < r.Config.Episodes && ckErr == nil {
			ckErr = r.Save(out, meta)
		}
	}
	start := time.Now()
	err := r.Train(ctx, h)
	if ckErr != nil {
		return fmt.Errorf("rl: periodic checkpoint: %w", ckErr)
	}
	if err != nil {
		if serr := r.Save(out, meta); serr == nil {
			fmt.Fprintf(stderr, "\ninterrupted; partial checkpoint saved to %s\n", out)
		}
		return err
	}
	meta["train_seconds"] = strconv.FormatFloat(time.Since(start).Seconds(), 'f', 1, 64)
	if err := r.Save(out, meta); err != nil {
		return err
	}
	png := strings.TrimSuffix(out, filepath.Ext(out)) + "_returns.png"
	if err := plotReturns(r.Returns[base:], png); err != nil {
		return err
	}
	k := min(100, len(r.Returns)-base)
	if k > 0 {
		f, l := meanRet(r.Returns[base:base+k]), meanRet(r.Returns[len(r.Returns)-k:])
		fmt.Fprintf(stdout, "mean return over first %d episodes: red %.1f blue %.1f; last %d: red %.1f blue %.1f\n", k, f[0], f[1], k, l[0], l[1])
	}
	fmt.Fprintf(stdout, "saved %s (%d update rounds, %s) and %s\n", out, r.Updates, time.Since(start).Round(time.Second), png)
	return nil
}

func meanRet(rs [][2]float64) [2]float64 {
	var m [2]float64
	for _, r := range rs {
		m[0] += r[0] / float64(len(rs))
		m[1] += r[1] / float64(len(rs))
	}
	return m
}

// plotReturns draws 100-episode moving averages of both agents' returns.
func plotReturns(rs [][2]float64, path string) error {
	if len(rs) == 0 {
		return nil
	}
	w := min(100, len(rs))
	var cr, cb plots.Curve
	cr.Name, cb.Name = "red", "blue"
	var s [2]float64
	for i, r := range rs {
		s[0] += r[0]
		s[1] += r[1]
		if i >= w {
			s[0] -= rs[i-w][0]
			s[1] -= rs[i-w][1]
		}
		if i >= w-1 {
			cr.X, cr.Y = append(cr.X, float64(i+1)), append(cr.Y, s[0]/float64(w))
			cb.X, cb.Y = append(cb.X, float64(i+1)), append(cb.Y, s[1]/float64(w))
		}
	}
	return plots.Lines([]plots.Curve{cr, cb}, fmt.Sprintf("episode return (%d-episode mean)", w), "episode", "return", path)
}

func runFinetune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo rl soo-finetune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var tf trainFlags
	tf.register(fs, 500)
	from := fs.String("from", "", "deceptive baseline checkpoint (required)")
	out := fs.String("out", "", "output checkpoint path (required)")
	tn := soo.DefaultTuning()
	fs.Float64Var(&tn.SOOWeight, "soo-weight", tn.SOOWeight, "weight of MSE(A_self, A_other) (hidden layers [h1,h2])")
	fs.Float64Var(&tn.CapWeight, "cap-weight", tn.CapWeight, "weight of the capability term MSE(π(o), π_deceptive(o)); the paper's weighting is NOT FOUND")
	fs.IntVar(&tn.Batch, "soo-batch", tn.Batch, "self observations per SOO step")
	fs.IntVar(&tn.Steps, "soo-steps", tn.Steps, "SOO steps after each update round")
	fs.Float64Var(&tn.Radius, "soo-radius", tn.Radius, "radius of the fictitious red agent (training code: 0.125)")
	fs.BoolVar(&tn.SOOOnly, "soo-only", false, "skip blue's own MADDPG update, so blue changes only through the SOO loss (ablation)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *out == "" {
		return fmt.Errorf("rl soo-finetune: --from and --out are required")
	}
	base, meta, err := maddpg.Load(*from)
	if err != nil {
		return err
	}
	if base.Config.Variant != env.Deceptive {
		fmt.Fprintf(stderr, "warning: %s is a %s baseline; SOO fine-tuning is meant for the deceptive one\n", *from, base.Config.Variant)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := tf.config(env.Deceptive)
	cfg.Hyper = base.Config.Hyper
	if set["lr"] {
		cfg.Hyper.LR = tf.lr
	}
	if set["reg-pre-tanh"] {
		cfg.Hyper.RegPreTanh = tf.regPreTanh
	}
	if !set["seed"] {
		cfg.Seed = base.Config.Seed + 1_000_003 // a fresh stream, still tied to the baseline
	}
	r := &maddpg.Run{Config: cfg, Model: base.Model}
	for _, a := range r.Model.Agents {
		a.PolicyOpt = nn.NewAdam(len(a.Policy.Params), cfg.Hyper.LR)
		a.CriticOpt = nn.NewAdam(len(a.Critic.Params), cfg.Hyper.LR)
	}
	frozen := r.Model.Agents[env.Blue].Policy.Clone()
	var last soo.StepStats
	steps := 0
	h := tn.Hooks(frozen, func(st soo.StepStats) { last = st; steps++ })
	m := map[string]string{"kind": "soo", "variant": "soo", "from": *from, "from_seed": fmt.Sprint(base.Config.Seed), "from_variant": meta["variant"],
		"soo_weight": fmt.Sprint(tn.SOOWeight), "cap_weight": fmt.Sprint(tn.CapWeight), "soo_only": fmt.Sprint(tn.SOOOnly)}
	fmt.Fprintf(stdout, "SOO fine-tuning blue of %s: %d episodes, soo-weight %g, cap-weight %g, soo-only %v\n",
		*from, cfg.Episodes, tn.SOOWeight, tn.CapWeight, tn.SOOOnly)
	if err := trainAndSave(ctx, r, h, tf.checkpointEvery, *out, m, stdout, stderr); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d SOO steps; last step: MSE(A_self,A_other) %.4g, capability MSE %.4g over %d self observations\n",
		steps, last.SOOMSE, last.CapabilityMS, last.SelfRows)
	return nil
}

func mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("rl: create %s: %w", dir, err)
	}
	return nil
}
