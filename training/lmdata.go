package training

import (
	"encoding/json"
	"fmt"
	"strings"
)

// CapabilityFile is the LM anchor's document set a model directory may
// ship (lm_dataset "model"): JSON Lines, one document per line, each
// {"segments": [{"text", "weight"?, "special"?}, ...]} as the testbed's
// renderer writes them, or {"text": ...} for a plain text.
const CapabilityFile = "soo_capability.jsonl"

// LMSegment is a piece of an LM document: its text, the weight of its
// tokens as targets (default 1; 0: context only), and whether the text is
// one special token (e.g. "<|im_start|>").
type LMSegment struct {
	Text    string   `json:"text"`
	Weight  *float64 `json:"weight,omitempty"`
	Special bool     `json:"special,omitempty"`
}

// LMText is an LM document before tokenization: a plain Text (tokenized
// with the model's special prefix, every token weight 1) or Segments
// (tokenized one by one, nothing added).
type LMText struct {
	Text     string      `json:"text,omitempty"`
	Segments []LMSegment `json:"segments,omitempty"`
}

// LMDoc is a tokenized LM document: its tokens and per token the weight of
// its loss as a target (see cpu.LMBatch.Weights).
type LMDoc struct {
	Tokens  []int32
	Weights []float32
}

// ParseLMTexts reads LM documents as a JSON array or JSON Lines; each
// document is a string (a plain text) or an LMText object.
func ParseLMTexts(data []byte) ([]LMText, error) {
	trim := strings.TrimSpace(string(data))
	var raws []json.RawMessage
	if strings.HasPrefix(trim, "[") {
		if err := json.Unmarshal([]byte(trim), &raws); err != nil {
			return nil, fmt.Errorf("training: lm documents: %w", err)
		}
	} else {
		for _, line := range strings.Split(trim, "\n") {
			if line = strings.TrimSpace(line); line != "" {
				raws = append(raws, json.RawMessage(line))
			}
		}
	}
	if len(raws) == 0 {
		return nil, fmt.Errorf("training: no lm documents")
	}
	out := make([]LMText, len(raws))
	for i, r := range raws {
		var s string
		if json.Unmarshal(r, &s) == nil {
			out[i].Text = s
		} else {
			dec := json.NewDecoder(strings.NewReader(string(r)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&out[i]); err != nil {
				return nil, fmt.Errorf("training: lm document %d: want a string, {\"text\"} or {\"segments\"}: %w", i, err)
			}
		}
		d := out[i]
		if (d.Text == "") == (len(d.Segments) == 0) {
			return nil, fmt.Errorf("training: lm document %d needs either a non-empty \"text\" or \"segments\"", i)
		}
		for k, sg := range d.Segments {
			if sg.Weight != nil && !(*sg.Weight >= 0 && *sg.Weight <= 100) {
				return nil, fmt.Errorf("training: lm document %d segment %d: weight must be in [0, 100], got %g", i, k, *sg.Weight)
			}
		}
	}
	return out, nil
}

// EncodeLMTexts tokenizes documents: a plain text with text, segments
// with seg (special: the text is one special token), rejecting documents
// of more than maxLen tokens or without a target of non-zero weight.
func EncodeLMTexts(docs []LMText, text func(string) ([]int32, error), seg func(text string, special bool) ([]int32, error), maxLen int) ([]LMDoc, error) {
	out := make([]LMDoc, len(docs))
	for i, d := range docs {
		var doc LMDoc
		if d.Text != "" {
			ids, err := text(d.Text)
			if err != nil {
				return nil, fmt.Errorf("training: lm document %d: %w", i, err)
			}
			doc.Tokens = ids
			for range ids {
				doc.Weights = append(doc.Weights, 1)
			}
		}
		for k, sg := range d.Segments {
			ids, err := seg(sg.Text, sg.Special)
			if err != nil {
				return nil, fmt.Errorf("training: lm document %d segment %d: %w", i, k, err)
			}
			if sg.Special && len(ids) != 1 {
				return nil, fmt.Errorf("training: lm document %d segment %d: %q is not one special token", i, k, clip(sg.Text))
			}
			w := float32(1)
			if sg.Weight != nil {
				w = float32(*sg.Weight)
			}
			doc.Tokens = append(doc.Tokens, ids...)
			for range ids {
				doc.Weights = append(doc.Weights, w)
			}
		}
		if len(doc.Tokens) < 2 || len(doc.Tokens) > maxLen {
			return nil, fmt.Errorf("training: lm document %d has %d tokens (want 2..%d)", i, len(doc.Tokens), maxLen)
		}
		target := false
		for _, w := range doc.Weights[1:] {
			target = target || w > 0
		}
		if !target {
			return nil, fmt.Errorf("training: lm document %d has no token with a non-zero weight to predict", i)
		}
		out[i] = doc
	}
	return out, nil
}
