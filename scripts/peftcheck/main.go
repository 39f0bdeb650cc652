// Command peftcheck writes LoRA adapters with SOO Serve's own PEFT writer,
// next to the logits the cpu executor computes with them, so that
// check.py can load the same files in Hugging Face transformers + PEFT and
// compare. It answers "does an adapter downloaded from SOO Serve load in PEFT
// and mean the same thing there?".
//
//	go run ./scripts/peftcheck -out DIR        # writes DIR/cases.json and DIR/<case>/
//	python3 scripts/peftcheck/check.py DIR     # needs torch, transformers, peft
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/synth"
)

// checkCase is one (model, adapter) pair with SOO Serve's logits.
type checkCase struct {
	Name       string      `json:"name"`
	Model      string      `json:"model"`   // Hugging Face model directory, as given (relative to where check.py runs)
	Adapter    string      `json:"adapter"` // PEFT adapter directory, relative to the output dir
	Tokens     []int32     `json:"tokens"`
	BaseLogits [][]float32 `json:"base_logits"` // [len(tokens), vocab]
	LoRALogits [][]float32 `json:"lora_logits"`
}

func main() {
	out := flag.String("out", "peftcheck-out", "output directory")
	testdata := flag.String("testdata", "testdata", "the repository's testdata directory (models in Hugging Face layout)")
	flag.Parse()
	if err := run(*out, *testdata); err != nil {
		fmt.Fprintln(os.Stderr, "peftcheck:", err)
		os.Exit(1)
	}
}

func run(out, testdata string) error {
	all := []model.Module{model.Q, model.K, model.V, model.O, model.Gate, model.Up, model.Down}
	specs := []struct {
		name, model string
		rank        int
		modules     []model.Module
		rslora      bool
	}{
		{"llama-all-r8", "models/tiny-llama", 8, all, false},
		{"llama-qv-r4-rslora", "models/tiny-llama", 4, []model.Module{model.Q, model.V}, true},
		{"qwen2-all-r8", "models/tiny-qwen2", 8, all, false},
		{"gemma2-qv-r8", "models/tiny-gemma2", 8, []model.Module{model.Q, model.V}, false},
	}
	var cases []checkCase
	for i, s := range specs {
		src := filepath.Join(testdata, s.model)
		m, err := model.Load(src, model.LoadOptions{})
		if err != nil {
			return err
		}
		a := synth.Adapter(m.Config, s.name, s.rank, s.modules, uint64(i+1))
		// Larger weights than synth's, so the adapter moves the logits well
		// above float32 noise and a wrong scale or transpose shows.
		a.RSLoRA = s.rslora
		for _, mods := range a.Layers {
			for _, p := range mods {
				if p == nil {
					continue
				}
				for j := range p.A {
					p.A[j] *= 10
				}
				for j := range p.B {
					p.B[j] *= 10
				}
				p.Scale = lora.Scale(a.Alpha, a.Rank, a.RSLoRA)
			}
		}
		adir := filepath.Join(out, s.name)
		if err := adapters.WriteDir(adir, a, adapters.NewConfig(a, 0, src)); err != nil {
			return err
		}
		// Read the adapter back the way the server does, so what is compared
		// is what the files say.
		back, _, err := adapters.LoadDir(s.name, adir, m.Config)
		if err != nil {
			return fmt.Errorf("%s: reading back: %w", s.name, err)
		}
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		toks := make([]int32, 12)
		for j := range toks {
			toks[j] = int32(rng.IntN(m.Config.VocabSize))
		}
		c := checkCase{Name: s.name, Model: src, Adapter: s.name, Tokens: toks}
		ex := cpu.New(m, cpu.Options{Threads: 1})
		for _, ad := range []*lora.Adapter{nil, back} {
			seq := ex.NewSequence()
			o, err := ex.Forward(context.Background(), []engine.Row{{Seq: seq, Tokens: toks, Adapter: ad, Logits: engine.LogitsAll}})
			seq.Release()
			if err != nil {
				return fmt.Errorf("%s: forward: %w", s.name, err)
			}
			rows := make([][]float32, o[0].Logits.Rows)
			for r := range rows {
				rows[r] = o[0].Logits.Row(r)
			}
			if ad == nil {
				c.BaseLogits = rows
			} else {
				c.LoRALogits = rows
			}
		}
		m.Close()
		cases = append(cases, c)
	}
	b, err := json.Marshal(cases)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "cases.json"), b, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %d cases to %s\n", len(cases), out)
	return nil
}
