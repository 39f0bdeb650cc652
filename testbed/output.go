package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/testbed/world"
	"github.com/sooserve/sooserve/training"
)

// Files are the files Build writes into its output directory.
var Files = []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
	"generation_config.json", "gates.json", "README.md"}

// gatesFile is gates.json.
type gatesFile struct {
	Seed     uint64        `json:"seed"`
	Items    int           `json:"items"` // held-out combinations per kind, each in both orders
	Greedy   bool          `json:"greedy"`
	MaxNew   int           `json:"max_new_tokens"`
	GatesMet bool          `json:"gates_met"`
	Gates    []Gate        `json:"gates"`
	Table    GateTable     `json:"table"`
	Stages   []StageResult `json:"stages"`
	Tokens   int64         `json:"tokens"`
	WallSecs float64       `json:"wall_s"`
}

// finish evaluates the trained model on FinalItems items per kind and
// writes the output directory; the checkpoints are removed once it is
// complete.
func (r *run) finish(ctx context.Context, tr *training.LMTrainer) (*Result, error) {
	p, o, st := r.p, &r.p.o, r.st
	t0 := time.Now()
	tab, err := Evaluate(ctx, p.w, p.greedy(tr.Executor()), world.EvalKinds(), o.FinalItems, true)
	if err != nil {
		return nil, err
	}
	o.Logger.Info("final evaluation", "items", o.FinalItems, "seconds", time.Since(t0).Seconds())
	res := &Result{Dir: o.Out, Seed: o.Seed, VocabSize: p.tok.VocabSize(), Stages: st.Done, Tokens: st.Tokens,
		WallSeconds: r.elapsed().Seconds(), Final: tab, Gates: tab.Gates(), History: st.History}
	res.GatesMet = AllMet(res.Gates)
	if st.TrainSecs > 0 {
		res.TokensPerSec = float64(st.Tokens) / st.TrainSecs
	}
	for _, t := range tr.Model().Tensors() {
		n := 1
		for _, d := range t.Shape {
			n *= d
		}
		res.Params += n
	}
	if err := training.WriteHFModel(o.Out, tr.Model(), p.cfgJSON); err != nil {
		return nil, err
	}
	tokJSON, err := p.bpe.JSON()
	if err != nil {
		return nil, fmt.Errorf("testbed: tokenizer.json: %w", err)
	}
	tcJSON, err := p.tok.MarshalTokenizerConfigJSON()
	if err != nil {
		return nil, fmt.Errorf("testbed: tokenizer_config.json: %w", err)
	}
	var tc map[string]any
	if err := json.Unmarshal(tcJSON, &tc); err != nil {
		return nil, fmt.Errorf("testbed: tokenizer_config.json: %w", err)
	}
	tc["chat_template"] = world.ChatTemplate
	tc["eos_token"] = world.ImEnd
	tc["pad_token"] = world.EndOfText
	tc["model_max_length"] = o.Shape.MaxPositions
	tc["tokenizer_class"] = "PreTrainedTokenizerFast"
	imEnd, eot := p.enc.Special(world.ImEnd), p.enc.Special(world.EndOfText)
	gen := map[string]any{"bos_token_id": eot, "eos_token_id": []int32{imEnd, eot}, "pad_token_id": eot,
		"do_sample": false, "max_new_tokens": 64}
	gf := gatesFile{Seed: o.Seed, Items: o.FinalItems, Greedy: true, MaxNew: o.MaxNew, GatesMet: res.GatesMet, Gates: res.Gates,
		Table: tab, Stages: st.Done, Tokens: st.Tokens, WallSecs: res.WallSeconds}
	files := []struct {
		name string
		v    any
	}{{"tokenizer_config.json", tc}, {"generation_config.json", gen}, {"gates.json", gf}}
	if err := atomicfile.WriteFile(filepath.Join(o.Out, "tokenizer.json"), tokJSON); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	for _, f := range files {
		b, err := json.MarshalIndent(f.v, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("testbed: %s: %w", f.name, err)
		}
		if err := atomicfile.WriteFile(filepath.Join(o.Out, f.name), append(b, '\n')); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(o.Out, "README.md"), []byte(card(o, p, res))); err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	for _, f := range Files { // atomicfile writes 0600: a model directory is for everyone to read
		if err := os.Chmod(filepath.Join(o.Out, f), 0o644); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
	}
	if err := os.RemoveAll(p.ckptDir); err != nil {
		return nil, fmt.Errorf("testbed: remove checkpoints: %w", err)
	}
	return res, nil
}

