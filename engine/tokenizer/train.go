package tokenizer

import (
	"container/heap"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// BPEOptions configures TrainBPE and NewBPETrainer.
type BPEOptions struct {
	// VocabSize is the total number of token ids wanted: the 256 byte tokens,
	// the learned merges' tokens and the special tokens. Training stops
	// earlier when no pair is frequent enough to merge.
	VocabSize int
	// SpecialTokens are added tokens (for example "<|endoftext|>",
	// "<|im_start|>", "<|im_end|>") that take the ids after the learned
	// tokens, in this order. Training text is split at them exactly as
	// Encode with ParseSpecial does, so no merge crosses or learns them.
	SpecialTokens []string
	// MinFrequency is the least number of occurrences a pair needs to be
	// merged; zero or one merges any pair that occurs.
	MinFrequency int
	// Pattern is the pre-tokenizer; zero means PatternQwen2.
	Pattern Pattern
}

// BPEModel is a trained byte-level BPE vocabulary. Ids 0-255 are the single
// bytes (id b is byte b), then the learned tokens in the order they were
// first made, then the special tokens.
type BPEModel struct {
	// Pattern is the pre-tokenizer the model was trained with.
	Pattern Pattern
	// Tokens holds the raw bytes of every non-special token, indexed by id.
	Tokens []string
	// Merges are the learned merge rules in priority order, as raw bytes.
	Merges [][2]string
	// Counts holds, for each merge, the number of occurrences of its pair in
	// the corpus (weighted by word frequency) when it was chosen.
	Counts []int64
	// Special holds the special tokens with their ids. Training sets no BOS
	// or EOS flags; set them before calling Tokenizer to mark those roles
	// (Load picks well-known names such as "<|endoftext|>" as EOS anyway).
	Special []SpecialToken
}

// BPETrainer accumulates word counts from text and learns a byte-level BPE
// vocabulary from them; it keeps one copy of each distinct pre-tokenized
// word. It is not safe for concurrent use.
type BPETrainer struct {
	opts    BPEOptions
	special [256][]string // by first byte, longest first, as Encode matches them
	words   map[string]int64
}

// NewBPETrainer checks opts and returns a trainer with no text yet.
func NewBPETrainer(opts BPEOptions) (*BPETrainer, error) {
	if opts.Pattern == 0 {
		opts.Pattern = PatternQwen2
	}
	if !opts.Pattern.valid() {
		return nil, fmt.Errorf("tokenizer: train: unknown pattern %d", int(opts.Pattern))
	}
	if min := 256 + len(opts.SpecialTokens); opts.VocabSize < min {
		return nil, fmt.Errorf("tokenizer: train: vocabulary size %d is below the %d byte and special tokens", opts.VocabSize, min)
	}
	seen := map[string]bool{}
	for _, s := range opts.SpecialTokens {
		if s == "" {
			return nil, errors.New("tokenizer: train: empty special token")
		}
		if seen[s] {
			return nil, fmt.Errorf("tokenizer: train: special token %q given twice", s)
		}
		seen[s] = true
	}
	opts.SpecialTokens = append([]string(nil), opts.SpecialTokens...)
	tr := &BPETrainer{opts: opts, words: map[string]int64{}}
	sorted := append([]string(nil), opts.SpecialTokens...)
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	for _, s := range sorted {
		tr.special[s[0]] = append(tr.special[s[0]], s)
	}
	return tr, nil
}

// Add counts the pre-tokenized words of text, which is split at the special
// tokens first.
func (tr *BPETrainer) Add(text string) {
	start := 0
	for i := 0; i < len(text); {
		if n := tr.matchSpecial(text[i:]); n > 0 {
			tr.addSegment(text[start:i])
			i += n
			start = i
			continue
		}
		i++
	}
	tr.addSegment(text[start:])
}

// matchSpecial returns the length of the longest special token prefixing s.
func (tr *BPETrainer) matchSpecial(s string) int {
	for _, sp := range tr.special[s[0]] {
		if strings.HasPrefix(s, sp) {
			return len(sp)
		}
	}
	return 0
}

func (tr *BPETrainer) addSegment(s string) {
	tr.opts.Pattern.split(s, func(w string) {
		if n, ok := tr.words[w]; ok {
			tr.words[w] = n + 1
			return
		}
		tr.words[strings.Clone(w)] = 1
	})
}

// TrainBPE learns a byte-level BPE vocabulary from texts.
func TrainBPE(texts []string, opts BPEOptions) (*BPEModel, error) {
	tr, err := NewBPETrainer(opts)
	if err != nil {
		return nil, err
	}
	for _, s := range texts {
		tr.Add(s)
	}
	return tr.Train(), nil
}

// pairKey packs two token ids.
func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func pairOf(k uint64) (a, b int32) { return int32(k >> 32), int32(uint32(k)) }

type trainWord struct {
	syms  []int32
	count int64
}

// pairEntry is a heap entry; count may be stale (checked when popped).
type pairEntry struct {
	pair  uint64
	count int64
}

// pairHeap orders pairs by count, most frequent first; ties go to the pair
// whose left token's bytes sort first, then the right token's.
type pairHeap struct {
	items  []pairEntry
	tokens *[]string
}

func (h *pairHeap) Len() int { return len(h.items) }
func (h *pairHeap) Less(i, j int) bool {
	x, y := h.items[i], h.items[j]
	if x.count != y.count {
		return x.count > y.count
	}
	return pairBefore(*h.tokens, x.pair, y.pair)
}
func (h *pairHeap) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *pairHeap) Push(x any)    { h.items = append(h.items, x.(pairEntry)) }
func (h *pairHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}

