package tokenizer

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// newSPM builds a Tokenizer from a decoded SentencePiece model.
func newSPM(m *spmModel) (*Tokenizer, error) {
	if m.modelType != spmBPE {
		return nil, fmt.Errorf("unsupported SentencePiece model_type %d (only BPE=2)", m.modelType)
	}
	cm, err := parseCharsMap(m.charsMap)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{
		kind:             kindSPM,
		vocab:            make(map[string]int32, len(m.pieces)),
		scores:           make([]float32, len(m.pieces)),
		unkID:            -1,
		charsMap:         cm,
		addDummyPrefix:   m.addDummyPrefix,
		removeExtraSpace: m.removeExtraWhitespaces,
		escapeSpace:      m.escapeWhitespaces,
		unkSurface:       m.unkSurface,
		byteFallback:     m.byteFallback,
		bos:              -1,
		addBOS:           true,
	}
	for i := range t.bytes {
		t.bytes[i] = -1
	}
	t.growTo(len(m.pieces))
	for i, p := range m.pieces {
		id := int32(i)
		t.pieces[i] = p.piece
		t.scores[i] = p.score
		if _, dup := t.vocab[p.piece]; !dup {
			t.vocab[p.piece] = id
		}
		switch p.typ {
		case pieceUnknown:
			t.attrs[i] |= attrUnknown
			t.unkID = id
		case pieceControl:
			t.attrs[i] |= attrControl
		case pieceUserDefined:
			t.attrs[i] |= attrUserDefined
			if p.piece != "" {
				t.userDefined = append(t.userDefined, p.piece)
			}
		case pieceUnused:
			t.attrs[i] |= attrUnused
		case pieceByte:
			b, ok := parseBytePiece(p.piece)
			if !ok {
				return nil, fmt.Errorf("byte piece %d has bad form %q", i, p.piece)
			}
			t.attrs[i] |= attrByte
			t.bytes[b] = id
		}
	}
	sort.SliceStable(t.userDefined, func(i, j int) bool { return len(t.userDefined[i]) > len(t.userDefined[j]) })
	n := int32(len(m.pieces))
	if m.bosID >= 0 && m.bosID < n {
		t.bos = m.bosID
	}
	if m.eosID >= 0 && m.eosID < n {
		t.eos = []int32{m.eosID}
	}
	// Control and unknown pieces can be written in text when ParseSpecial is set.
	for i, p := range m.pieces {
		if (p.typ == pieceControl || p.typ == pieceUnknown) && p.piece != "" {
			t.added = append(t.added, addedToken{content: p.piece, id: int32(i), special: true})
		}
	}
	if t.unkID < 0 {
		return nil, errors.New("model has no unknown piece")
	}
	return t, nil
}

// matchUserDefined returns the length of the longest user-defined piece
// prefixing s, or 0.
func (t *Tokenizer) matchUserDefined(s string) int {
	for _, u := range t.userDefined {
		if strings.HasPrefix(s, u) {
			return len(u)
		}
	}
	return 0
}

// normalizeSPM applies SentencePiece's normaliser: the precompiled character
// map, whitespace cleanup, the dummy prefix and escaping spaces as U+2581.
func (t *Tokenizer) normalizeSPM(s string) string {
	prefix := func(in string) (string, int) {
		if n := t.matchUserDefined(in); n > 0 {
			return in[:n], n
		}
		return t.charsMap.normalizePrefix(in)
	}
	if t.removeExtraSpace {
		for len(s) > 0 {
			p, n := prefix(s)
			if p != " " {
				break
			}
			s = s[n:]
		}
	}
	if s == "" {
		return ""
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	space := " "
	if t.escapeSpace {
		space = spaceSymbol
	}
	if t.addDummyPrefix {
		b.WriteString(space)
	}
	prevSpace := t.removeExtraSpace
	for len(s) > 0 {
		p, n := prefix(s)
		s = s[n:]
		if prevSpace {
			p = strings.TrimLeft(p, " ")
		}
		if p != "" {
			if t.escapeSpace {
				b.WriteString(strings.ReplaceAll(p, " ", spaceSymbol))
			} else {
				b.WriteString(p)
			}
			prevSpace = strings.HasSuffix(p, " ")
		}
		if !t.removeExtraSpace {
			prevSpace = false
		}
	}
	out := b.String()
	if t.removeExtraSpace {
		for strings.HasSuffix(out, space) {
			out = out[:len(out)-len(space)]
		}
	}
	return out
}

// encodeSPM encodes one text segment the way SentencePiece's BPE model does.
func (t *Tokenizer) encodeSPM(ids []int32, s string) []int32 {
	norm := t.normalizeSPM(s)
	if norm == "" {
		return ids
	}
	syms := t.initialSymbols(norm, true)
	t.mergeSymbols(norm, syms, func(a, b string) (float64, bool) {
		id, ok := t.vocab[a+b]
		if !ok || t.attrs[id]&(attrUnknown|attrControl|attrByte) != 0 {
			return 0, false
		}
		return -float64(t.scores[id]), true
	})
	return t.emitPieces(ids, norm, syms)
}

// emitPieces maps merged symbols to ids, using byte fallback (or the unknown
// id, merging runs of unknowns) for pieces outside the vocabulary.
func (t *Tokenizer) emitPieces(ids []int32, word string, syms []symbol) []int32 {
	prevUnk := false
	for i := 0; i >= 0 && i < len(syms); i = syms[i].next {
		p := word[syms[i].start:syms[i].end]
		if id, ok := t.vocab[p]; ok && t.attrs[id]&(attrUnknown|attrControl|attrByte) == 0 {
			ids = t.appendResegmented(ids, p, id)
			prevUnk = false
			continue
		}
		if t.byteFallback {
			if ids2, ok := t.appendBytes(ids, p); ok {
				ids = ids2
				prevUnk = false
				continue
			}
		}
		if t.unkID >= 0 && !prevUnk {
			ids = append(ids, t.unkID)
		}
		prevUnk = true
	}
	return ids
}

// appendBytes appends the <0xNN> ids of p's bytes; ok is false if any is
// missing.
func (t *Tokenizer) appendBytes(ids []int32, p string) ([]int32, bool) {
	for i := 0; i < len(p); i++ {
		if t.bytes[p[i]] < 0 {
			return ids, false
		}
	}
	for i := 0; i < len(p); i++ {
		ids = append(ids, t.bytes[p[i]])
	}
	return ids, true
}

// appendResegmented appends id, splitting unused pieces into the pieces they
// were merged from.
func (t *Tokenizer) appendResegmented(ids []int32, p string, id int32) []int32 {
	if t.attrs[id]&attrUnused == 0 {
		return append(ids, id)
	}
	// Find the best split into two usable pieces.
	best, bestScore := -1, float32(0)
	for i := 1; i < len(p); i++ {
		if !utf8.RuneStart(p[i]) {
			continue
		}
		l, okL := t.vocab[p[:i]]
		r, okR := t.vocab[p[i:]]
		if okL && okR {
			sc := t.scores[l] + t.scores[r]
			if best < 0 || sc > bestScore {
				best, bestScore = i, sc
			}
		}
	}
	if best < 0 {
		return append(ids, id)
	}
	ids = t.appendResegmented(ids, p[:best], t.vocab[p[:best]])
	return t.appendResegmented(ids, p[best:], t.vocab[p[best:]])
}
