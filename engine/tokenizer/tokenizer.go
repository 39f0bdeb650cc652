// Package tokenizer implements the tokenizers of Hugging Face model
// directories: SentencePiece BPE models (tokenizer.model, Llama-2/Mistral and
// Gemma style), byte-level BPE tokenizer.json files (GPT-2/SmolLM, Llama-3 and
// Qwen2 pre-tokenizers) and the tokenizer.json form of SentencePiece-style BPE
// models with byte fallback.
//
// It is self-contained: protobuf, pre-tokenizer patterns and BPE merging are
// implemented here, only Unicode normalisation comes from golang.org/x/text.
package tokenizer

import (
	"fmt"
	"sort"
	"strings"
)

// modelKind selects the encoding pipeline.
type modelKind int

const (
	kindSPM       modelKind = iota + 1 // SentencePiece tokenizer.model
	kindByteLevel                      // byte-level BPE tokenizer.json
	kindHFSPM                          // tokenizer.json BPE with byte fallback and ▁ for spaces
)

// Per-id attribute bits.
const (
	attrByte        uint8 = 1 << iota // <0xNN> byte-fallback piece
	attrControl                       // SentencePiece control piece (<s>, </s>, ...)
	attrUnknown                       // the unknown piece
	attrUserDefined                   // SentencePiece user-defined piece
	attrUnused                        // SentencePiece unused piece
	attrSpecial                       // special added token
	attrAdded                         // added token (matched as a whole in text)
)

const spaceSymbol = "\u2581"

// Tokenizer encodes text to token ids and decodes ids back to text. It is
// safe for concurrent use once loaded.
type Tokenizer struct {
	kind modelKind

	pieces []string         // id -> token string ("" for ids without one)
	attrs  []uint8          // id -> attr bits
	vocab  map[string]int32 // model vocabulary (not added-only tokens)
	scores []float32        // SentencePiece scores, by id
	unkID  int32            // -1 when none
	bytes  [256]int32       // <0xNN> ids, -1 when absent

	// SentencePiece normaliser.
	charsMap         *charsMap
	addDummyPrefix   bool
	removeExtraSpace bool
	escapeSpace      bool
	userDefined      []string // sorted longest first
	unkSurface       string
	byteFallback     bool
	rankedMerges     bool // merge by rank (tokenizer.json) instead of score

	// Byte-level BPE.
	merges         map[mergePair]int32
	mergeList      []mergePair
	pattern        Pattern
	addPrefixSpace bool
	ignoreMerges   bool
	normalizer     string // "", "NFC", "NFKC"

	// Added and special tokens.
	added    []addedToken
	addedIdx [256][]int // first byte -> indexes into added, longest first
	bos      int32
	eos      []int32
	addBOS   bool
	addEOS   bool
}

type mergePair struct{ a, b string }

type addedToken struct {
	content string
	id      int32
	special bool
}

// EncodeOptions controls Encode.
type EncodeOptions struct {
	// AddSpecial adds the BOS and/or EOS tokens as the model's configuration
	// asks (add_bos_token / add_eos_token).
	AddSpecial bool
	// ParseSpecial matches special tokens written in the text (for example
	// "<|im_start|>") as single tokens, longest first. Non-special added
	// tokens are always matched.
	ParseSpecial bool
}

// SpecialToken describes a special token for NewByteLevelBPE.
type SpecialToken struct {
	// ID is the token id; it may coincide with a vocabulary entry of the same
	// content or lie outside the vocabulary.
	ID int32
	// Content is the token's text, matched as a whole when parsing specials.
	Content string
	// BOS marks the beginning-of-sequence token that AddSpecial prepends.
	BOS bool
	// EOS marks an end-of-sequence token.
	EOS bool
}

// VocabSize returns the number of token ids (one more than the largest id).
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// BOS returns the beginning-of-sequence id, or -1 when the model has none.
func (t *Tokenizer) BOS() int32 { return t.bos }

// EOS returns every end-of-sequence id: the eos_token first, then any further
// ids from generation_config.json. The slice is a copy.
func (t *Tokenizer) EOS() []int32 { return append([]int32(nil), t.eos...) }

// TokenID returns the id of the token with the exact string s (a vocabulary
// piece in its stored form, e.g. "▁the" or "Ġthe", or an added token).
func (t *Tokenizer) TokenID(s string) (int32, bool) {
	if id, ok := t.vocab[s]; ok {
		return id, true
	}
	for _, a := range t.added {
		if a.content == s {
			return a.id, true
		}
	}
	return 0, false
}

