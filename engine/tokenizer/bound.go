package tokenizer

import "unicode/utf8"

// MaxTokenBytes returns the most bytes of Encode's input text that one
// output token can stand for, so that a text of n bytes encodes to at least
// ceil(n / MaxTokenBytes()) tokens (before AddSpecial's BOS/EOS). A server
// uses it to refuse a prompt that cannot fit its context before tokenizing
// it. The bound is the longest vocabulary piece or added token (counted in
// input bytes: one per byte-level character; a piece's own bytes otherwise,
// which over-counts "▁" and "<0xNN>") and at least 4 (an unknown character).
//
// It returns 0, meaning no such bound, when the pipeline can shrink or drop
// text: a Unicode normaliser (NFC/NFKC), a SentencePiece character map or
// whitespace collapsing, runs of unknown characters merged into one token,
// or characters dropped for want of a byte token or an unknown token.
// It walks the vocabulary (O(vocabulary size)); callers cache it.
func (t *Tokenizer) MaxTokenBytes() int {
	switch t.kind {
	case kindByteLevel:
		if t.normalizer != "" {
			return 0
		}
		if t.unkID < 0 {
			// A byte whose character is not a token (and has no byte
			// fallback) is dropped.
			for b := 0; b < 256; b++ {
				if _, ok := t.vocab[string(byteToRune[b])]; !ok && !(t.byteFallback && t.bytes[b] >= 0) {
					return 0
				}
			}
		}
	case kindHFSPM:
		if t.unkID < 0 && !t.allBytes() {
			return 0 // a character with no token and no byte fallback is dropped
		}
	case kindSPM:
		if t.charsMap != nil || t.removeExtraSpace || !t.allBytes() {
			return 0 // normalisation may shrink text; unknown runs become one token
		}
	default:
		return 0
	}
	most := 4 // an unknown symbol: one character
	for id, p := range t.pieces {
		n := len(p)
		if t.kind == kindByteLevel && t.attrs[id]&attrAdded == 0 {
			n = utf8.RuneCountInString(p) // one input byte per character
		}
		most = max(most, n)
	}
	for _, a := range t.added {
		most = max(most, len(a.content))
	}
	return most
}

// allBytes reports whether every byte has a <0xNN> fallback token.
func (t *Tokenizer) allBytes() bool {
	if !t.byteFallback {
		return false
	}
	for _, id := range t.bytes {
		if id < 0 {
			return false
		}
	}
	return true
}
