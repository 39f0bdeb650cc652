package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/overlap"
)

// adapterFlags collects repeated --adapter [NAME=]DIR flags.
type adapterFlags []adapterFlag

type adapterFlag struct{ name, dir string }

func (a *adapterFlags) String() string {
	var s []string
	for _, f := range *a {
		s = append(s, f.name+"="+f.dir)
	}
	return strings.Join(s, ",")
}

func (a *adapterFlags) Set(v string) error {
	name, dir, ok := strings.Cut(v, "=")
	if !ok {
		dir = v
		name = filepath.Base(filepath.Clean(v))
	}
	if name == "" || dir == "" {
		return fmt.Errorf("want DIR or NAME=DIR, got %q", v)
	}
	if name == "base" {
		return errors.New(`the name "base" is the base model's`)
	}
	for _, f := range *a {
		if f.name == name {
			return fmt.Errorf("adapter name %q given twice", name)
		}
	}
	*a = append(*a, adapterFlag{name, dir})
	return nil
}

// probeRun is the probe of the base model or of one adapter.
type probeRun struct {
	Name   string               `json:"name"`
	Result *overlap.ProbeResult `json:"result"`
}

// runOverlap is `soo overlap`: the latent-SOO probe of PAPER.md §7 for the
// base model and each adapter, as a table (or JSON) and a line plot.
func runOverlap(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soo overlap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory (required)")
	tokDir := fs.String("tokenizer", "", "tokenizer directory (default: the model directory)")
	var ads adapterFlags
	fs.Var(&ads, "adapter", "PEFT LoRA adapter directory, or NAME=DIR (repeatable)")
	siteName := fs.String("site", "attn_out", "capture site: attn_out, mlp_out or resid_post")
	poolingName := fs.String("pooling", "mean", "pooling: mean, last or full")
	out := fs.String("out", "", "write a line plot of MSE by layer to this .svg or .png file")
	asJSON := fs.Bool("json", false, "print the results as JSON instead of a table")
	threads := fs.Int("threads", 0, "executor threads (0: GOMAXPROCS)")
	bf16Exact := bf16InputsFlag(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: soo overlap --model DIR [--adapter [NAME=]DIR ...] [--site attn_out] [--pooling mean] [--out plot.svg|png]\n\n"+
			"Measures the latent self/other overlap (PAPER.md §7: the mean over the 52 probe pairs of the\n"+
			"per-layer MSE between self and other activations) for the base model and each adapter.\n\n")
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
	site, err := engine.ParseSite(*siteName)
	if err != nil {
		return err
	}
	pooling, err := overlap.ParsePooling(*poolingName)
	if err != nil {
		return err
	}
	if *out != "" {
		if ext := strings.ToLower(filepath.Ext(*out)); ext != ".svg" && ext != ".png" {
			return fmt.Errorf("--out %s: want a .svg or .png file", *out)
		}
	}
	exactBF16, err := bf16Exact()
	if err != nil {
		return err
	}
	if *tokDir == "" {
		*tokDir = *modelDir
	}
	tok, err := tokenizer.Load(*tokDir)
	if err != nil {
		return fmt.Errorf("load tokenizer from %s (give --tokenizer DIR if the model has none): %w", *tokDir, err)
	}
	m, err := model.Load(*modelDir, model.LoadOptions{})
	if err != nil {
		return fmt.Errorf("load model: %w", err)
	}
	defer m.Close()
	ex := cpu.New(m, cpu.Options{Threads: *threads, ExactBF16Inputs: exactBF16})
	pairs, err := overlap.EncodePairs(tok, overlap.ProbePairs())
	if err != nil {
		return err
	}
	ctx := context.Background()
	opts := overlap.ProbeOptions{Site: site, Pooling: pooling}
	targets := []struct {
		name    string
		adapter *lora.Adapter
	}{{"base", nil}}
	for _, a := range ads {
		ad, _, err := adapters.LoadDir(a.name, a.dir, m.Config)
		if err != nil {
			return fmt.Errorf("load adapter %s: %w", a.name, err)
		}
		targets = append(targets, struct {
			name    string
			adapter *lora.Adapter
		}{a.name, ad})
	}
	var runs []probeRun
	for _, tg := range targets {
		r, err := overlap.Probe(ctx, ex, tg.adapter, pairs, opts)
		if err != nil {
			return fmt.Errorf("probe %s: %w", tg.name, err)
		}
		runs = append(runs, probeRun{tg.name, r})
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(runs); err != nil {
			return err
		}
	} else if err := writeProbeTable(stdout, runs); err != nil {
		return err
	}
	if *out != "" {
		if err := plotProbe(*out, runs); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "wrote %s\n", *out)
		}
	}
	return nil
}

// writeProbeTable prints one row per layer and a final mean row, one column
// per model.
func writeProbeTable(w io.Writer, runs []probeRun) error {
	r0 := runs[0].Result
	fmt.Fprintf(w, "latent SOO: MSE(self, other), %d probe pairs, site %s, pooling %s\n", r0.Pairs, r0.Site, r0.Pooling)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "layer\t")
	for _, r := range runs {
		fmt.Fprintf(tw, "%s\t", r.Name)
	}
	fmt.Fprintln(tw)
	for l := range r0.Layers {
		fmt.Fprintf(tw, "%d\t", l)
		for _, r := range runs {
			fmt.Fprintf(tw, "%.6g\t", r.Result.Layers[l])
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprint(tw, "mean\t")
	for _, r := range runs {
		fmt.Fprintf(tw, "%.6g\t", r.Result.Mean)
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

// plotProbe draws MSE by layer, one line per model, to path (.svg or .png).
func plotProbe(path string, runs []probeRun) error {
	p := plot.New()
	r0 := runs[0].Result
	p.Title.Text = fmt.Sprintf("Latent SOO (%d pairs, %s, %s pooling)", r0.Pairs, r0.Site, r0.Pooling)
	p.X.Label.Text = "layer"
	p.Y.Label.Text = "MSE(self, other)"
	p.Add(plotter.NewGrid())
	var lines []any
	for _, r := range runs {
		xy := make(plotter.XYs, len(r.Result.Layers))
		for l, v := range r.Result.Layers {
			xy[l] = plotter.XY{X: float64(l), Y: v}
		}
		lines = append(lines, fmt.Sprintf("%s (mean %.4g)", r.Name, r.Result.Mean), xy)
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(40)
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}
