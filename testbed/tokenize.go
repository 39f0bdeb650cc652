package testbed

import (
	"fmt"
	"strings"

	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/testbed/world"
)

// roleRepeats is how many times the chat roles' header lines ("user\n",
// "assistant\n", "system\n") are added to the tokenizer's corpus: the
// world's corpus holds message contents only, and the headers occur once
// per message in every document.
const roleRepeats = 2000

// TrainTokenizer trains the testbed's byte-level BPE tokenizer (Qwen2's
// pre-tokenizer) on w's tokenizer corpus and the chat roles' header lines,
// with vocabSize ids in all: the 256 bytes, the learned merges and
// world.SpecialTokens (<|endoftext|>, <|im_start|>, <|im_end|>) last.
// <|im_end|> is the end-of-sequence token. Deterministic for the world.
func TrainTokenizer(w *world.World, vocabSize int) (*tokenizer.BPEModel, *tokenizer.Tokenizer, error) {
	texts := w.TokenizerCorpus()
	for range roleRepeats {
		texts = append(texts, world.RoleUser+"\n", world.RoleAssistant+"\n", world.RoleSystem+"\n")
	}
	m, err := tokenizer.TrainBPE(texts, tokenizer.BPEOptions{
		VocabSize: vocabSize, SpecialTokens: world.SpecialTokens(), Pattern: tokenizer.PatternQwen2})
	if err != nil {
		return nil, nil, fmt.Errorf("testbed: tokenizer: %w", err)
	}
	for i := range m.Special {
		m.Special[i].EOS = m.Special[i].Content == world.ImEnd
	}
	tok, err := m.Tokenizer()
	if err != nil {
		return nil, nil, fmt.Errorf("testbed: tokenizer: %w", err)
	}
	return m, tok, nil
}

// Encoder turns rendered documents into token ids with per-token loss
// weights.
type Encoder struct {
	tok     *tokenizer.Tokenizer
	special map[string]int32
}

// NewEncoder returns an encoder for tok, which must have world.SpecialTokens.
func NewEncoder(tok *tokenizer.Tokenizer) (*Encoder, error) {
	e := &Encoder{tok: tok, special: map[string]int32{}}
	for _, s := range world.SpecialTokens() {
		id, ok := tok.TokenID(s)
		if !ok {
			return nil, fmt.Errorf("testbed: the tokenizer lacks the special token %s", s)
		}
		e.special[s] = id
	}
	return e, nil
}

// Special returns the id of special token s (one of world.SpecialTokens).
func (e *Encoder) Special(s string) int32 { return e.special[s] }

// Encode tokenizes segments one by one, a special segment as its single
// special id, and gives every token its segment's weight.
func (e *Encoder) Encode(segs []world.Segment) ([]int32, []float32, error) {
	var ids []int32
	var ws []float32
	for _, s := range segs {
		if s.Special {
			id, ok := e.special[s.Text]
			if !ok {
				return nil, nil, fmt.Errorf("testbed: encode: unknown special segment %q", s.Text)
			}
			ids, ws = append(ids, id), append(ws, s.Weight)
			continue
		}
		t, err := e.tok.Encode(s.Text, tokenizer.EncodeOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("testbed: encode: %w", err)
		}
		ids = append(ids, t...)
		for range t {
			ws = append(ws, s.Weight)
		}
	}
	return ids, ws, nil
}

// EncodePrompt tokenizes a rendered ChatML prompt, its special tokens as
// their ids.
func (e *Encoder) EncodePrompt(prompt string) ([]int32, error) {
	ids, err := e.tok.Encode(prompt, tokenizer.EncodeOptions{ParseSpecial: true})
	if err != nil {
		return nil, fmt.Errorf("testbed: encode prompt: %w", err)
	}
	return ids, nil
}

// TokenCounts returns how many tokens each of words takes after a space (as
// it stands in a sentence), for reports: "kitchen=1 walk-in closet=3".
func (e *Encoder) TokenCounts(words []string) string {
	var b strings.Builder
	for i, wd := range words {
		ids, err := e.tok.Encode(" "+wd, tokenizer.EncodeOptions{})
		if err != nil {
			continue
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%d", wd, len(ids))
	}
	return b.String()
}
