package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/decision"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/testbed/world"
	"github.com/sooserve/sooserve/training"
)

// runProbe is `soo probe`: the decision-site analysis (package decision) of
// a model, optionally through a PEFT adapter, as a table and JSON.
func runProbe(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory (required)")
	tokDir := fs.String("tokenizer", "", "tokenizer and chat template directory (default: the model directory)")
	adapterDir := fs.String("adapter", "", "PEFT LoRA adapter directory to apply (default: the base model)")
	scenFile := fs.String("scenarios", "", `JSON file {"conflict": [[messages]...], "self": [[messages]...]} (default: the testbed world's evaluation items)`)
	n := fs.Int("n", 50, "world items per evaluation kind (each in both room orders) when --scenarios is not given")
	seed := fs.Uint64("world-seed", 0, "seed of the testbed world the items come from (the model's world, so they are held out)")
	conflictKinds := fs.String("conflict-kinds", string(world.EvalBurglar), "comma-separated world evaluation kinds of the conflict scenarios")
	selfKinds := fs.String("self-kinds", string(world.EvalSelf), "comma-separated world evaluation kinds of the self scenarios")
	dataset := fs.String("dataset", "paper", `SOO pairs: "paper" (3 templates x 52 items) or a JSON / JSONL file of {"self","other"} pairs`)
	formatName := fs.String("format", "chat", "SOO fragments: chat (user turn + generation prompt, the model's chat template) or raw")
	layersFlag := fs.String("layers", "", "comma-separated layers to analyse (default: all)")
	sitesFlag := fs.String("sites", "attn_out,mlp_out,resid_post", "comma-separated capture sites")
	folds := fs.Int("folds", decision.DefaultFolds, "cross-validation folds of the probe")
	lambda := fs.Float64("lambda", decision.DefaultLambda, "L2 penalty of the probe's logistic regression (on standardised features)")
	minAcc := fs.Float64("min-accuracy", decision.DefaultMinAccuracy, "held-out probe accuracy a site needs to be the decision site")
	jsonOut := fs.String("json", "", "write the report as JSON to this file (- for stdout, instead of the table)")
	batch := fs.Int("batch", decision.DefaultBatch, "prompts per forward step")
	threads := fs.Int("threads", 0, "executor threads (0: GOMAXPROCS)")
	bf16Exact := bf16InputsFlag(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: soo probe --model DIR [--adapter DIR] [--scenarios FILE | --n 50 --world-seed S] [--format chat|raw] [--json FILE]\n\n"+
			"Decision-site analysis: for every layer and site at the last prompt token, a linear probe for\n"+
			"\"the asker's goal conflicts with mine\" (conflict vs self scenarios, k-fold held-out accuracy),\n"+
			"applied to the SOO fragments; the cosine between the scenarios' conflict-self direction and the\n"+
			"SOO pairs' other-self direction; and the SOO MSE. It names the decision site by this rule:\n  %s\n\n",
			decision.Rule)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *modelDir == "" {
		fs.Usage()
		return errors.New("--model is required")
	}
	format, err := decision.ParseFormat(*formatName)
	if err != nil {
		return err
	}
	opts := decision.Options{Folds: *folds, Lambda: *lambda, MinAccuracy: minAcc, Batch: *batch}
	if opts.Layers, err = parseInts(*layersFlag); err != nil {
		return fmt.Errorf("--layers: %w", err)
	}
	for _, s := range splitList(*sitesFlag) {
		site, err := engine.ParseSite(s)
		if err != nil {
			return fmt.Errorf("--sites: %w", err)
		}
		opts.Sites = append(opts.Sites, site)
	}
	if len(opts.Sites) == 0 {
		return errors.New("--sites: no sites")
	}
	if *folds < 2 {
		return fmt.Errorf("--folds %d: want at least 2", *folds)
	}
	if !(*lambda > 0) {
		return fmt.Errorf("--lambda %g: want a positive penalty", *lambda)
	}
	if !(*minAcc >= 0 && *minAcc <= 1) {
		return fmt.Errorf("--min-accuracy %g: want a value in [0, 1]", *minAcc)
	}
	exactBF16, err := bf16Exact()
	if err != nil {
		return err
	}

	var sc *decision.Scenarios
	var source string
	if *scenFile != "" {
		b, err := os.ReadFile(*scenFile)
		if err != nil {
			return fmt.Errorf("--scenarios: %w", err)
		}
		if sc, err = decision.ParseScenarios(b); err != nil {
			return fmt.Errorf("--scenarios %s: %w", *scenFile, err)
		}
		source = *scenFile
	} else {
		ck, err := evalKinds(*conflictKinds)
		if err != nil {
			return fmt.Errorf("--conflict-kinds: %w", err)
		}
		sk, err := evalKinds(*selfKinds)
		if err != nil {
			return fmt.Errorf("--self-kinds: %w", err)
		}
		if sc, err = decision.WorldScenarios(world.New(*seed, world.Options{}), *n, ck, sk); err != nil {
			return err
		}
		source = fmt.Sprintf("testbed world seed %d: %d items x 2 orders; conflict %s, self %s", *seed, *n, *conflictKinds, *selfKinds)
	}
	pairs := training.PaperPairs()
	if *dataset != "paper" {
		b, err := os.ReadFile(*dataset)
		if err != nil {
			return fmt.Errorf("--dataset: %w", err)
		}
		if pairs, err = training.ParsePairs(b); err != nil {
			return fmt.Errorf("--dataset %s: %w", *dataset, err)
		}
	}

	if *tokDir == "" {
		*tokDir = *modelDir
	}
	tok, err := tokenizer.Load(*tokDir)
	if err != nil {
		return fmt.Errorf("load tokenizer from %s (give --tokenizer DIR if the model has none): %w", *tokDir, err)
	}
	tpl, err := chat.LoadTemplate(*tokDir)
	switch {
	case errors.Is(err, chat.ErrNoTemplate):
		tpl = nil
		fmt.Fprintf(stderr, "note: %s has no chat template: the scenarios are read as plain text\n", *tokDir)
	case err != nil:
		return fmt.Errorf("load chat template: %w", err)
	}
	m, err := model.Load(*modelDir, model.LoadOptions{})
	if err != nil {
		return fmt.Errorf("load model: %w", err)
	}
	defer m.Close()
	var ad *lora.Adapter
	if *adapterDir != "" {
		name := filepath.Base(filepath.Clean(*adapterDir))
		if ad, _, err = adapters.LoadDir(name, *adapterDir, m.Config); err != nil {
			return fmt.Errorf("load adapter %s: %w", *adapterDir, err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	prompts, err := decision.Encode(ctx, tok, tpl, sc, pairs, format)
	if err != nil {
		return err
	}
	ex := cpu.New(m, cpu.Options{Threads: *threads, ExactBF16Inputs: exactBF16})
	rep, err := decision.Measure(ctx, ex, ad, prompts, opts)
	if err != nil {
		return err
	}
	rep.Model, rep.Adapter, rep.Format, rep.Scenarios = *modelDir, *adapterDir, format, source

	if *jsonOut == "-" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode report: %w", err)
		}
		if err := atomicfile.WriteFile(*jsonOut, append(b, '\n')); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
		fmt.Fprintf(stdout, "wrote %s\n", *jsonOut)
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseInts parses a comma-separated list of integers; "" gives nil.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// evalKinds parses a comma-separated list of world evaluation kinds.
func evalKinds(s string) ([]world.EvalKind, error) {
	var out []world.EvalKind
	for _, f := range splitList(s) {
		k := world.EvalKind(f)
		if !containsKind(world.EvalKinds(), k) {
			return nil, fmt.Errorf("unknown kind %q (want some of %v)", f, world.EvalKinds())
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, errors.New("no kinds")
	}
	return out, nil
}

func containsKind(ks []world.EvalKind, k world.EvalKind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}
