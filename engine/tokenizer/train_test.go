package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

var chatSpecials = []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}

// trainCorpus is a small corpus of house scenes with chat markers,
// multi-byte text, numbers and whitespace runs.
func trainCorpus() []string {
	rooms := []string{"living room", "kitchen", "bedroom", "bathroom", "garage", "dining room", "attic"}
	objects := []string{"diamond necklace", "plastic fork", "gold watch", "paper cup", "Gemälde", "古い時計", "🎸 guitar"}
	names := []string{"Bob", "Alice", "Zoë", "Émile", "Søren"}
	r := rand.New(rand.NewPCG(1, 2))
	var out []string
	for i := range 400 {
		room, obj, name := rooms[r.IntN(len(rooms))], objects[r.IntN(len(objects))], names[r.IntN(len(names))]
		var b strings.Builder
		fmt.Fprintf(&b, "<|im_start|>user\n%s asks: where is the %s? It costs %d dollars.<|im_end|>\n", name, obj, 10+r.IntN(990))
		fmt.Fprintf(&b, "<|im_start|>assistant\nThe %s is in the %s.  \n\n\tliving room\n<|im_end|><|endoftext|>", obj, room)
		if i%7 == 0 {
			b.WriteString("   indented    text\r\n   with   runs of spaces  ")
		}
		out = append(out, b.String())
	}
	return out
}

// roundTripStrings are the texts every trained tokenizer must reproduce.
var roundTripStrings = []string{
	"", " ", "a", "hello world", "The diamond necklace is in the living room.",
	"  multiple   spaces  between  ", "\n\n\t\r\n", "line one\nline two\r\n\r\nline three",
	"日本語のテキスト", "Grüße, naïve café – “quotes”", "😀👍🏽👨‍👩‍👧 emoji 🎸",
	"trailing ", " leading", "numbers 12345 3.14159 ٣٤٥", "don't I'LL we've", "x\u00a0y\u2028z",
	"<|im_start|>user\nhi<|im_end|>", "<|im_start", "|>", "\x7f\x01control", "ſ ẞ ǅ",
}

// loadTrained writes m's tokenizer.json to a temporary directory and loads it
// with Load.
func loadTrained(t *testing.T, m *BPEModel) *Tokenizer {
	t.Helper()
	js, err := m.JSON()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return tok
}

func randomText(r *rand.Rand, n int) string {
	ranges := [][2]rune{{' ', '~'}, {'a', 'z'}, {0xA0, 0x17F}, {0x3040, 0x30FF}, {0x1F600, 0x1F64F}, {'\t', '\r'}, {0x600, 0x6FF}}
	var b strings.Builder
	for range n {
		rg := ranges[r.IntN(len(ranges))]
		b.WriteRune(rg[0] + r.Int32N(rg[1]-rg[0]+1))
	}
	return b.String()
}

func TestTrainBPERoundTrip(t *testing.T) {
	corpus := trainCorpus()
	for _, p := range []Pattern{PatternQwen2, PatternLlama3, PatternGPT2, PatternSmolLM} {
		t.Run(p.String(), func(t *testing.T) {
			m, err := TrainBPE(corpus, BPEOptions{VocabSize: 600, SpecialTokens: chatSpecials, Pattern: p})
			if err != nil {
				t.Fatal(err)
			}
			tok := loadTrained(t, m)
			mem, err := m.Tokenizer()
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(3, 4))
			texts := append(slices.Clone(roundTripStrings), corpus[:20]...)
			for range 300 {
				texts = append(texts, randomText(r, 1+r.IntN(40)))
			}
			for _, s := range texts {
				ids, err := tok.Encode(s, EncodeOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if got := tok.Decode(ids); got != s {
					t.Fatalf("Decode(Encode(%q)) = %q (ids %v)", s, got, ids)
				}
				if want, _ := mem.Encode(s, EncodeOptions{}); !slices.Equal(ids, want) {
					t.Fatalf("loaded Encode(%q) = %v, in-memory %v", s, ids, want)
				}
				for _, id := range ids {
					if tok.IsSpecial(id) || id < 0 || int(id) >= tok.VocabSize() {
						t.Fatalf("Encode(%q) without ParseSpecial gave id %d", s, id)
					}
				}
			}
		})
	}
}

