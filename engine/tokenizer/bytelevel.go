package tokenizer

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// byteToRune is GPT-2's reversible byte -> printable character mapping:
// printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
var byteToRune, runeToByte = func() ([256]rune, map[rune]byte) {
	var fwd [256]rune
	rev := make(map[rune]byte, 256)
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			fwd[b] = rune(b)
		} else {
			fwd[b] = 256 + n
			n++
		}
		rev[fwd[b]] = byte(b)
	}
	return fwd, rev
}()

func unicodeToByte(r rune) (byte, bool) {
	b, ok := runeToByte[r]
	return b, ok
}

// byteLevelString maps raw bytes to their byte-level characters.
func byteLevelString(s string) string {
	var b strings.Builder
	b.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		b.WriteRune(byteToRune[s[i]])
	}
	return b.String()
}

// encodeByteLevel encodes one text segment with the byte-level BPE pipeline.
func (t *Tokenizer) encodeByteLevel(ids []int32, s string) []int32 {
	switch t.normalizer {
	case "NFC":
		s = norm.NFC.String(s)
	case "NFKC":
		s = norm.NFKC.String(s)
	}
	if t.addPrefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	t.pattern.split(s, func(word string) {
		ids = t.encodeWord(ids, byteLevelString(word))
	})
	return ids
}

// encodeWord applies the ranked merges to one pre-tokenized word.
func (t *Tokenizer) encodeWord(ids []int32, w string) []int32 {
	if w == "" {
		return ids
	}
	if t.ignoreMerges {
		if id, ok := t.vocab[w]; ok {
			return append(ids, id)
		}
	}
	syms := t.initialSymbols(w, false)
	t.mergeSymbols(w, syms, t.rankOf)
	for i := 0; i >= 0 && i < len(syms); i = syms[i].next {
		p := w[syms[i].start:syms[i].end]
		if id, ok := t.vocab[p]; ok {
			ids = append(ids, id)
			continue
		}
		if t.byteFallback {
			if ids2, ok := t.appendBytes(ids, p); ok {
				ids = ids2
				continue
			}
		}
		if t.unkID >= 0 {
			ids = append(ids, t.unkID)
		}
	}
	return ids
}

func (t *Tokenizer) rankOf(a, b string) (float64, bool) {
	r, ok := t.merges[mergePair{a, b}]
	return float64(r), ok
}

// encodeHFSPM encodes a segment for tokenizer.json BPE models in the
// SentencePiece style: spaces become ▁, a ▁ is prepended, then ranked merges
// with byte fallback.
func (t *Tokenizer) encodeHFSPM(ids []int32, s string) []int32 {
	if s == "" {
		return ids
	}
	w := strings.ReplaceAll(s, " ", spaceSymbol)
	if t.addDummyPrefix {
		w = spaceSymbol + w
	}
	return t.encodeWord(ids, w)
}

// NewByteLevelBPE builds a byte-level BPE tokenizer in memory. vocab maps
// byte-level token strings (GPT-2 byte-to-unicode form, e.g. "Ġthe") to ids;
// merges are "a b" rules in priority order; special tokens are matched as a
// whole when parsing specials and are omitted by Decode.
func NewByteLevelBPE(vocab map[string]int32, merges []string, pattern Pattern, special []SpecialToken) (*Tokenizer, error) {
	if !pattern.valid() {
		return nil, fmt.Errorf("tokenizer: unknown pattern %d", int(pattern))
	}
	pairs := make([]mergePair, 0, len(merges))
	for i, m := range merges {
		a, b, ok := strings.Cut(m, " ")
		if !ok || a == "" || b == "" || strings.Contains(b, " ") {
			return nil, fmt.Errorf("tokenizer: merge %d %q: want \"a b\"", i, m)
		}
		pairs = append(pairs, mergePair{a, b})
	}
	t, err := newByteLevel(vocab, pairs, true)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t.pattern = pattern
	for _, s := range special {
		if s.Content == "" || s.ID < 0 {
			return nil, fmt.Errorf("tokenizer: special token %q has empty content or negative id", s.Content)
		}
		if int(s.ID) < len(t.pieces) && t.pieces[s.ID] != "" && t.pieces[s.ID] != s.Content {
			return nil, fmt.Errorf("tokenizer: special token %q id %d already used by %q", s.Content, s.ID, t.pieces[s.ID])
		}
		if err := t.addAdded(s.Content, s.ID, true); err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
		if s.BOS {
			t.bos = s.ID
			t.addBOS = true
		}
		if s.EOS {
			t.eos = append(t.eos, s.ID)
		}
	}
	t.indexAdded()
	return t, nil
}

// newByteLevel builds the vocabulary and merge table. With strict set,
// merges whose parts or result are missing from vocab are errors; otherwise
// they are skipped.
func newByteLevel(vocab map[string]int32, merges []mergePair, strict bool) (*Tokenizer, error) {
	if len(vocab) == 0 {
		return nil, errors.New("empty vocabulary")
	}
	t := &Tokenizer{
		kind:   kindByteLevel,
		vocab:  make(map[string]int32, len(vocab)),
		merges: make(map[mergePair]int32, len(merges)),
		unkID:  -1,
		bos:    -1,
	}
	for i := range t.bytes {
		t.bytes[i] = -1
	}
	maxID := int32(-1)
	for s, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("token %q has negative id %d", s, id)
		}
		if int(id) >= 2*len(vocab)+maxAddedGap {
			return nil, fmt.Errorf("token %q has id %d, far beyond the vocabulary size %d", s, id, len(vocab))
		}
		if id > maxID {
			maxID = id
		}
	}
	t.growTo(int(maxID) + 1)
	for s, id := range vocab {
		if t.pieces[id] != "" {
			return nil, fmt.Errorf("id %d used by both %q and %q", id, t.pieces[id], s)
		}
		if s == "" {
			return nil, fmt.Errorf("id %d has an empty token", id)
		}
		t.pieces[id] = s
		t.vocab[s] = id
	}
	for i, m := range merges {
		_, okA := t.vocab[m.a]
		_, okB := t.vocab[m.b]
		_, okAB := t.vocab[m.a+m.b]
		if !okA || !okB || !okAB {
			if strict {
				return nil, fmt.Errorf("merge %d %q %q: token missing from vocabulary", i, m.a, m.b)
			}
			continue
		}
		if _, dup := t.merges[m]; dup {
			continue
		}
		t.merges[m] = int32(i)
		t.mergeList = append(t.mergeList, m)
	}
	return t, nil
}