// Token returns the stored string of token id, or "" when id is out of range.
func (t *Tokenizer) Token(id int32) string {
	if id < 0 || int(id) >= len(t.pieces) {
		return ""
	}
	return t.pieces[id]
}

// IsSpecial reports whether id is a special or control token (BOS, EOS,
// padding, chat markers declared special). Decode omits such tokens.
func (t *Tokenizer) IsSpecial(id int32) bool {
	if id < 0 || int(id) >= len(t.attrs) {
		return false
	}
	return t.attrs[id]&(attrSpecial|attrControl) != 0
}

// AddsBOS reports whether Encode with AddSpecial prepends BOS.
func (t *Tokenizer) AddsBOS() bool { return t.addBOS && t.bos >= 0 }

// Encode converts text to token ids.
func (t *Tokenizer) Encode(text string, opts EncodeOptions) ([]int32, error) {
	var ids []int32
	if opts.AddSpecial && t.addBOS && t.bos >= 0 {
		ids = append(ids, t.bos)
	}
	start := 0
	for i := 0; i < len(text); {
		if t.addedIdx[text[i]] == nil {
			i++
			continue
		}
		if a, ok := t.matchAdded(text[i:], opts.ParseSpecial); ok {
			if start < i {
				ids = t.encodeText(ids, text[start:i])
			}
			ids = append(ids, a.id)
			i += len(a.content)
			start = i
			continue
		}
		i++
	}
	if start < len(text) {
		ids = t.encodeText(ids, text[start:])
	}
	if opts.AddSpecial && t.addEOS && len(t.eos) > 0 {
		ids = append(ids, t.eos[0])
	}
	return ids, nil
}

// matchAdded returns the longest added token that prefixes s.
func (t *Tokenizer) matchAdded(s string, parseSpecial bool) (addedToken, bool) {
	for _, k := range t.addedIdx[s[0]] {
		a := t.added[k]
		if a.special && !parseSpecial {
			continue
		}
		if strings.HasPrefix(s, a.content) {
			return a, true
		}
	}
	return addedToken{}, false
}

func (t *Tokenizer) encodeText(ids []int32, s string) []int32 {
	switch t.kind {
	case kindSPM:
		return t.encodeSPM(ids, s)
	case kindHFSPM:
		return t.encodeHFSPM(ids, s)
	default:
		return t.encodeByteLevel(ids, s)
	}
}

// maxAddedGap bounds how far beyond the current id space an added token may
// lie, so a corrupt file cannot make the tables huge.
const maxAddedGap = 1 << 16

// addAdded registers an added token and its id, growing the id space.
func (t *Tokenizer) addAdded(content string, id int32, special bool) error {
	if content == "" || id < 0 || int(id) >= len(t.pieces)+maxAddedGap {
		return fmt.Errorf("added token %q has bad id %d", content, id)
	}
	t.growTo(int(id) + 1)
	if t.pieces[id] == "" {
		t.pieces[id] = content
	}
	t.attrs[id] |= attrAdded
	if special {
		t.attrs[id] |= attrSpecial
	}
	for i, a := range t.added {
		if a.content == content {
			t.added[i] = addedToken{content, id, special}
			return nil
		}
	}
	t.added = append(t.added, addedToken{content, id, special})
	return nil
}

func (t *Tokenizer) growTo(n int) {
	for len(t.pieces) < n {
		t.pieces = append(t.pieces, "")
		t.attrs = append(t.attrs, 0)
	}
}

// indexAdded rebuilds the first-byte index over added tokens.
func (t *Tokenizer) indexAdded() {
	t.addedIdx = [256][]int{}
	order := make([]int, len(t.added))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(x, y int) bool {
		return len(t.added[order[x]].content) > len(t.added[order[y]].content)
	})
	for _, k := range order {
		c := t.added[k].content[0]
		t.addedIdx[c] = append(t.addedIdx[c], k)
	}
}

// Decode converts ids to text. Special tokens are omitted, out-of-range ids
// are ignored and invalid UTF-8 becomes U+FFFD (one per invalid byte).
func (t *Tokenizer) Decode(ids []int32) string {
	d := t.NewStreamDecoder()
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(d.Add(id))
	}
	b.WriteString(d.Flush())
	return b.String()
}
