package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNewByteLevelBPEAndMarshal(t *testing.T) {
	vocab := map[string]int32{}
	for b := 0; b < 256; b++ {
		vocab[string(byteToRune[b])] = int32(b)
	}
	merges := []string{"h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"}
	for _, m := range merges {
		vocab[strings.ReplaceAll(m, " ", "")] = int32(len(vocab))
	}
	special := []SpecialToken{
		{ID: 300, Content: "<|bos|>", BOS: true},
		{ID: 301, Content: "<|eos|>", EOS: true},
	}
	for _, p := range []Pattern{PatternGPT2, PatternSmolLM, PatternLlama3, PatternQwen2} {
		tok, err := NewByteLevelBPE(vocab, merges, p, special)
		if err != nil {
			t.Fatal(err)
		}
		ids, _ := tok.Encode("hello wo<|eos|>", EncodeOptions{AddSpecial: true, ParseSpecial: true})
		hello, _ := tok.TokenID("hello")
		gwo, _ := tok.TokenID("Ġwo")
		if want := []int32{300, hello, gwo, 301}; !slices.Equal(ids, want) {
			t.Errorf("%v: ids = %v, want %v", p, ids, want)
		}
		if got := tok.Decode(ids); got != "hello wo" {
			t.Errorf("%v: Decode = %q", p, got)
		}
		if tok.VocabSize() != 302 || tok.BOS() != 300 || !slices.Equal(tok.EOS(), []int32{301}) {
			t.Errorf("%v: VocabSize/BOS/EOS = %d %d %v", p, tok.VocabSize(), tok.BOS(), tok.EOS())
		}

		// Write tokenizer.json + tokenizer_config.json and load them back.
		dir := t.TempDir()
		js, err := tok.MarshalTokenizerJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(js) {
			t.Fatalf("invalid JSON:\n%s", js)
		}
		cfg, err := tok.MarshalTokenizerConfigJSON()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "tokenizer.json"), js, 0o644)
		os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644)
		back, err := Load(dir)
		if err != nil {
			t.Fatalf("%v: reload: %v\n%s", p, err, js)
		}
		for _, s := range []string{"hello world 123 <|bos|> x", "  hello\n\n  wo  ", "日本 😀"} {
			opts := EncodeOptions{AddSpecial: true, ParseSpecial: true}
			a, _ := tok.Encode(s, opts)
			b, _ := back.Encode(s, opts)
			if !slices.Equal(a, b) {
				t.Errorf("%v: reloaded Encode(%q) = %v, want %v", p, s, b, a)
			}
		}
		if back.BOS() != 300 || !slices.Equal(back.EOS(), []int32{301}) || !back.IsSpecial(301) {
			t.Errorf("%v: reloaded BOS/EOS = %d %v", p, back.BOS(), back.EOS())
		}
		// Only the tokenizer.json: the EOS falls back to nothing known, BOS
		// comes from the post-processor.
		bare, err := ParseTokenizerJSON(js)
		if err != nil || bare.BOS() != 300 || !bare.AddsBOS() {
			t.Errorf("%v: ParseTokenizerJSON: %v, BOS %d", p, err, bare.BOS())
		}
	}
	if _, err := NewByteLevelBPE(vocab, []string{"x y"}, PatternGPT2, nil); err == nil {
		t.Error("merge with unknown tokens accepted")
	}
	if _, err := NewByteLevelBPE(vocab, merges, Pattern(0), nil); err == nil {
		t.Error("zero pattern accepted")
	}
	if _, err := NewByteLevelBPE(vocab, merges, PatternGPT2, []SpecialToken{{ID: 5, Content: "<x>"}}); err == nil {
		t.Error("special token colliding with a vocab id accepted")
	}
}

func TestMarshalFixtureRoundTrip(t *testing.T) {
	for _, name := range bpeFixtures {
		tok, f := loadFixture(t, name)
		js, err := tok.MarshalTokenizerJSON()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseTokenizerJSON(js)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, c := range f.Cases {
			got, _ := back.Encode(c.Text, EncodeOptions{})
			if !slices.Equal(got, c.IDs) {
				t.Errorf("%s: re-marshalled Encode(%q) = %v, want %v", name, c.Text, got, c.IDs)
			}
		}
	}
	spm, _ := loadFixture(t, "spm_llama")
	if _, err := spm.MarshalTokenizerJSON(); err == nil {
		t.Error("MarshalTokenizerJSON accepted a SentencePiece model")
	}
}