// pairBefore is the tie-break: x's left token's bytes, then its right
// token's, compare below y's.
func pairBefore(tokens []string, x, y uint64) bool {
	xa, xb := pairOf(x)
	ya, yb := pairOf(y)
	if tokens[xa] != tokens[ya] {
		return tokens[xa] < tokens[ya]
	}
	return tokens[xb] < tokens[yb]
}

// Train learns merges from the words added so far. Each step merges the most
// frequent adjacent pair over all words (each word weighted by its count;
// every adjacent position counts, so "aaa" holds the pair "a","a" twice),
// ties broken by pairBefore, replacing its occurrences left to right. A merge
// whose result is an existing token reuses that token's id; a pair that
// already has a rule is merged again but not listed twice. The result does
// not depend on the order of text within or between Add calls.
func (tr *BPETrainer) Train() *BPEModel {
	target := tr.opts.VocabSize - len(tr.opts.SpecialTokens)
	minFreq := int64(max(tr.opts.MinFrequency, 1))

	tokens := make([]string, 256, target)
	for b := range 256 {
		tokens[b] = string([]byte{byte(b)})
	}
	ids := make(map[string]int32, target)
	for b, s := range tokens {
		ids[s] = int32(b)
	}

	// Word types in sorted order, so nothing depends on map iteration.
	keys := make([]string, 0, len(tr.words))
	for w := range tr.words {
		if len(w) > 1 {
			keys = append(keys, w)
		}
	}
	sort.Strings(keys)
	words := make([]trainWord, len(keys))
	counts := map[uint64]int64{}
	where := map[uint64][]int32{}
	for i, w := range keys {
		syms := make([]int32, len(w))
		for j := 0; j < len(w); j++ {
			syms[j] = int32(w[j])
		}
		c := tr.words[w]
		words[i] = trainWord{syms: syms, count: c}
		for j := 1; j < len(syms); j++ {
			k := pairKey(syms[j-1], syms[j])
			counts[k] += c
			if l := where[k]; len(l) == 0 || l[len(l)-1] != int32(i) {
				where[k] = append(l, int32(i))
			}
		}
	}

	h := &pairHeap{tokens: &tokens}
	for k, c := range counts {
		h.items = append(h.items, pairEntry{k, c})
	}
	heap.Init(h)

	m := &BPEModel{Pattern: tr.opts.Pattern}
	ruled := map[uint64]bool{}
	stamp := make([]int32, len(words))
	for i := range stamp {
		stamp[i] = -1
	}
	var touched []uint64 // pairs with the new token, to push afterwards
	var old, cur []int   // scratch: pair positions around merges
	for step := int32(0); len(tokens) < target && h.Len() > 0; step++ {
		top := heap.Pop(h).(pairEntry)
		c := counts[top.pair]
		if c != top.count {
			if c > 0 {
				heap.Push(h, pairEntry{top.pair, c})
			}
			continue
		}
		if c < minFreq {
			break
		}
		a, b := pairOf(top.pair)
		s := tokens[a] + tokens[b]
		id, ok := ids[s]
		if !ok {
			id = int32(len(tokens))
			tokens = append(tokens, s)
			ids[s] = id
		}
		if !ruled[top.pair] {
			ruled[top.pair] = true
			m.Merges = append(m.Merges, [2]string{tokens[a], tokens[b]})
			m.Counts = append(m.Counts, c)
		}

		touched = touched[:0]
		for _, wi := range where[top.pair] {
			if stamp[wi] == step {
				continue
			}
			stamp[wi] = step
			w := &words[wi]
			old, cur = mergeWord(w, a, b, id, old[:0], cur[:0], counts, where, wi, &touched)
		}
		delete(where, top.pair)
		delete(counts, top.pair)
		sort.Slice(touched, func(i, j int) bool { return touched[i] < touched[j] })
		for i, k := range touched {
			if i > 0 && touched[i-1] == k {
				continue
			}
			if c := counts[k]; c > 0 {
				heap.Push(h, pairEntry{k, c})
			}
		}
	}

	m.Tokens = tokens
	for i, s := range tr.opts.SpecialTokens {
		m.Special = append(m.Special, SpecialToken{ID: int32(len(tokens) + i), Content: s})
	}
	return m
}

