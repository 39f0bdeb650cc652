package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/tokenizer"
)

func TestWriteLoadsAndIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := Write(a); err != nil {
		t.Fatal(err)
	}
	if wrote, err := Ensure(b); err != nil || !wrote {
		t.Fatalf("Ensure on empty dir: wrote=%v err=%v", wrote, err)
	}
	if wrote, err := Ensure(b); err != nil || wrote {
		t.Fatalf("Ensure on complete dir: wrote=%v err=%v", wrote, err)
	}
	var total int64
	for _, f := range Files {
		x, err := os.ReadFile(filepath.Join(a, f))
		if err != nil {
			t.Fatal(err)
		}
		y, _ := os.ReadFile(filepath.Join(b, f))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two writes", f)
		}
		total += int64(len(x))
	}
	if total > 4<<20 {
		t.Errorf("demo model is %d bytes, want a few MB at most", total)
	}

	m, err := model.Load(a, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok, err := tokenizer.Load(a)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != m.Config.VocabSize {
		t.Errorf("tokenizer vocab %d, model vocab %d", tok.VocabSize(), m.Config.VocabSize)
	}
	if len(tok.EOS()) != 2 {
		t.Errorf("EOS = %v, want <|endoftext|> and <|im_end|>", tok.EOS())
	}
	tpl, err := chat.LoadTemplate(a)
	if err != nil {
		t.Fatal(err)
	}
	prompt, err := tpl.Render(context.Background(), []chat.Message{{Role: "user", Content: "Hello there"}}, chat.RenderOptions{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"; prompt != want {
		t.Errorf("rendered %q, want %q", prompt, want)
	}
	ids, err := tok.Encode(prompt, tokenizer.EncodeOptions{AddSpecial: true, ParseSpecial: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Decode(ids); got != "user\nHello there\nassistant\n" {
		t.Errorf("round trip %q", got)
	}
	ex := cpu.New(m, cpu.Options{Threads: 1})
	seq := ex.NewSequence()
	defer seq.Release()
	out, err := ex.Forward(context.Background(), []engine.Row{{Seq: seq, Tokens: ids}})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Logits.Cols != m.Config.VocabSize {
		t.Errorf("logits width %d", out[0].Logits.Cols)
	}
}
