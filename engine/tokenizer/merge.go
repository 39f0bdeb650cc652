package tokenizer

import (
	"container/heap"
	"unicode/utf8"
)

// symbol is a span of the word being merged, in a doubly linked list.
type symbol struct {
	start, end int
	prev, next int
	frozen     bool
}

// initialSymbols splits word into characters (user-defined pieces, when
// userDefined is set, stay whole and never merge).
func (t *Tokenizer) initialSymbols(word string, userDefined bool) []symbol {
	syms := make([]symbol, 0, len(word))
	for i := 0; i < len(word); {
		n, frozen := 0, false
		if userDefined {
			if n = t.matchUserDefined(word[i:]); n > 0 {
				frozen = true
			}
		}
		if n == 0 {
			_, n = utf8.DecodeRuneInString(word[i:])
		}
		k := len(syms)
		syms = append(syms, symbol{start: i, end: i + n, prev: k - 1, next: k + 1, frozen: frozen})
		i += n
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	return syms
}

type candidate struct {
	left, right int
	pri         float64
	size        int
}

type agenda []candidate

func (a agenda) Len() int { return len(a) }
func (a agenda) Less(i, j int) bool {
	if a[i].pri != a[j].pri {
		return a[i].pri < a[j].pri
	}
	return a[i].left < a[j].left
}
func (a agenda) Swap(i, j int) { a[i], a[j] = a[j], a[i] }
func (a *agenda) Push(x any)   { *a = append(*a, x.(candidate)) }
func (a *agenda) Pop() any {
	old := *a
	x := old[len(old)-1]
	*a = old[:len(old)-1]
	return x
}

// mergeSymbols repeatedly merges the adjacent pair with the lowest priority
// (leftmost on ties) as given by pri, which reports false for pairs that
// cannot merge. The merged list is left in syms (head at index 0).
func (t *Tokenizer) mergeSymbols(word string, syms []symbol, pri func(a, b string) (float64, bool)) {
	if len(syms) < 2 {
		return
	}
	var ag agenda
	try := func(l, r int) {
		if l < 0 || r < 0 || syms[l].frozen || syms[r].frozen {
			return
		}
		p, ok := pri(word[syms[l].start:syms[l].end], word[syms[r].start:syms[r].end])
		if !ok {
			return
		}
		heap.Push(&ag, candidate{left: l, right: r, pri: p, size: syms[r].end - syms[l].start})
	}
	for i := 1; i < len(syms); i++ {
		try(i-1, i)
	}
	for ag.Len() > 0 {
		c := heap.Pop(&ag).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		if l.start == l.end || r.start == r.end || l.next != c.right || r.end-l.start != c.size {
			continue
		}
		l.end = r.end
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		r.start, r.end = 0, 0
		try(l.prev, c.left)
		try(c.left, l.next)
	}
}
