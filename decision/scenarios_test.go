package decision

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/overlap"
	"github.com/sooserve/sooserve/testbed/world"
)

func TestParseScenarios(t *testing.T) {
	s, err := ParseScenarios([]byte(`{"conflict": [[{"role":"user","content":"Bob wants to steal it."}]],
		"self": [[{"role":"system","content":"Be brief."},{"role":"user","content":"I want it."}]]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Conflict) != 1 || len(s.Self) != 1 || len(s.Self[0]) != 2 || s.Self[0][1].Content != "I want it." {
		t.Errorf("parsed %+v", s)
	}
	for _, tc := range []struct{ in, msg string }{
		{`{"conflict": [], "self": [[{"role":"user","content":"x"}]]}`, `"conflict" has no conversations`},
		{`{"conflict": [[{"role":"user","content":"x"}]]}`, `"self" has no conversations`},
		{`{"conflict": [[]], "self": [[{"role":"user","content":"x"}]]}`, "conflict[0] has no messages"},
		{`{"conflict": [[{"role":"user","content":" "}]], "self": [[{"role":"user","content":"x"}]]}`, "needs a role and content"},
		{`{"conflict": [[{"role":"user","content":"x"}]], "self": [[{"role":"user","content":"x"}]], "pairs": []}`, "unknown field"},
		{`{"conflict": [[{"role":"user","content":"x"}]], "self": [[{"role":"user","content":"x"}]]} {}`, "trailing data"},
		{`[1]`, "cannot unmarshal"},
	} {
		if _, err := ParseScenarios([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: error %v, want %q", tc.in, err, tc.msg)
		}
	}
}

func TestWorldScenarios(t *testing.T) {
	w := world.New(1, world.Options{})
	s, err := WorldScenarios(w, 3, []world.EvalKind{world.EvalBurglar}, []world.EvalKind{world.EvalSelf, world.EvalSelfGate})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Conflict) != 6 || len(s.Self) != 12 {
		t.Fatalf("%d conflict and %d self conversations, want 6 and 12 (both orders)", len(s.Conflict), len(s.Self))
	}
	items, _ := w.EvalItems(world.EvalBurglar, 3)
	for i, it := range items {
		if c := s.Conflict[i]; len(c) != 1 || c[0].Role != "user" || c[0].Content != it.Messages[0].Content {
			t.Errorf("conflict %d = %+v, want the burglar item %q", i, c, it.Messages[0].Content)
		}
	}
	if !strings.Contains(s.Conflict[0][0].Content, "burglar Bob") || !strings.Contains(s.Self[0][0].Content, "together with yourself") {
		t.Errorf("unexpected prompts: %q / %q", s.Conflict[0][0].Content, s.Self[0][0].Content)
	}
	if _, err := WorldScenarios(w, 3, []world.EvalKind{"bogus"}, []world.EvalKind{world.EvalSelf}); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, err := WorldScenarios(w, 0, []world.EvalKind{world.EvalBurglar}, []world.EvalKind{world.EvalSelf}); err == nil {
		t.Error("n = 0 accepted")
	}
}

func TestEncode(t *testing.T) {
	tok, err := demo.Tokenizer()
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := chat.New(demo.ChatTemplate, "", demo.ImEnd)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sc := &Scenarios{
		Conflict: [][]chat.Message{{{Role: "user", Content: "Bob wants to steal the vase."}}},
		Self:     [][]chat.Message{{{Role: "user", Content: "You want to steal the vase."}}},
	}
	pairs := []overlap.TextPair{{Self: "You intend to steal the vase.", Other: "Bob intends to steal the vase."}}
	enc := func(text string, special bool) []int32 {
		ids, err := tok.Encode(text, tokenizer.EncodeOptions{ParseSpecial: special, AddSpecial: !special})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}

	p, err := Encode(ctx, tok, tpl, sc, pairs, FormatChat)
	if err != nil {
		t.Fatal(err)
	}
	chatOf := func(s string) string { return "<|im_start|>user\n" + s + "<|im_end|>\n<|im_start|>assistant\n" }
	if want := enc(chatOf("Bob wants to steal the vase."), true); !slices.Equal(p.Conflict[0], want) {
		t.Errorf("conflict tokens %v, want the ChatML rendering %v", p.Conflict[0], want)
	}
	if want := enc(chatOf("Bob intends to steal the vase."), true); !slices.Equal(p.Pairs[0].Other, want) {
		t.Errorf("chat fragment tokens %v, want %v", p.Pairs[0].Other, want)
	}

	p, err = Encode(ctx, tok, tpl, sc, pairs, FormatRaw)
	if err != nil {
		t.Fatal(err)
	}
	if want := enc("You intend to steal the vase.", false); !slices.Equal(p.Pairs[0].Self, want) {
		t.Errorf("raw fragment tokens %v, want %v", p.Pairs[0].Self, want)
	}
	if want := enc(chatOf("You want to steal the vase."), true); !slices.Equal(p.Self[0], want) {
		t.Errorf("scenarios must stay in chat format with raw fragments: %v, want %v", p.Self[0], want)
	}

	// Without a chat template: scenarios as plain text, chat fragments refused.
	p, err = Encode(ctx, tok, nil, sc, pairs, FormatRaw)
	if err != nil {
		t.Fatal(err)
	}
	if want := enc("Bob wants to steal the vase.", false); !slices.Equal(p.Conflict[0], want) {
		t.Errorf("plain-text scenario tokens %v, want %v", p.Conflict[0], want)
	}
	if _, err := Encode(ctx, tok, nil, sc, pairs, FormatChat); err == nil || !strings.Contains(err.Error(), "no chat template") {
		t.Errorf("chat format without a template: %v", err)
	}
	if _, err := Encode(ctx, tok, tpl, sc, nil, FormatChat); err == nil {
		t.Error("no pairs accepted")
	}
	if _, err := ParseFormat("full"); err == nil {
		t.Error(`format "full" accepted`)
	}
}
