package tokenizer

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

var (
	fuzzOnce sync.Once
	fuzzToks map[string]*Tokenizer
)

func fuzzTokenizers(t testing.TB) map[string]*Tokenizer {
	fuzzOnce.Do(func() {
		fuzzToks = map[string]*Tokenizer{}
		for _, name := range allFixtures {
			tok, err := Load(filepath.Join(fixtureRoot, name))
			if err != nil {
				t.Fatal(err)
			}
			fuzzToks[name] = tok
		}
	})
	return fuzzToks
}

// FuzzDecode feeds arbitrary id lists (including negative and out-of-range
// ids) to Decode and the stream decoder.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x10, 0x01})
	f.Add([]byte{0x40, 0x00, 0x41, 0x00, 0x42, 0x01})
	toks := fuzzTokenizers(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ids []int32
		for i := 0; i+2 <= len(raw); i += 2 {
			ids = append(ids, int32(int16(binary.LittleEndian.Uint16(raw[i:]))))
		}
		for name, tok := range toks {
			s := tok.Decode(ids)
			if !utf8.ValidString(s) {
				t.Fatalf("%s: Decode gave invalid UTF-8 %q", name, s)
			}
			d := tok.NewStreamDecoder()
			var b strings.Builder
			for _, id := range ids {
				b.WriteString(d.Add(id))
			}
			b.WriteString(d.Flush())
			if b.String() != s {
				t.Fatalf("%s: stream %q != Decode %q", name, b.String(), s)
			}
		}
	})
}

// FuzzEncodeRoundTrip checks Decode(Encode(s)) == s for the lossless
// tokenizers (byte-level BPE without a normaliser, and the Gemma-style
// SentencePiece model with identity normalisation), and that the lossy ones
// do not panic.
func FuzzEncodeRoundTrip(f *testing.F) {
	for _, s := range []string{"", "hello world", "  x  \n\n y", "I'M 12345", "日本語 😀", "<start_of_turn>a\r\n", "\t\u00a0ſ"} {
		f.Add(s)
	}
	toks := fuzzTokenizers(f)
	lossless := map[string]bool{"bpe_gpt2": true, "bpe_smollm": true, "bpe_llama3": true, "spm_gemma": true}
	f.Fuzz(func(t *testing.T, s string) {
		for name, tok := range toks {
			ids, err := tok.Encode(s, EncodeOptions{})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, id := range ids {
				if id < 0 || int(id) >= tok.VocabSize() {
					t.Fatalf("%s: id %d out of range", name, id)
				}
			}
			got := tok.Decode(ids)
			if lossless[name] && utf8.ValidString(s) && got != s {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, got)
			}
		}
	})
}

// FuzzParseSentencePiece feeds corrupt model bytes to the protobuf reader.
func FuzzParseSentencePiece(f *testing.F) {
	data, err := os.ReadFile(filepath.Join(fixtureRoot, "spm_gemma", "tokenizer.model"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[:512])
	f.Add([]byte{0x0a, 0x05, 0x0a, 0x03, 'a', 'b', 'c'})
	f.Add([]byte{0x12, 0x02, 0x18, 0x02, 0x0a, 0x08, 0x0a, 0x01, 'a', 0x15, 0, 0, 0x80, 0x3f})
	f.Add([]byte{0x1a, 0x06, 0x12, 0x04, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseSentencePiece(b)
		if err != nil {
			return
		}
		ids, _ := tok.Encode("Hello wörld 😀 <s>", EncodeOptions{AddSpecial: true, ParseSpecial: true})
		tok.Decode(ids)
	})
}

// FuzzParseTokenizerJSON feeds arbitrary tokenizer.json text to the parser.
func FuzzParseTokenizerJSON(f *testing.F) {
	f.Add(`{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}`)
	f.Add(`{"added_tokens": [{"id": 5, "content": "<x>", "special": true}], "pre_tokenizer": {"type": "ByteLevel"}, "model": {"vocab": {"a": 0}, "merges": [["a", "a"]]}}`)
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseTokenizerJSON([]byte(s))
		if err != nil {
			return
		}
		ids, _ := tok.Encode("ab <x> 1", EncodeOptions{AddSpecial: true, ParseSpecial: true})
		tok.Decode(ids)
	})
}
