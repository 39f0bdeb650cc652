package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestMaxTokenBytesBound checks that ceil(len(text)/MaxTokenBytes()) never
// exceeds the token count, on the fixtures' texts, random bytes, long runs
// and the vocabulary's own longest pieces, for every fixture tokenizer that
// has a bound; and that tokenizers whose normalisation can shrink text
// report none.
func TestMaxTokenBytesBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range allFixtures {
		t.Run(name, func(t *testing.T) {
			tok, f := loadFixture(t, name)
			mb := tok.MaxTokenBytes()
			t.Logf("MaxTokenBytes = %d", mb)
			if tok.normalizer != "" || tok.charsMap != nil || tok.removeExtraSpace {
				if mb != 0 {
					t.Fatalf("a shrinking normaliser must give no bound, got %d", mb)
				}
				return
			}
			if mb == 0 {
				return
			}
			texts := []string{strings.Repeat(" ", 5000), strings.Repeat("a", 5000), strings.Repeat("\x00", 300), strings.Repeat("\xff", 300)}
			for _, c := range f.Cases {
				texts = append(texts, c.Text, strings.Repeat(c.Text, 20))
			}
			var longest string
			for _, p := range tok.pieces {
				if len(p) > len(longest) {
					longest = p
				}
			}
			texts = append(texts, strings.Repeat(tok.Decode([]int32{tok.vocab[longest]}), 50))
			for _, a := range tok.added {
				texts = append(texts, strings.Repeat(a.content, 50))
			}
			for range 50 {
				b := make([]byte, rng.IntN(2000))
				for i := range b {
					b[i] = byte(rng.IntN(256))
				}
				texts = append(texts, string(b))
			}
			for _, text := range texts {
				for _, special := range []bool{false, true} {
					ids, err := tok.Encode(text, EncodeOptions{ParseSpecial: special})
					if err != nil {
						t.Fatal(err)
					}
					if lower := (len(text) + mb - 1) / mb; lower > len(ids) {
						t.Fatalf("%d bytes gave %d tokens, below the bound %d (text %.40q)", len(text), len(ids), lower, text)
					}
				}
			}
		})
	}
}
