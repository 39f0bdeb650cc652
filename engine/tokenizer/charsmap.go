package tokenizer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// charsMap is SentencePiece's precompiled normalisation map: a double-array
// trie (darts-clone layout) over UTF-8 input whose values index into a blob of
// NUL-terminated replacement strings.
type charsMap struct {
	units []uint32
	blob  []byte
}

// parseCharsMap decodes normalizer_spec.precompiled_charsmap. An empty input
// yields nil (identity normalisation).
func parseCharsMap(b []byte) (*charsMap, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errors.New("precompiled_charsmap too short")
	}
	n := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(len(b)) || n%4 != 0 || n == 0 {
		return nil, errors.New("precompiled_charsmap: bad trie size")
	}
	units := make([]uint32, n/4)
	for i := range units {
		units[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return &charsMap{units: units, blob: b[n:]}, nil
}

func dartsOffset(u uint32) int   { return int((u >> 10) << ((u & (1 << 9)) >> 6)) }
func dartsHasLeaf(u uint32) bool { return (u>>8)&1 == 1 }
func dartsLabel(u uint32) uint32 { return u & ((1 << 31) | 0xFF) }
func dartsValue(u uint32) int    { return int(u & ((1 << 31) - 1)) }

// longest returns the replacement for the longest key that prefixes s.
func (c *charsMap) longest(s string) (repl string, n int, ok bool) {
	pos := dartsOffset(c.units[0])
	for i := 0; i < len(s); i++ {
		pos ^= int(s[i])
		if pos < 0 || pos >= len(c.units) {
			break
		}
		u := c.units[pos]
		if dartsLabel(u) != uint32(s[i]) {
			break
		}
		pos ^= dartsOffset(u)
		if dartsHasLeaf(u) {
			if pos < 0 || pos >= len(c.units) {
				break
			}
			v := dartsValue(c.units[pos])
			if v >= len(c.blob) {
				break
			}
			end := bytes.IndexByte(c.blob[v:], 0)
			if end < 0 {
				end = len(c.blob) - v
			}
			repl, n, ok = string(c.blob[v:v+end]), i+1, true
		}
	}
	return repl, n, ok
}

// normalizePrefix normalises the start of s, returning the normalised text
// and the number of input bytes consumed (at least one for non-empty s).
func (c *charsMap) normalizePrefix(s string) (string, int) {
	if c != nil {
		if repl, n, ok := c.longest(s); ok {
			return repl, n
		}
	}
	r, n := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && n <= 1 {
		return "\uFFFD", 1
	}
	return s[:n], n
}
