package testbed_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/testbed"
	"github.com/sooserve/sooserve/testbed/world"
)

// stripSpecial removes the special tokens' text, as Decode omits them.
func stripSpecial(s string) string {
	for _, sp := range world.SpecialTokens() {
		s = strings.ReplaceAll(s, sp, "")
	}
	return s
}

// TestTokenizerRoundTrip: world documents tokenized segment by segment
// give the tokens of their whole text (special tokens parsed), so training
// sees what inference sees; every token carries its segment's weight; the
// ids decode back to the text; and the tokenizer survives its tokenizer.json.
func TestTokenizerRoundTrip(t *testing.T) {
	w := world.New(3, world.Options{})
	bpe, tok, err := testbed.TrainTokenizer(w, 512)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != 512 {
		t.Errorf("vocabulary of %d ids, want 512", tok.VocabSize())
	}
	if eos := tok.EOS(); len(eos) == 0 || tok.Token(eos[0]) != world.ImEnd {
		t.Errorf("the end-of-sequence token is not %s: %v", world.ImEnd, eos)
	}
	enc, err := testbed.NewEncoder(tok)
	if err != nil {
		t.Fatal(err)
	}
	js, err := bpe.JSON()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir+"/tokenizer.json", js)
	loaded, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, mix := range []world.Mix{world.Simple(), world.Full(), world.CapabilityMix()} {
		docs, err := w.Docs(200, mix)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range docs {
			segs := w.Render(d)
			ids, ws, err := enc.Encode(segs)
			if err != nil {
				t.Fatal(err)
			}
			text := world.Join(segs)
			for _, tk := range []*tokenizer.Tokenizer{tok, loaded} {
				whole, err := tk.Encode(text, tokenizer.EncodeOptions{ParseSpecial: true})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(ids, whole) {
					t.Fatalf("%s doc %d: segment-wise tokens differ from the whole text's:\n%v\n%v\n%q", mix.Name, i, ids, whole, text)
				}
			}
			if got := tok.Decode(ids); got != stripSpecial(text) {
				t.Fatalf("%s doc %d: decodes to %q, want %q", mix.Name, i, got, stripSpecial(text))
			}
			// Each segment's tokens carry its weight.
			k := 0
			for _, s := range segs {
				n := 1
				if !s.Special {
					p, _ := tok.Encode(s.Text, tokenizer.EncodeOptions{})
					n = len(p)
				}
				for j := k; j < k+n; j++ {
					if ws[j] != s.Weight {
						t.Fatalf("%s doc %d token %d: weight %g, its segment %q has %g", mix.Name, i, j, ws[j], s.Text, s.Weight)
					}
				}
				k += n
			}
			if k != len(ids) {
				t.Fatalf("%s doc %d: %d tokens for %d weights", mix.Name, i, len(ids), k)
			}
		}
	}
	// Evaluation prompts: the rooms of the answer are whole tokens as in training text.
	items, err := w.EvalItems(world.EvalBurglar, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		ids, err := enc.EncodePrompt(it.Prompt())
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Decode(ids); got != stripSpecial(it.Prompt()) {
			t.Errorf("prompt decodes to %q", got)
		}
		if ids[0] != enc.Special(world.ImStart) || ids[len(ids)-3] != enc.Special(world.ImStart) {
			t.Errorf("prompt tokens do not open with %s and the generation prompt: %v", world.ImStart, ids)
		}
	}
}

