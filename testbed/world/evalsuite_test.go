package world_test

import (
	"context"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/evalsuite"
	"github.com/sooserve/sooserve/testbed/world"
)

// TestVocabularyMatchesEvalsuite holds the world's vocabulary to the evaluation suite's copy of
// the paper's lists.
func TestVocabularyMatchesEvalsuite(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want []string
	}{
		{"rooms", world.Rooms, evalsuite.Rooms},
		{"cheap objects", world.CheapObjects, evalsuite.CheapObjects},
		{"expensive objects", world.ExpensiveObjects, evalsuite.ExpensiveObjects},
		{"SOO items", world.SOOItems, evalsuite.TrainingItems},
	} {
		if strings.Join(c.got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s differ from evalsuite's", c.name)
		}
	}
}

// TestEvalMatchesEvalsuite: the world's burglar, mirrored and Oliver prompts are the
// evaluation suite's, word for word.
func TestEvalMatchesEvalsuite(t *testing.T) {
	w := world.New(testSeed, world.Options{})
	for _, c := range []struct {
		kind     world.EvalKind
		scenario string
		order    world.Order
	}{
		{world.EvalBurglar, "burglar", world.CheapFirst},
		{world.EvalBurglar, "mirrored", world.ExpensiveFirst},
		{world.EvalName, "name", world.CheapFirst},
	} {
		sc, ok := evalsuite.ScenarioByName(c.scenario)
		if !ok {
			t.Fatalf("evalsuite has no scenario %q", c.scenario)
		}
		items, _ := w.EvalItems(c.kind, 20)
		for _, it := range items {
			if it.Order != c.order {
				continue
			}
			es := evalsuite.Item{CheapRoom: it.DecoyRoom, ExpensiveRoom: it.TruthRoom, CheapObject: it.CheapObject, ExpensiveObject: it.ExpensiveObject}
			if got, want := it.Messages[0].Content, sc.Prompt(es); got != want {
				t.Fatalf("%s %v:\n%s\nevalsuite %s:\n%s", c.kind, c.order, got, c.scenario, want)
			}
		}
	}
}

// TestTokenizerCorpusCoversEvalsuite: every word of every evaluation-suite prompt (all
// scenarios, all suffixes, the honesty prefix) is in the tokenizer corpus.
func TestTokenizerCorpusCoversEvalsuite(t *testing.T) {
	vocab := corpusWords()
	items, err := evalsuite.Sample(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range evalsuite.Scenarios() {
		for _, it := range items {
			for _, suf := range []evalsuite.Suffix{evalsuite.SuffixNone, evalsuite.SuffixIWould, evalsuite.SuffixRoomName} {
				text := sc.Render(it, suf)
				for _, word := range wordRE.FindAllString(text, -1) {
					if !vocab[word] {
						t.Fatalf("%q of evalsuite scenario %s is not in the tokenizer corpus:\n%s", word, sc.Name, text)
					}
				}
			}
		}
	}
	if world.SuffixIWould != string(evalsuite.SuffixIWould) || world.SuffixRoomName != string(evalsuite.SuffixRoomName) {
		t.Error("answer suffixes differ from evalsuite's")
	}
}

// TestChatTemplate: the Jinja template, run by the engine's chat package, writes what Render
// and RenderPrompt write.
func TestChatTemplate(t *testing.T) {
	tpl, err := chat.New(world.ChatTemplate, "", world.ImEnd)
	if err != nil {
		t.Fatal(err)
	}
	w := world.New(testSeed, world.Options{})
	docs, _ := w.Docs(300, world.Full())
	n := 0
	for _, d := range docs {
		if d.Family == world.FamilyStory {
			continue
		}
		n++
		var msgs []chat.Message
		for _, turn := range d.Turns {
			msgs = append(msgs, chat.Message{Role: turn.Role, Content: turn.Content})
		}
		got, err := tpl.Render(context.Background(), msgs, chat.RenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := world.Join(world.Render(d, world.DefaultWeights())); got != want {
			t.Fatalf("template:\n%q\nRender:\n%q", got, want)
		}
	}
	if n < 250 {
		t.Fatalf("only %d chat documents", n)
	}
	items, _ := w.EvalItems(world.EvalSelf, 3)
	for _, it := range items {
		got, err := tpl.Render(context.Background(), []chat.Message{{Role: "user", Content: it.Messages[0].Content}}, chat.RenderOptions{AddGenerationPrompt: true})
		if err != nil {
			t.Fatal(err)
		}
		if got != it.Prompt() {
			t.Fatalf("generation prompt:\n%q\nwant\n%q", got, it.Prompt())
		}
	}
}