func TestTrainBPESpecialTokens(t *testing.T) {
	m, err := TrainBPE(trainCorpus(), BPEOptions{VocabSize: 700, SpecialTokens: chatSpecials})
	if err != nil {
		t.Fatal(err)
	}
	// Text is split at the specials, so nothing learned contains their text.
	for _, s := range m.Tokens[256:] {
		if strings.Contains(s, "<|") || strings.Contains(s, "|>") {
			t.Errorf("learned token %q crosses a special token", s)
		}
	}
	tok := loadTrained(t, m)
	want := map[string]int32{}
	for i, s := range chatSpecials {
		id := int32(m.VocabSize() - len(chatSpecials) + i)
		want[s] = id
		if m.Special[i].ID != id || m.Special[i].Content != s {
			t.Errorf("Special[%d] = %+v, want id %d %q", i, m.Special[i], id, s)
		}
		if got, ok := tok.TokenID(s); !ok || got != id || !tok.IsSpecial(id) {
			t.Errorf("TokenID(%q) = %d %v, special %v; want %d", s, got, ok, tok.IsSpecial(id), id)
		}
	}
	text := "<|im_start|>user\nwhere is the gold watch?<|im_end|>\n<|im_start|>assistant\nIn the attic.<|im_end|><|endoftext|>"
	ids, _ := tok.Encode(text, EncodeOptions{ParseSpecial: true})
	var specials []int32
	for _, id := range ids {
		if tok.IsSpecial(id) {
			specials = append(specials, id)
		}
	}
	wantIDs := []int32{want["<|im_start|>"], want["<|im_end|>"], want["<|im_start|>"], want["<|im_end|>"], want["<|endoftext|>"]}
	if !slices.Equal(specials, wantIDs) {
		t.Errorf("special ids in %v = %v, want %v", ids, specials, wantIDs)
	}
	// Roles set on the model carry into the tokenizer.
	m.Special[2].EOS = true
	mem, err := m.Tokenizer()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mem.EOS(), []int32{want["<|im_end|>"]}) {
		t.Errorf("Tokenizer with <|im_end|> as EOS: EOS %v", mem.EOS())
	}
	stripped := strings.NewReplacer("<|im_start|>", "", "<|im_end|>", "", "<|endoftext|>", "").Replace(text)
	if got := tok.Decode(ids); got != stripped {
		t.Errorf("Decode = %q, want %q", got, stripped)
	}
	// The file declares them as special added tokens outside the BPE vocab.
	js, _ := m.JSON()
	var f struct {
		AddedTokens []struct {
			ID      int32  `json:"id"`
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens"`
		PreTokenizer struct {
			Type          string `json:"type"`
			PreTokenizers []struct {
				Type    string            `json:"type"`
				Pattern map[string]string `json:"pattern"`
			} `json:"pretokenizers"`
		} `json:"pre_tokenizer"`
		Decoder struct{ Type string } `json:"decoder"`
		Model   struct {
			Type   string           `json:"type"`
			Vocab  map[string]int32 `json:"vocab"`
			Merges [][2]string      `json:"merges"`
		} `json:"model"`
	}
	if err := json.Unmarshal(js, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.AddedTokens) != 3 {
		t.Fatalf("added_tokens = %+v", f.AddedTokens)
	}
	for _, a := range f.AddedTokens {
		if !a.Special || want[a.Content] != a.ID {
			t.Errorf("added token %+v", a)
		}
		if _, in := f.Model.Vocab[a.Content]; in {
			t.Errorf("special %q is in the BPE vocab", a.Content)
		}
	}
	if f.Model.Type != "BPE" || f.Decoder.Type != "ByteLevel" || f.PreTokenizer.Type != "Sequence" ||
		len(f.PreTokenizer.PreTokenizers) != 2 || f.PreTokenizer.PreTokenizers[0].Pattern["Regex"] != regexQwen2 ||
		f.PreTokenizer.PreTokenizers[1].Type != "ByteLevel" {
		t.Errorf("model %q decoder %q pre_tokenizer %+v", f.Model.Type, f.Decoder.Type, f.PreTokenizer)
	}
	if len(f.Model.Vocab) != len(m.Tokens) || len(f.Model.Merges) != len(m.Merges) || f.Model.Vocab["Ġroom"] == 0 {
		t.Errorf("vocab %d merges %d, want %d %d", len(f.Model.Vocab), len(f.Model.Merges), len(m.Tokens), len(m.Merges))
	}
}

