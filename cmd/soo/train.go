package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/overlap"
	"github.com/sooserve/sooserve/training"
)

// runTrain is `soo train`: SOO fine-tuning from the command line, with a
// progress bar, per-epoch checkpoints (rerun the same command to resume) and
// the adapter written in PEFT layout.
func runTrain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo train", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory (config.json, *.safetensors, tokenizer files)")
	out := fs.String("out", "", "output adapter directory (PEFT layout)")
	dataset := fs.String("dataset", "paper", `"paper" (3 templates x 52 items) or a JSON / JSONL file of {"self","other"} pairs`)
	layer := fs.Int("layer", -1, "layer whose activations are matched (default: 60% of the depth)")
	site := fs.String("site", "attn_out", "attn_out, mlp_out or resid_post")
	pooling := fs.String("pooling", "full", "full, mean or last")
	r := fs.Int("r", 8, "LoRA rank")
	alpha := fs.Float64("alpha", 32, "LoRA alpha")
	dropout := fs.Float64("dropout", 0.2, "LoRA dropout")
	targets := fs.String("targets", "q_proj,v_proj", "comma-separated target modules")
	lr := fs.Float64("lr", 1e-4, "learning rate (AdamW)")
	epochs := fs.Int("epochs", 15, "epochs")
	batch := fs.Int("batch", 4, "pairs per step")
	seed := fs.Uint64("seed", 0, "seed for initialisation, shuffling and dropout")
	useChat := fs.Bool("chat", false, "tokenize pairs through the chat template (user turn + generation prompt) instead of raw")
	threads := fs.Int("threads", 0, "threads (0: all cores)")
	bf16Exact := bf16InputsFlag(fs)
	ckpt := fs.String("checkpoint", "", "checkpoint directory (default OUT/.checkpoint)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *modelDir == "" || *out == "" {
		fs.Usage()
		return fmt.Errorf("--model and --out are required")
	}
	exactBF16, err := bf16Exact()
	if err != nil {
		return err
	}
	m, err := model.Load(*modelDir, model.LoadOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	tok, err := tokenizer.Load(*modelDir)
	if err != nil {
		return err
	}
	var tmpl *chat.Template
	if *useChat {
		if tmpl, err = chat.LoadTemplate(*modelDir); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	encode := func(text string) ([]int32, error) {
		if tmpl == nil {
			return tok.Encode(text, tokenizer.EncodeOptions{AddSpecial: true})
		}
		s, err := tmpl.Render(ctx, []chat.Message{{Role: "user", Content: text}}, chat.RenderOptions{AddGenerationPrompt: true})
		if err != nil {
			return nil, err
		}
		return tok.Encode(s, tokenizer.EncodeOptions{ParseSpecial: true})
	}
	var pairs []training.Pair
	if *dataset == "paper" {
		pairs = training.PaperPairs()
	} else {
		b, err := os.ReadFile(*dataset)
		if err != nil {
			return err
		}
		if pairs, err = training.ParsePairs(b); err != nil {
			return err
		}
	}
	ex := cpu.New(m, cpu.Options{Threads: *threads, ExactBF16Inputs: exactBF16})
	spec := training.Spec{Layer: *layer, Site: *site, Pooling: training.Pooling(*pooling), Rank: *r, Alpha: *alpha,
		Dropout: *dropout, Targets: strings.Split(*targets, ","), LR: *lr, Epochs: *epochs, BatchSize: *batch, Seed: *seed}
	if spec.Layer < 0 {
		spec.Layer = training.DefaultLayer(m.Config)
	}
	if err := spec.Normalize(m.Config); err != nil {
		return err
	}
	toks, err := training.Tokenize(pairs, encode, spec.MaxTokens)
	if err != nil {
		return err
	}
	probePairs, err := overlap.EncodePairs(tok, overlap.ProbePairs())
	if err != nil {
		return err
	}
	probe := training.ProbeAtLayer(ex, probePairs)
	before, err := probe(ctx, nil, spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "training %d pairs, layer %d %s, pooling %s, r %d alpha %g, lr %g, %d epochs x batch %d\n",
		len(toks), spec.Layer, spec.Site, spec.Pooling, spec.Rank, spec.Alpha, spec.LR, spec.Epochs, spec.BatchSize)
	if *ckpt == "" {
		*ckpt = filepath.Join(*out, ".checkpoint")
	}
	res, err := training.Train(ctx, ex, toks, spec, filepath.Base(*out), training.RunOptions{
		CheckpointDir: *ckpt,
		Progress:      func(p training.Progress) { progressBar(stderr, p) },
	})
	fmt.Fprintln(stderr)
	if err != nil {
		return fmt.Errorf("%w (rerun the same command to resume from the last epoch checkpoint)", err)
	}
	after, err := probe(ctx, res.Adapter, spec)
	if err != nil {
		return err
	}
	if err := adapters.WriteDir(*out, res.Adapter, adapters.NewConfig(res.Adapter, spec.Dropout, *modelDir)); err != nil {
		return err
	}
	if err := os.RemoveAll(*ckpt); err != nil {
		return err
	}
	summary := map[string]any{"adapter": *out, "steps": len(res.Losses), "first_loss": res.Losses[0],
		"last_loss": res.Losses[len(res.Losses)-1], "probe_mse_before": before, "probe_mse_after": after, "layer": spec.Layer}
	b, _ := json.Marshal(summary)
	fmt.Fprintln(stdout, string(b))
	return nil
}

// progressBar redraws one line: bar, step, epoch, loss, speed and ETA.
func progressBar(w io.Writer, p training.Progress) {
	const width = 30
	done := width * p.Step / max(p.Steps, 1)
	fmt.Fprintf(w, "\r[%s%s] step %d/%d epoch %d/%d loss %.5g %.0f tok/s ETA %s   ",
		strings.Repeat("#", done), strings.Repeat(".", width-done), p.Step, p.Steps, p.Epoch, p.Epochs, p.Loss,
		p.TokensPerS, p.ETA.Round(time.Second))
}
