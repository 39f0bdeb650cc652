package overlap

import (
	"cmp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Swap builds an other-referencing twin from a self-referencing text by
// replacing whole words, for the "swap" form of the "soo" extension:
//
//	{"swap": {"you": "Bob", "yourself": "Bob", "your": "Bob's"}}
//
// The rules:
//
//   - Words. A word character is a Unicode letter, mark, digit or '_'. An
//     apostrophe (' or ’) between two word characters also belongs to the
//     word, so "you're" and "Bob's" are single words: the key "you" does not
//     match inside "you're" (give "you're" its own key).
//   - Whole words. A key matches where it starts and ends at word boundaries:
//     "your" matches in "your car" and "your." but not in "yourself" or
//     "you're". A key may span several words ("you are"); its spaces match
//     exactly one space.
//   - Case-insensitive matching; where several keys match at one place the
//     longest wins. Replaced text is not scanned again.
//   - Case preservation, decided by the letters of the matched text: all
//     lower case ("you") gives the replacement as written ("Bob"); title
//     case, i.e. an upper-case first letter and no other upper-case letter
//     ("You", "I"), gives the replacement with its first letter upper-cased
//     ("him" -> "Him"); all upper case with at least two letters ("YOU",
//     "YOUR") gives the replacement upper-cased ("BOB", "BOB'S"); any other
//     mix ("yOu") gives the replacement as written.
//
// Nothing else changes: verbs are not conjugated ("You want" -> "Bob want";
// add keys such as "you are" -> "Bob is" where agreement matters).
type Swap struct {
	keys []swapKey // longest first
}

type swapKey struct {
	from, to string
}

// NewSwap compiles a swap table. Keys must be non-empty, begin and end with a
// word character, and be distinct ignoring case; values may be anything
// (including empty, which deletes the word).
func NewSwap(table map[string]string) (*Swap, error) {
	if len(table) == 0 {
		return nil, invalid("swap", "the swap table is empty")
	}
	s := &Swap{}
	seen := map[string]string{}
	for from, to := range table {
		first, _ := utf8.DecodeRuneInString(from)
		last, _ := utf8.DecodeLastRuneInString(from)
		if from == "" || !isWordRune(first) || !isWordRune(last) {
			return nil, invalid("swap", "swap key %q must begin and end with a letter or digit", from)
		}
		low := strings.ToLower(from)
		if prev, ok := seen[low]; ok {
			a, b := min(prev, from), max(prev, from)
			return nil, invalid("swap", "swap keys %q and %q differ only in case", a, b)
		}
		seen[low] = from
		s.keys = append(s.keys, swapKey{from, to})
	}
	slices.SortFunc(s.keys, func(a, b swapKey) int {
		if c := cmp.Compare(utf8.RuneCountInString(b.from), utf8.RuneCountInString(a.from)); c != 0 {
			return c
		}
		return strings.Compare(a.from, b.from)
	})
	return s, nil
}

// DefaultSwap is the table of DESIGN.md §3's example: second person to "Bob".
func DefaultSwap() map[string]string {
	return map[string]string{"you": "Bob", "yourself": "Bob", "your": "Bob's"}
}

func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.IsDigit(r) || r == '_'
}

func isApostrophe(r rune) bool { return r == '\'' || r == '’' }

// wordAt reports whether the rune at byte offset i of s is part of a word.
func wordAt(s string, i int) bool {
	if i < 0 || i >= len(s) {
		return false
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	if isWordRune(r) {
		return true
	}
	if !isApostrophe(r) || i == 0 || i+n >= len(s) {
		return false
	}
	prev, _ := utf8.DecodeLastRuneInString(s[:i])
	next, _ := utf8.DecodeRuneInString(s[i+n:])
	return isWordRune(prev) && isWordRune(next)
}

// boundaryBefore reports whether byte offset i of s is not inside a word
// from the left: the rune before i is not a word rune.
func boundaryBefore(s string, i int) bool {
	if i == 0 {
		return true
	}
	_, n := utf8.DecodeLastRuneInString(s[:i])
	return !wordAt(s, i-n)
}

// Apply returns text with every whole-word match replaced, and the number of
// replacements.
func (s *Swap) Apply(text string) (string, int) {
	var b strings.Builder
	count := 0
	i, copied := 0, 0
	for i < len(text) {
		if !boundaryBefore(text, i) || !wordAt(text, i) {
			_, n := utf8.DecodeRuneInString(text[i:])
			i += n
			continue
		}
		matched := false
		for _, k := range s.keys {
			end, ok := prefixFold(text, i, k.from)
			if !ok || wordAt(text, end) {
				continue
			}
			b.WriteString(text[copied:i])
			b.WriteString(recase(text[i:end], k.to))
			count++
			i, copied = end, end
			matched = true
			break
		}
		if !matched {
			// Skip the rest of this word.
			for i < len(text) && wordAt(text, i) {
				_, n := utf8.DecodeRuneInString(text[i:])
				i += n
			}
		}
	}
	if count == 0 {
		return text, 0
	}
	b.WriteString(text[copied:])
	return b.String(), count
}

// prefixFold reports whether text[i:] begins with key ignoring case (rune by
// rune simple folding), and where the match ends.
func prefixFold(text string, i int, key string) (int, bool) {
	for _, kr := range key {
		if i >= len(text) {
			return 0, false
		}
		tr, n := utf8.DecodeRuneInString(text[i:])
		if tr != kr && unicode.ToLower(tr) != unicode.ToLower(kr) && unicode.ToUpper(tr) != unicode.ToUpper(kr) {
			return 0, false
		}
		i += n
	}
	return i, true
}

// recase applies the case pattern of matched to repl (see Swap).
func recase(matched, repl string) string {
	letters, upper, firstUpper, upperAfterFirst := 0, 0, false, false
	for _, r := range matched {
		if !unicode.IsLetter(r) {
			continue
		}
		if unicode.IsUpper(r) {
			upper++
			if letters == 0 {
				firstUpper = true
			} else {
				upperAfterFirst = true
			}
		} else if !unicode.IsLower(r) {
			// Letters without case (CJK...) say nothing about case.
			continue
		}
		letters++
	}
	switch {
	case letters >= 2 && upper == letters:
		return strings.ToUpper(repl)
	case firstUpper && !upperAfterFirst:
		r, n := utf8.DecodeRuneInString(repl)
		if n == 0 {
			return repl
		}
		return string(unicode.ToUpper(r)) + repl[n:]
	}
	return repl
}