// mergeWord replaces the occurrences of a,b in w with id (left to right, in
// place) and updates the pair counts: only the pairs next to a merge change.
// Pairs that contain id are appended to touched and their words to where;
// old and cur are scratch space, returned for reuse.
func mergeWord(w *trainWord, a, b, id int32, old, cur []int, counts map[uint64]int64, where map[uint64][]int32, wi int32, touched *[]uint64) ([]int, []int) {
	s := w.syms
	// The old pairs s[p],s[p+1] next to a merge lose this word's count.
	n := 0 // length of the merged word
	for j := 0; j < len(s); n++ {
		if j+1 < len(s) && s[j] == a && s[j+1] == b {
			for _, p := range [...]int{j - 1, j, j + 1} {
				if p >= 0 && p+1 < len(s) && (len(old) == 0 || old[len(old)-1] < p) {
					old = append(old, p)
					counts[pairKey(s[p], s[p+1])] -= w.count
				}
			}
			cur = append(cur, n)
			j += 2
			continue
		}
		j++
	}
	// Merge in place: the write index never passes the read index.
	out := s[:0]
	for j := 0; j < len(s); {
		if j+1 < len(s) && s[j] == a && s[j+1] == b {
			out = append(out, id)
			j += 2
			continue
		}
		out = append(out, s[j])
		j++
	}
	// The new pairs next to a merged symbol gain it.
	last := -1
	for _, q := range cur {
		for _, p := range [...]int{q - 1, q} {
			if p < 0 || p+1 >= len(out) || p <= last {
				continue
			}
			last = p
			k := pairKey(out[p], out[p+1])
			counts[k] += w.count
			*touched = append(*touched, k)
			if l := where[k]; len(l) == 0 || l[len(l)-1] != wi {
				where[k] = append(l, wi)
			}
		}
	}
	w.syms = out
	return old, cur
}

// Vocab returns the vocabulary in byte-level form (GPT-2's byte-to-unicode
// characters, e.g. "Ġroom"), without the special tokens.
func (m *BPEModel) Vocab() map[string]int32 {
	v := make(map[string]int32, len(m.Tokens))
	for id, s := range m.Tokens {
		v[byteLevelString(s)] = int32(id)
	}
	return v
}

// MergeStrings returns the merges in byte-level "a b" form.
func (m *BPEModel) MergeStrings() []string {
	out := make([]string, len(m.Merges))
	for i, p := range m.Merges {
		out[i] = byteLevelString(p[0]) + " " + byteLevelString(p[1])
	}
	return out
}

// VocabSize returns the number of token ids, special tokens included.
func (m *BPEModel) VocabSize() int { return len(m.Tokens) + len(m.Special) }

// Tokenizer builds the tokenizer the model describes.
func (m *BPEModel) Tokenizer() (*Tokenizer, error) {
	t, err := NewByteLevelBPE(m.Vocab(), m.MergeStrings(), m.Pattern, m.Special)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: trained model: %w", err)
	}
	return t, nil
}

// JSON returns the model as a Hugging Face tokenizer.json (BPE model,
// the pattern's pre-tokenizer with ByteLevel, ByteLevel decoder, special
// tokens as added tokens with special set).
func (m *BPEModel) JSON() ([]byte, error) {
	t, err := m.Tokenizer()
	if err != nil {
		return nil, err
	}
	return t.MarshalTokenizerJSON()
}
