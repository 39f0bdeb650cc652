package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// StreamDecoder decodes ids one at a time, returning text only once whole
// UTF-8 characters are complete. The concatenation of every Add result and
// the final Flush equals Decode of the same ids. It is not safe for
// concurrent use.
type StreamDecoder struct {
	t       *Tokenizer
	pending []byte
	started bool
}

// NewStreamDecoder returns a decoder positioned at the start of a sequence.
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder {
	return &StreamDecoder{t: t}
}

// Add decodes one more id and returns the newly completed text, which may be
// empty while a multi-byte character is still incomplete.
func (d *StreamDecoder) Add(id int32) string {
	n := len(d.pending)
	var consumed bool
	d.pending, consumed = d.t.appendTokenBytes(d.pending, id, !d.started)
	if consumed || len(d.pending) > n {
		d.started = true
	}
	return d.drain(false)
}

// Flush returns any held bytes, each incomplete character's bytes becoming
// U+FFFD, and resets the decoder to the start of a new sequence.
func (d *StreamDecoder) Flush() string {
	s := d.drain(true)
	d.pending = d.pending[:0]
	d.started = false
	return s
}

// drain emits the longest prefix of pending made of complete characters;
// invalid bytes become U+FFFD one by one.
func (d *StreamDecoder) drain(final bool) string {
	p := d.pending
	var b strings.Builder
	i := 0
	for i < len(p) {
		if !final && !utf8.FullRune(p[i:]) {
			break
		}
		r, n := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && n <= 1 {
			b.WriteString("\uFFFD")
			i++
			continue
		}
		b.Write(p[i : i+n])
		i += n
	}
	d.pending = append(d.pending[:0], p[i:]...)
	return b.String()
}

// appendTokenBytes appends the raw bytes that id contributes to the output.
// first is true while nothing has been produced yet in this sequence;
// consumed reports that a leading dummy-prefix space was dropped.
func (t *Tokenizer) appendTokenBytes(dst []byte, id int32, first bool) (_ []byte, consumed bool) {
	if id < 0 || int(id) >= len(t.pieces) {
		return dst, false
	}
	a := t.attrs[id]
	if a&(attrSpecial|attrControl) != 0 {
		return dst, false
	}
	piece := t.pieces[id]
	if a&attrAdded != 0 {
		if _, inVocab := t.vocab[piece]; !inVocab || t.kind == kindByteLevel {
			return append(dst, piece...), false
		}
	}
	switch t.kind {
	case kindByteLevel:
		for _, r := range piece {
			if b, ok := unicodeToByte(r); ok {
				dst = append(dst, b)
			} else {
				dst = utf8.AppendRune(dst, r)
			}
		}
		return dst, false
	default:
		if a&attrByte != 0 {
			if b, ok := parseBytePiece(piece); ok {
				return append(dst, b), false
			}
		}
		if a&attrUnknown != 0 {
			return append(dst, t.unkSurface...), false
		}
		if first && (t.addDummyPrefix || t.removeExtraSpace) && strings.HasPrefix(piece, spaceSymbol) {
			piece = piece[len(spaceSymbol):]
			consumed = true
		}
		return append(dst, strings.ReplaceAll(piece, spaceSymbol, " ")...), consumed
	}
}

// parseBytePiece parses "<0xNN>".
func parseBytePiece(s string) (byte, bool) {
	if len(s) != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexVal(s[3])
	lo, ok2 := hexVal(s[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
