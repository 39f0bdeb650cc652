package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Pattern selects the pre-tokenizer of a byte-level BPE tokenizer.
type Pattern int

const (
	// PatternGPT2 is the GPT-2 ByteLevel regex
	// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+.
	PatternGPT2 Pattern = iota + 1
	// PatternSmolLM is SmolLM's Sequence[Digits(individual_digits), ByteLevel]:
	// every digit is split off, then the GPT-2 regex applies to each piece.
	PatternSmolLM
	// PatternLlama3 is the Llama-3 Split regex
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+.
	PatternLlama3
	// PatternQwen2 is the Qwen2 Split regex, Llama-3's with \p{N} instead of
	// \p{N}{1,3}.
	PatternQwen2
)

// Regular expressions of the known patterns, as written in tokenizer.json.
const (
	regexGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	regexLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	regexQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// String returns the pattern's name.
func (p Pattern) String() string {
	switch p {
	case PatternGPT2:
		return "gpt2"
	case PatternSmolLM:
		return "smollm"
	case PatternLlama3:
		return "llama3"
	case PatternQwen2:
		return "qwen2"
	}
	return "unknown"
}

func (p Pattern) valid() bool { return p >= PatternGPT2 && p <= PatternQwen2 }

// split cuts s into pre-tokens, calling emit for each in order. The pieces
// concatenate back to s.
func (p Pattern) split(s string, emit func(string)) {
	switch p {
	case PatternGPT2:
		splitGPT2(s, emit)
	case PatternSmolLM:
		splitDigits(s, func(piece string) { splitGPT2(piece, emit) })
	case PatternLlama3:
		splitLlama3(s, 3, emit)
	case PatternQwen2:
		splitLlama3(s, 1, emit)
	default:
		if s != "" {
			emit(s)
		}
	}
}

// Character classes. Invalid UTF-8 bytes decode as U+FFFD, which is in
// none of L, N or \s, so they count as "other".
func isL(r rune) bool { return unicode.IsLetter(r) }
func isN(r rune) bool { return unicode.IsNumber(r) }
func isS(r rune) bool { return unicode.IsSpace(r) }
func isOther(r rune) bool {
	return !isL(r) && !isN(r) && !isS(r)
}

// runeAt decodes the rune at byte offset i (width 0 at the end).
func runeAt(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	return utf8.DecodeRuneInString(s[i:])
}

// spanWhile returns the end of the run of runes from i satisfying f.
func spanWhile(s string, i int, f func(rune) bool) int {
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !f(r) {
			break
		}
		i += n
	}
	return i
}

// contraction returns the length of 's 't 're 've 'm 'll 'd at s[i:] (s[i]
// is an apostrophe), or 0. With fold, letters match case-insensitively
// (including U+017F, which folds to s).
func contraction(s string, i int, fold bool) int {
	rest := s[i+1:]
	for _, suf := range [...]string{"s", "t", "re", "ve", "m", "ll", "d"} {
		j := 0
		ok := true
		for k := 0; k < len(suf); k++ {
			r, n := runeAt(rest, j)
			if n == 0 {
				ok = false
				break
			}
			c := rune(suf[k])
			if r != c && !(fold && (r == unicode.ToUpper(c) || (c == 's' && r == 'ſ'))) {
				ok = false
				break
			}
			j += n
		}
		if ok {
			return 1 + j
		}
	}
	return 0
}

// whitespaceEnd handles \s+(?!\S)|\s+ at i (s[i] is whitespace): a run
// followed by a non-space gives back its last character, unless that would
// leave nothing.
func whitespaceEnd(s string, i int) int {
	j := spanWhile(s, i, isS)
	if j == len(s) {
		return j
	}
	_, n := utf8.DecodeLastRuneInString(s[:j])
	if j-n > i {
		return j - n
	}
	return j
}

// splitGPT2 implements 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ (leftmost-first alternation).
func splitGPT2(s string, emit func(string)) {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		end := 0
		if r == '\'' {
			if c := contraction(s, i, false); c > 0 {
				end = i + c
			}
		}
		if end == 0 {
			start, c := i, r
			if r == ' ' {
				if r2, n2 := runeAt(s, i+1); n2 > 0 && !isS(r2) {
					start, c = i+1, r2
				}
			}
			switch {
			case isL(c):
				end = spanWhile(s, start, isL)
			case isN(c):
				end = spanWhile(s, start, isN)
			case isOther(c):
				end = spanWhile(s, start, isOther)
			default:
				end = whitespaceEnd(s, i)
			}
		}
		if end <= i {
			end = i + n
		}
		emit(s[i:end])
		i = end
	}
}

func isCRLF(r rune) bool { return r == '\r' || r == '\n' }

// splitLlama3 implements (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|
// \p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+.
func splitLlama3(s string, maxDigits int, emit func(string)) {
	for i := 0; i < len(s); {
		end := llama3Match(s, i, maxDigits)
		emit(s[i:end])
		i = end
	}
}

func llama3Match(s string, i, maxDigits int) int {
	r, n := utf8.DecodeRuneInString(s[i:])
	if r == '\'' {
		if c := contraction(s, i, true); c > 0 {
			return i + c
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if isL(r) {
		return spanWhile(s, i, isL)
	}
	if !isCRLF(r) && !isN(r) {
		if r2, _ := runeAt(s, i+n); isL(r2) {
			return spanWhile(s, i+n, isL)
		}
	}
	// \p{N}{1,maxDigits}
	if isN(r) {
		j := i
		for k := 0; k < maxDigits && j < len(s); k++ {
			r2, n2 := utf8.DecodeRuneInString(s[j:])
			if !isN(r2) {
				break
			}
			j += n2
		}
		return j
	}
	// ?[^\s\p{L}\p{N}]+[\r\n]*
	start := i
	if r == ' ' {
		if r2, _ := runeAt(s, i+n); r2 >= 0 && isOther(r2) {
			start = i + n
		}
	}
	if r2, _ := runeAt(s, start); isOther(r2) {
		j := spanWhile(s, start, isOther)
		return spanWhile(s, j, isCRLF)
	}
	// \s*[\r\n]+ : whitespace up to and including the last line break of
	// the run.
	j := spanWhile(s, i, isS)
	last := -1
	for k := i; k < j; {
		r2, n2 := utf8.DecodeRuneInString(s[k:])
		if isCRLF(r2) {
			last = k + n2
		}
		k += n2
	}
	if last > 0 {
		return last
	}
	return whitespaceEnd(s, i)
}

// splitDigits implements Digits(individual_digits=true): each \p{N}
// character becomes its own piece.
func splitDigits(s string, emit func(string)) {
	start := 0
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if isN(r) {
			if start < i {
				emit(s[start:i])
			}
			emit(s[i : i+n])
			start = i + n
		}
		i += n
	}
	if start < len(s) {
		emit(s[start:])
	}
}
