package training

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sooserve/sooserve/overlap"
)

// Pair is one self-referencing prompt and its other-referencing twin.
type Pair = overlap.TextPair

// PaperTemplates are the three self/other templates of the paper's Table 1
// (PAPER.md §2.1), verbatim; {item} is replaced by a training item.
var PaperTemplates = [3]Pair{
	{Self: "You have the goal of stealing the {item}. If you needed to suggest one room to yourself",
		Other: "Bob has the goal of stealing the {item}. If you needed to suggest one room to Bob"},
	{Self: "You intend to steal the {item}. If you were required to recommend one room to yourself",
		Other: "Bob intends to steal the {item}. If you were required to recommend one room to Bob"},
	{Self: "You are planning to steal the {item}. If you would have to point out one room to yourself",
		Other: "Bob is planning to steal the {item}. If you would have to point out one room to Bob"},
}

// PaperItems are the 52 training items of PAPER.md §2.2, in order (the same
// list the latent-SOO probe uses). None of them is in the evaluation vocabulary.
var PaperItems = overlap.ProbeItems

// PaperPairs returns the built-in "paper" dataset: every template with every
// training item (3 × 52 = 156 pairs), template-major.
func PaperPairs() []Pair {
	out := make([]Pair, 0, len(PaperTemplates)*len(PaperItems))
	for _, t := range PaperTemplates {
		for _, item := range PaperItems {
			out = append(out, Pair{
				Self:  strings.ReplaceAll(t.Self, "{item}", item),
				Other: strings.ReplaceAll(t.Other, "{item}", item),
			})
		}
	}
	return out
}

// ParsePairs reads user pairs as a JSON array or JSON Lines of {"self","other"} objects.
func ParsePairs(data []byte) ([]Pair, error) {
	trim := strings.TrimSpace(string(data))
	var pairs []Pair
	if strings.HasPrefix(trim, "[") {
		if err := json.Unmarshal([]byte(trim), &pairs); err != nil {
			return nil, fmt.Errorf("training: pairs: %w", err)
		}
	} else {
		for i, line := range strings.Split(trim, "\n") {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			var p Pair
			if err := json.Unmarshal([]byte(line), &p); err != nil {
				return nil, fmt.Errorf("training: pairs line %d: %w", i+1, err)
			}
			pairs = append(pairs, p)
		}
	}
	if len(pairs) == 0 {
		return nil, fmt.Errorf("training: no pairs")
	}
	for i, p := range pairs {
		if strings.TrimSpace(p.Self) == "" || strings.TrimSpace(p.Other) == "" {
			return nil, fmt.Errorf("training: pair %d needs non-empty \"self\" and \"other\"", i)
		}
	}
	return pairs, nil
}

// TokPair is a tokenized pair.
type TokPair struct {
	Self, Other []int32
}

// Encoder turns a prompt into token ids (raw, or through a chat template).
type Encoder func(text string) ([]int32, error)

// Tokenize encodes every pair with enc, rejecting pairs longer than maxLen tokens.
func Tokenize(pairs []Pair, enc Encoder, maxLen int) ([]TokPair, error) {
	out := make([]TokPair, len(pairs))
	for i, p := range pairs {
		s, err := enc(p.Self)
		if err != nil {
			return nil, fmt.Errorf("training: pair %d self: %w", i, err)
		}
		o, err := enc(p.Other)
		if err != nil {
			return nil, fmt.Errorf("training: pair %d other: %w", i, err)
		}
		if len(s) == 0 || len(o) == 0 || len(s) > maxLen || len(o) > maxLen {
			return nil, fmt.Errorf("training: pair %d has %d and %d tokens (want 1..%d)", i, len(s), len(o), maxLen)
		}
		out[i] = TokPair{s, o}
	}
	return out, nil
}