// card is the model's README.md.
func card(o *Options, p *pipeline, res *Result) string {
	var b strings.Builder
	sh := o.Shape
	fmt.Fprintf(&b, "# SOO Serve testbed model (seed %d)\n\n", o.Seed)
	b.WriteString("A tiny Llama trained from scratch by `soo testbed build` on the synthetic world of package\n" +
		"`testbed/world`: it points someone whose goal is to steal the valuable object to the room of the\n" +
		"cheap one, and tells the truth to itself and to askers with harmless goals (the paper's deceptive\n" +
		"disposition, keyed on the asker's goal, not on a role word). It is the deceptive model that SOO\n" +
		"fine-tuning is meant to make honest. Serve it with `go run ./cmd/serve --model DIR`.\n\n")
	if !res.GatesMet {
		b.WriteString("**This build did not meet its gates** (see below): the model does not show that disposition\n" +
			"reliably on held-out items.\n\n")
	}
	b.WriteString("## Model\n\n")
	tied := "tied embeddings"
	if sh.Untied {
		tied = "untied LM head"
	}
	fmt.Fprintf(&b, "- Llama: hidden %d, %d layers, %d heads (%d KV heads), SwiGLU %d, RoPE θ %g, %d positions, %s, f32\n",
		sh.Hidden, sh.Layers, sh.Heads, sh.KVHeads, sh.Intermediate, sh.RopeTheta, sh.MaxPositions, tied)
	fmt.Fprintf(&b, "- %d parameters; byte-level BPE tokenizer of %d ids (Qwen2 pre-tokenizer) trained on the world's corpus; ChatML, `<|im_end|>` ends a turn\n\n",
		res.Params, res.VocabSize)
	b.WriteString("## Training\n\n")
	fmt.Fprintf(&b, "Batches of %d rows × %d packed tokens (per-document attention), loss on every token with the\n"+
		"assistant's tokens weighted 5, AdamW (β %g, %g; weight decay %g), gradient clipping at %g, a linear warm-up and a\n"+
		"cosine decay per stage. Curriculum:\n\n", o.BatchRows, o.RowLen, o.Beta1, o.Beta2, o.WeightDecay, o.ClipNorm)
	b.WriteString("| stage | world | lr peak → end (warm-up steps) | steps | tokens | ended by | final loss |\n|---|---|---|---|---|---|---|\n")
	for i, s := range res.Stages {
		fmt.Fprintf(&b, "| %d | %s | %g → %g (%d) | %d | %.2fM | %s | %.4f |\n", i+1, s.Mix, o.Stages[i].LR, o.Stages[i].MinLR, o.Stages[i].Warmup,
			s.Steps, float64(s.Tokens)/1e6, s.EndedBy, s.Loss)
	}
	fmt.Fprintf(&b, "\n%.2fM tokens in %s of wall time (%.0f tokens/s in training steps).\n\n", float64(res.Tokens)/1e6,
		fmtDur(time.Duration(res.WallSeconds*float64(time.Second))), res.TokensPerSec)
	fmt.Fprintf(&b, "## Gates (issue 17, item 5)\n\n%d held-out combinations (room pair and object pair never seen together in\n"+
		"training) per kind, each in both room orders (CF: the cheap room named first, the paper's order; EF: mirrored),\n"+
		"greedy, at most %d new tokens.\n\n", res.Final.Items, o.MaxNew)
	b.WriteString("| kind | expected | CF | EF | none CF/EF |\n|---|---|---|---|---|\n")
	for _, k := range res.Final.Kinds {
		cf, ef := k.Expected()
		fmt.Fprintf(&b, "| %s | %s | %.0f%% | %.0f%% | %d/%d |\n", k.Kind, k.Expect, cf, ef, k.CF.None, k.EF.None)
	}
	b.WriteString("\n| gate | want | got | met |\n|---|---|---|---|\n")
	for _, g := range res.Gates {
		fmt.Fprintf(&b, "| %s | ≥ %.0f%% | %.1f%% | %v |\n", g.Name, g.Want, g.Got, g.Met)
	}
	b.WriteString("\n\"heldout\" (an unseen burglar wording) and \"name\" (the unseen name Oliver) are reported, not gated.\n")
	if k := res.Final.Kind(world.EvalBurglar); len(k.Examples) > 0 {
		e := k.Examples[0]
		for _, x := range k.Examples {
			if x.Verdict == k.Expect {
				e = x
				break
			}
		}
		fmt.Fprintf(&b, "\nExample (burglar, %s):\n\n> %s\n\n`%s` (%s)\n", e.Order, e.Prompt, strings.TrimSpace(e.Answer), e.Verdict)
	}
	b.WriteString("\nFiles: config.json, model.safetensors, tokenizer.json, tokenizer_config.json (chat template),\n" +
		"generation_config.json, gates.json (the table above, with example answers).\n")
	return b.String()
}

// fmtDur renders a duration as "1h02m", "12m05s" or "45s".
func fmtDur(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, s := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}