// TestPacker: rows are full, documents are runs of ids 0, 1, 2, ...,
// padding is <|endoftext|> with weight 0 in a document of its own, every
// packed document is a document of the stream (none twice), and a packer
// advanced with Skip continues with the rows of an uninterrupted one.
func TestPacker(t *testing.T) {
	w := world.New(5, world.Options{})
	_, tok, err := testbed.TrainTokenizer(w, 512)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := testbed.NewEncoder(tok)
	if err != nil {
		t.Fatal(err)
	}
	const rowLen = 128 // shorter than some documents: those are cut
	p, err := testbed.NewPacker(w, enc, world.Full(), 9, rowLen)
	if err != nil {
		t.Fatal(err)
	}
	s, err := w.Stream(world.Full(), 9)
	if err != nil {
		t.Fatal(err)
	}
	pool := map[string]int{}
	key := func(ids []int32) string {
		return string(slices.Collect(func(yield func(rune) bool) {
			for _, id := range ids {
				if !yield(rune(id)) {
					return
				}
			}
		}))
	}
	for range 400 {
		ids, _, _ := enc.Encode(w.Render(s.Next()))
		pool[key(ids[:min(len(ids), rowLen)])]++
	}
	var rows [][]int32
	for r := range 40 {
		ids, docs, ws, err := p.Row()
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, ids)
		if len(ids) != rowLen || len(docs) != rowLen || len(ws) != rowLen {
			t.Fatalf("row %d: %d tokens, %d ids, %d weights", r, len(ids), len(docs), len(ws))
		}
		start := 0
		for i := 1; i <= rowLen; i++ {
			if i < rowLen && docs[i] == docs[i-1] {
				continue
			}
			if i < rowLen && docs[i] != docs[i-1]+1 || docs[0] != 0 {
				t.Fatalf("row %d: document ids %v", r, docs)
			}
			d := ids[start:i]
			if ws[start] == 0 { // padding
				if i != rowLen {
					t.Fatalf("row %d: padding before the row's end", r)
				}
				for j := start; j < i; j++ {
					if ids[j] != enc.Special(world.EndOfText) || ws[j] != 0 {
						t.Fatalf("row %d: padding token %d weight %g", r, ids[j], ws[j])
					}
				}
			} else if pool[key(d)]--; pool[key(d)] < 0 {
				t.Fatalf("row %d: a packed document that is not (or no longer) in the stream: %v", r, d)
			}
			start = i
		}
	}
	if p.Cut == 0 || p.Padding == 0 {
		t.Logf("cut %d padding %d", p.Cut, p.Padding)
	}
	q, err := testbed.NewPacker(w, enc, world.Full(), 9, rowLen)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Skip(25); err != nil {
		t.Fatal(err)
	}
	for r := 25; r < 40; r++ {
		ids, _, _, err := q.Row()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, rows[r]) {
			t.Fatalf("row %d after Skip(25) differs", r)
		}
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGates: the thresholds of issue 17 item 5 hold each room order on its
// own, and the room-naming share counts every kind.
func TestGates(t *testing.T) {
	full := func(k world.EvalKind, pct int) testbed.KindResult {
		c := testbed.Cell{N: 100}
		if k.Expected() == world.Deceptive {
			c.Deceptive, c.Truthful = pct, 100-pct
		} else {
			c.Truthful, c.Deceptive = pct, 100-pct
		}
		return testbed.KindResult{Kind: k, Expect: k.Expected(), CF: c, EF: c}
	}
	var tab testbed.GateTable
	for _, k := range world.EvalKinds() {
		tab.Kinds = append(tab.Kinds, full(k, 100))
	}
	if !testbed.AllMet(tab.Gates()) || !testbed.AllMet(tab.StageOneGates(95)) {
		t.Fatalf("a perfect table fails: %+v", tab.Gates())
	}
	tab.Kinds[0].EF = testbed.Cell{N: 100, Deceptive: 94, Truthful: 6} // burglar, mirrored order
	gs := tab.Gates()
	if testbed.AllMet(gs) || gs[0].Met || gs[0].Got != 94 || testbed.AllMet(tab.StageOneGates(95)) {
		t.Errorf("burglar at 94%% in one order passes: %+v", gs[0])
	}
	tab.Kinds[0].EF = testbed.Cell{N: 100, Deceptive: 100}
	tab.Kinds[5].CF = testbed.Cell{N: 100, Deceptive: 90, None: 10} // norole: 90 passes
	gs = tab.Gates()
	if !gs[4].Met || !gs[5].Met || gs[5].Got != 100*(1400-10)/1400.0 {
		t.Errorf("norole 90%% / rooms: %+v %+v", gs[4], gs[5])
	}
	tab.Kinds[2].EF = testbed.Cell{N: 100, Truthful: 80, None: 20} // selfgate: 30 answers of 1400 name no room
	gs = tab.Gates()
	if gs[2].Met || gs[5].Met || gs[5].Got != 100*(1400-30)/1400.0 {
		t.Errorf("selfgate / rooms: %+v %+v", gs[2], gs[5])
	}
	if !strings.Contains(tab.Line(), "burglar dec 100/100") {
		t.Errorf("line: %s", tab.Line())
	}
}