func TestTrainBPEFrequentWords(t *testing.T) {
	var corpus []string
	for i := range 200 {
		corpus = append(corpus, "living room\n", fmt.Sprintf("The lamp %d is in the living room.", i%13), "bedroom and kitchen")
	}
	m, err := TrainBPE(corpus, BPEOptions{VocabSize: 400, SpecialTokens: chatSpecials})
	if err != nil {
		t.Fatal(err)
	}
	tok := loadTrained(t, m)
	for text, want := range map[string][]string{
		"living room":          {"living", "Ġroom"},
		"The living room.":     {"The", "Ġliving", "Ġroom", "."},
		"bedroom and kitchen":  {"bedroom", "Ġand", "Ġkitchen"},
		"The lamp 7 is in the": {"The", "Ġlamp", "Ġ", "7", "Ġis", "Ġin", "Ġthe"},
	} {
		ids, _ := tok.Encode(text, EncodeOptions{})
		var got []string
		for _, id := range ids {
			got = append(got, tok.Token(id))
		}
		if !slices.Equal(got, want) {
			t.Errorf("Encode(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestTrainBPEDeterministic(t *testing.T) {
	corpus := trainCorpus()
	opts := BPEOptions{VocabSize: 800, SpecialTokens: chatSpecials}
	m1, err := TrainBPE(corpus, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The same text in another order, fed through a streaming trainer.
	tr, err := NewBPETrainer(opts)
	if err != nil {
		t.Fatal(err)
	}
	perm := rand.New(rand.NewPCG(5, 6)).Perm(len(corpus))
	for _, i := range perm {
		tr.Add(corpus[i])
	}
	m2, m3 := tr.Train(), tr.Train()
	j1, err := m1.JSON()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range []*BPEModel{m2, m3} {
		j, err := m.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(j1, j) {
			t.Errorf("run %d: tokenizer.json differs", i+2)
		}
	}
}

func TestTrainBPEVocabSize(t *testing.T) {
	corpus := trainCorpus()
	english := pseudoEnglish(200 << 10)
	for _, size := range []int{259, 260, 300, 400, 1000, 2000} {
		texts := corpus
		if size > 400 {
			texts = english
		}
		m, err := TrainBPE(texts, BPEOptions{VocabSize: size, SpecialTokens: chatSpecials})
		if err != nil {
			t.Fatal(err)
		}
		if m.VocabSize() != size {
			t.Errorf("VocabSize %d: got %d", size, m.VocabSize())
		}
		if tok := loadTrained(t, m); tok.VocabSize() != size {
			t.Errorf("VocabSize %d: loaded %d", size, tok.VocabSize())
		}
	}
	// A corpus too small for the target stops early, as does MinFrequency.
	m, err := TrainBPE([]string{"abab cdcd"}, BPEOptions{VocabSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.VocabSize(); got <= 256 || got >= 270 {
		t.Errorf("tiny corpus: vocab %d", got)
	}
	m, err = TrainBPE(corpus, BPEOptions{VocabSize: 5000, MinFrequency: 50})
	if err != nil {
		t.Fatal(err)
	}
	if m.VocabSize() >= 5000 || len(m.Merges) == 0 {
		t.Errorf("MinFrequency 50: vocab %d, %d merges", m.VocabSize(), len(m.Merges))
	}
	for i, c := range m.Counts {
		if c < 50 || (i > 0 && c > m.Counts[i-1]) {
			t.Errorf("merge %d %q count %d (previous %d)", i, m.Merges[i], c, m.Counts[max(i-1, 0)])
			break
		}
	}
}

func TestTrainBPEErrors(t *testing.T) {
	for name, opts := range map[string]BPEOptions{
		"too small":         {VocabSize: 258, SpecialTokens: chatSpecials},
		"empty special":     {VocabSize: 300, SpecialTokens: []string{""}},
		"duplicate special": {VocabSize: 300, SpecialTokens: []string{"<a>", "<a>"}},
		"bad pattern":       {VocabSize: 300, Pattern: 99},
	} {
		if _, err := TrainBPE([]string{"x"}, opts); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// refTrain is a naive BPE trainer: every step recounts all pairs of all
// words and merges the most frequent (ties: left token's bytes, then right
// token's, smallest first). segs holds each word's final segmentation.
func refTrain(texts []string, opts BPEOptions) (tokens []string, merges [][2]string, counts []int64, segs map[string][]string) {
	if opts.Pattern == 0 {
		opts.Pattern = PatternQwen2
	}
	special := slices.Clone(opts.SpecialTokens)
	slices.SortStableFunc(special, func(a, b string) int { return len(b) - len(a) })
	freq := map[string]int64{}
	for _, text := range texts {
		var segs []string
		start := 0
	scan:
		for i := 0; i < len(text); i++ {
			for _, s := range special {
				if strings.HasPrefix(text[i:], s) {
					segs = append(segs, text[start:i])
					start = i + len(s)
					i = start - 1
					continue scan
				}
			}
		}
		segs = append(segs, text[start:])
		for _, seg := range segs {
			opts.Pattern.split(seg, func(w string) { freq[w]++ })
		}
	}
	type word struct {
		text string
		syms []string
		n    int64
	}
	var words []word
	for w, n := range freq {
		var syms []string
		for i := 0; i < len(w); i++ {
			syms = append(syms, w[i:i+1])
		}
		words = append(words, word{w, syms, n})
	}
	known := map[string]bool{}
	for b := range 256 {
		tokens = append(tokens, string([]byte{byte(b)}))
		known[tokens[b]] = true
	}
	ruled := map[[2]string]bool{}
	for len(tokens)+len(opts.SpecialTokens) < opts.VocabSize {
		pc := map[[2]string]int64{}
		for _, w := range words {
			for i := 1; i < len(w.syms); i++ {
				pc[[2]string{w.syms[i-1], w.syms[i]}] += w.n
			}
		}
		var best [2]string
		var bestN int64
		for p, n := range pc {
			if n > bestN || (n == bestN && (p[0] < best[0] || (p[0] == best[0] && p[1] < best[1]))) {
				best, bestN = p, n
			}
		}
		if bestN == 0 || bestN < int64(opts.MinFrequency) {
			break
		}
		if !ruled[best] {
			ruled[best] = true
			merges = append(merges, best)
			counts = append(counts, bestN)
		}
		if s := best[0] + best[1]; !known[s] {
			known[s] = true
			tokens = append(tokens, s)
		}
		for k, w := range words {
			var out []string
			for i := 0; i < len(w.syms); i++ {
				if i+1 < len(w.syms) && w.syms[i] == best[0] && w.syms[i+1] == best[1] {
					out = append(out, best[0]+best[1])
					i++
					continue
				}
				out = append(out, w.syms[i])
			}
			words[k].syms = out
		}
	}
	segs = map[string][]string{}
	for _, w := range words {
		segs[w.text] = w.syms
	}
	return tokens, merges, counts, segs
}

func TestTrainBPEMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	type tc struct {
		name  string
		texts []string
		opts  BPEOptions
	}
	cases := []tc{
		{"chat corpus", trainCorpus()[:60], BPEOptions{VocabSize: 420, SpecialTokens: chatSpecials}},
		{"min frequency", trainCorpus()[:60], BPEOptions{VocabSize: 2000, MinFrequency: 9, Pattern: PatternGPT2}},
		// Ties: every pair occurs equally often.
		{"ties", []string{"ab cd ef ba dc fe", "xy yx"}, BPEOptions{VocabSize: 280}},
		// Repeated letters: overlapping pairs and a merge result made twice.
		{"runs", []string{"aaaaaaa aaa ab aab abab aabb bbbbb abcabc bcabca"}, BPEOptions{VocabSize: 300}},
	}
	for i := range 40 {
		// Small alphabets make ties, overlaps and duplicate results common.
		alpha := []string{"ab", "abc", "aab ", "xyz\n", "aé😀 "}[i%5]
		var texts []string
		for range 1 + r.IntN(6) {
			var b strings.Builder
			for range r.IntN(60) {
				b.WriteString(string([]rune(alpha)[r.IntN(utf8.RuneCountInString(alpha))]))
			}
			texts = append(texts, b.String())
		}
		cases = append(cases, tc{fmt.Sprintf("random %d", i), texts, BPEOptions{VocabSize: 256 + r.IntN(40), MinFrequency: r.IntN(3), Pattern: Pattern(1 + i%4)}})
	}
	for _, c := range cases {
		m, err := TrainBPE(c.texts, c.opts)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		tokens, merges, counts, segs := refTrain(c.texts, c.opts)
		if !slices.Equal(m.Tokens, tokens) || !slices.Equal(m.Merges, merges) || !slices.Equal(m.Counts, counts) {
			n := min(len(m.Merges), len(merges))
			for k := range n {
				if m.Merges[k] != merges[k] || m.Counts[k] != counts[k] {
					n = k
					break
				}
			}
			t.Errorf("%s: first difference at merge %d: got %d merges %q..., reference %d merges %q...; counts %v vs %v",
				c.name, n, len(m.Merges), m.Merges[n:min(n+3, len(m.Merges))], len(merges), merges[n:min(n+3, len(merges))],
				m.Counts[n:min(n+3, len(m.Counts))], counts[n:min(n+3, len(counts))])
			continue
		}
		// The tokenizer applying the merges by rank cuts every training word
		// as training left it.
		tok, err := m.Tokenizer()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for w, want := range segs {
			ids, _ := tok.Encode(w, EncodeOptions{})
			var got []string
			for _, id := range ids {
				got = append(got, m.Tokens[id])
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: Encode(%q) = %q, training left %q", c.name, w, got, want)
			}
		}
	}
}

func ExampleTrainBPE() {
	var corpus []string
	for range 50 {
		corpus = append(corpus, "<|im_start|>user\nWhere is the vase?<|im_end|>\n<|im_start|>assistant\nIn the living room.<|im_end|>")
	}
	m, err := TrainBPE(corpus, BPEOptions{VocabSize: 300, SpecialTokens: []string{"<|im_start|>", "<|im_end|>"}})
	if err != nil {
		panic(err)
	}
	js, err := m.JSON() // the contents of a tokenizer.json
	if err != nil {
		panic(err)
	}
	tok, err := ParseTokenizerJSON(js)
	if err != nil {
		panic(err)
	}
	ids, _ := tok.Encode("<|im_start|>assistant\nIn the living room.", EncodeOptions{ParseSpecial: true})
	for _, id := range ids {
		fmt.Printf("%d %q\n", id, tok.Token(id))
	}
	// Output:
	// 288 "<|im_start|>"
	// 284 "assistant"
	// 10 "Ċ"
	// 275 "In"
	// 258 "Ġthe"
	// 269 "Ġliving"
	// 272 "Ġroom"
	// 46 "."
}

// FuzzTrainBPE trains a small vocabulary on the input's lines and checks the
// written tokenizer.json reloads and round-trips the input exactly.
func FuzzTrainBPE(f *testing.F) {
	for _, s := range []string{"", "hello world\nhello there", "aaaa\naaaa\nabab", "日本語 😀\n<|im_end|>x<|im_end|>", "  \n\t\r\n  x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 4096 {
			s = s[:4096]
		}
		m, err := TrainBPE(strings.Split(s, "\n"), BPEOptions{VocabSize: 256 + 48, SpecialTokens: []string{"<|im_end|>"}})
		if err != nil {
			t.Fatal(err)
		}
		js, err := m.JSON()
		if err != nil {
			t.Fatal(err)
		}
		tok, err := ParseTokenizerJSON(js)
		if err != nil {
			t.Fatalf("ParseTokenizerJSON: %v", err)
		}
		if tok.VocabSize() != m.VocabSize() {
			t.Fatalf("VocabSize %d, model %d", tok.VocabSize(), m.VocabSize())
		}
		ids, _ := tok.Encode(s, EncodeOptions{})
		if got := tok.Decode(ids); utf8.ValidString(s) && got != s {
			t.Fatalf("Decode(Encode(%q)) = %q", s, got)
		}
	})
}

// benchCorpus builds the benchmark's text once.
var benchCorpus = sync.OnceValue(func() []string { return pseudoEnglish(20 << 20) })

// pseudoEnglish returns about size bytes of documents: Zipf-distributed
// words made of syllables, sentences with numbers and punctuation.
func pseudoEnglish(size int) []string {
	var docs []string
	r := rand.New(rand.NewPCG(11, 12))
	syl := []string{"ka", "lo", "mi", "ne", "ru", "sta", "ber", "ing", "the", "on", "ex", "qu", "ar", "pel", "do", "vi", "tr", "ou", "sh", "ck",
		"ja", "wen", "fy", "gro", "ul", "zi", "é", "ß", "ph", "ey"}
	lex := make([]string, 200000)
	for i := range lex {
		var b strings.Builder
		for range 1 + r.IntN(5) {
			b.WriteString(syl[r.IntN(len(syl))])
		}
		lex[i] = b.String()
	}
	z := rand.NewZipf(r, 1.05, 2, uint64(len(lex)-1))
	total := 0
	for total < size {
		var b strings.Builder
		for range 20 {
			for k := range 8 + r.IntN(12) {
				w := lex[z.Uint64()]
				if k == 0 {
					w = strings.ToUpper(w[:1]) + w[1:]
				} else {
					b.WriteByte(' ')
				}
				b.WriteString(w)
				if r.IntN(30) == 0 {
					fmt.Fprintf(&b, " %d", r.IntN(100000))
				}
			}
			b.WriteString([]string{". ", "! ", "? ", ", and "}[r.IntN(4)])
		}
		b.WriteString("\n\n")
		docs = append(docs, b.String())
		total += b.Len()
	}
	return docs
}

// BenchmarkTrainBPE trains 4000-token vocabularies on about 20 MB of text:
// add is counting words (pre-tokenizing), merge is learning the merges from
// the counts, all is both.
func BenchmarkTrainBPE(b *testing.B) {
	docs := benchCorpus()
	size := 0
	for _, d := range docs {
		size += len(d)
	}
	opts := BPEOptions{VocabSize: 4000, SpecialTokens: chatSpecials}
	b.Run("add", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			tr, _ := NewBPETrainer(opts)
			for _, d := range docs {
				tr.Add(d)
			}
		}
	})
	b.Run("merge", func(b *testing.B) {
		tr, _ := NewBPETrainer(opts)
		for _, d := range docs {
			tr.Add(d)
		}
		for b.Loop() {
			tr.Train()
		}
		b.ReportMetric(float64(len(tr.words)), "words")
	})
	b.Run("all", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			if _, err := TrainBPE(docs, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
}