// TestHFSentencePieceJSON converts the SentencePiece fixture into the
// tokenizer.json form used by Hugging Face for Llama-2 (merges ranked by the
// merged piece's score) and checks both give the same ids on text that
// nmt_nfkc leaves alone.
func TestHFSentencePieceJSON(t *testing.T) {
	spm, _ := loadFixture(t, "spm_llama")
	vocab := map[string]int32{}
	for id, p := range spm.pieces {
		vocab[p] = int32(id)
	}
	type m struct {
		a, b  string
		score float32
		id    int32
	}
	var ms []m
	for id, p := range spm.pieces {
		if spm.attrs[id] != 0 {
			continue
		}
		for i := 1; i < len(p); i++ {
			if !utf8.RuneStart(p[i]) {
				continue
			}
			if _, ok := vocab[p[:i]]; !ok {
				continue
			}
			if _, ok := vocab[p[i:]]; !ok {
				continue
			}
			ms = append(ms, m{p[:i], p[i:], spm.scores[id], int32(id)})
		}
	}
	sort.SliceStable(ms, func(i, j int) bool {
		if ms[i].score != ms[j].score {
			return ms[i].score > ms[j].score
		}
		return ms[i].id < ms[j].id
	})
	var merges [][2]string
	for _, x := range ms {
		merges = append(merges, [2]string{x.a, x.b})
	}
	forms := map[string]string{
		"normalizer": `"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": null`,
		"metaspace":  `"normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}`,
	}
	vj, _ := json.Marshal(vocab)
	mj, _ := json.Marshal(merges)
	for form, pre := range forms {
		js := fmt.Sprintf(`{"added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
			%s, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
			"model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true, "vocab": %s, "merges": %s}}`, pre, vj, mj)
		hf, err := ParseTokenizerJSON([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", form, err)
		}
		for _, s := range []string{"Hello world", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト", "Emoji 😀 🎉", "Café naïve résumé", "Prices: 1,024.99"} {
			want := mustEncode(t, spm, s)
			got := mustEncode(t, hf, s)
			if !slices.Equal(got, want) {
				t.Errorf("%s: Encode(%q) = %v, want %v", form, s, got, want)
			}
			if d := hf.Decode(got); d != s {
				t.Errorf("%s: Decode = %q, want %q", form, d, s)
			}
			withBOS, _ := hf.Encode(s, EncodeOptions{AddSpecial: true})
			if withBOS[0] != 1 {
				t.Errorf("%s: no BOS: %v", form, withBOS)
			}
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); err == nil || !strings.HasPrefix(err.Error(), "tokenizer: ") {
		t.Errorf("empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.model"), []byte("\x0a\xff\xff\xff\x0fjunk"), 0o644)
	if _, err := Load(dir); err == nil {
		t.Error("corrupt tokenizer.model accepted")
	}
	js := `{"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(js), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "Whitespace") {
		t.Errorf("unknown pre-tokenizer: %v", err)
	}
	js = `{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"}, {"type": "ByteLevel", "use_regex": false}]}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`
	if _, err := ParseTokenizerJSON([]byte(js)); err == nil || !strings.Contains(err.Error(), `\\w+`) {
		t.Errorf("unknown split regex: %v", err)
	}
	if _, err := ParseTokenizerJSON([]byte(`{"model": {"type": "Unigram"}}`)); err == nil {
		t.Error("unigram accepted")
	}
	// Every truncation of a real model must fail cleanly or load.
	data, err := os.ReadFile(filepath.Join(fixtureRoot, "spm_gemma", "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(data); n += 7 {
		if tok, err := ParseSentencePiece(data[:n]); err == nil {
			tok.Encode("hello <start_of_turn> 😀", EncodeOptions{AddSpecial: true, ParseSpecial: true})
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	text := strings.Repeat("The quick brown fox jumps over the lazy dog. 日本語のテキスト 12345 😀\n", 200)
	for _, name := range []string{"spm_llama", "bpe_llama3"} {
		tok, _ := loadFixture(b, name)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				tok.Encode(text, EncodeOptions{})
			}
		})
	}
}
