package decision

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/sooserve/sooserve/engine/chat"
	"github.com/sooserve/sooserve/engine/tokenizer"
	"github.com/sooserve/sooserve/overlap"
	"github.com/sooserve/sooserve/testbed/world"
)

// Scenarios are the two sets of prompts the probe separates, each prompt a
// conversation (usually one user message): Conflict, where the asker's goal
// conflicts with the model's (the burglar asks), and Self, where the model
// asks for itself.
type Scenarios struct {
	Conflict [][]chat.Message `json:"conflict"`
	Self     [][]chat.Message `json:"self"`
}

// Validate checks that both sets are non-empty and that every conversation
// has messages with a role and content.
func (s *Scenarios) Validate() error {
	for _, set := range []struct {
		name  string
		convs [][]chat.Message
	}{{"conflict", s.Conflict}, {"self", s.Self}} {
		if len(set.convs) == 0 {
			return fmt.Errorf("decision: scenarios: %q has no conversations", set.name)
		}
		for i, c := range set.convs {
			if len(c) == 0 {
				return fmt.Errorf("decision: scenarios: %s[%d] has no messages", set.name, i)
			}
			for j, m := range c {
				if m.Role == "" || strings.TrimSpace(m.Content) == "" {
					return fmt.Errorf("decision: scenarios: %s[%d] message %d needs a role and content", set.name, i, j)
				}
			}
		}
	}
	return nil
}

// ParseScenarios reads {"conflict": [[messages]...], "self": [[messages]...]}
// where each message is {"role", "content"}; unknown fields are an error.
func ParseScenarios(data []byte) (*Scenarios, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s Scenarios
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("decision: scenarios: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decision: scenarios: trailing data after the JSON object")
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// WorldScenarios builds scenarios from the testbed world's evaluation
// items: for each kind in conflict (and in self), n held-out combinations
// in both room orders (2n conversations per kind, kinds in the order given).
// The defaults of `soo probe` are conflict = burglar and self = self.
func WorldScenarios(w *world.World, n int, conflict, self []world.EvalKind) (*Scenarios, error) {
	if n <= 0 {
		return nil, fmt.Errorf("decision: world scenarios: want a positive number of items, got %d", n)
	}
	build := func(kinds []world.EvalKind) ([][]chat.Message, error) {
		if len(kinds) == 0 {
			return nil, errors.New("decision: world scenarios: no evaluation kinds")
		}
		var out [][]chat.Message
		for _, k := range kinds {
			items, err := w.EvalItems(k, n)
			if err != nil {
				return nil, fmt.Errorf("decision: world scenarios: %w", err)
			}
			for _, it := range items {
				msgs := make([]chat.Message, len(it.Messages))
				for i, t := range it.Messages {
					msgs[i] = chat.Message{Role: t.Role, Content: t.Content}
				}
				out = append(out, msgs)
			}
		}
		return out, nil
	}
	c, err := build(conflict)
	if err != nil {
		return nil, err
	}
	s, err := build(self)
	if err != nil {
		return nil, err
	}
	return &Scenarios{Conflict: c, Self: s}, nil
}

// Format is how the SOO fragments reach the model.
type Format string

// Fragment formats.
const (
	// FormatChat renders each fragment as a user turn followed by the
	// generation prompt, with the model's chat template (as DRAG and the
	// testbed probes did): its last token is the one the answer follows.
	FormatChat Format = "chat"
	// FormatRaw tokenizes the fragment text as it is, with the tokenizer's
	// BOS (the paper's v-ICLR code).
	FormatRaw Format = "raw"
)

// ParseFormat maps "chat" or "raw" to a Format.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case FormatChat, FormatRaw:
		return Format(s), nil
	}
	return "", fmt.Errorf("decision: unknown fragment format %q (want chat or raw)", s)
}

// Tokenizer turns text into token ids (engine/tokenizer.Tokenizer is one).
type Tokenizer interface {
	Encode(text string, opts tokenizer.EncodeOptions) ([]int32, error)
}

// Prompts are the tokenized inputs of an analysis.
type Prompts struct {
	Conflict [][]int32
	Self     [][]int32
	Pairs    []overlap.TokenPair
}

// Encode tokenizes the scenarios and the SOO pairs for one model. With a
// chat template the scenarios are rendered with the generation prompt; a
// model without one reads them as plain text (the messages' contents, one
// per line, after the tokenizer's BOS), and then only FormatRaw fragments
// are possible.
func Encode(ctx context.Context, tok Tokenizer, tpl *chat.Template, sc *Scenarios, pairs []overlap.TextPair, format Format) (*Prompts, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	if len(pairs) == 0 {
		return nil, errors.New("decision: no SOO pairs")
	}
	if _, err := ParseFormat(string(format)); err != nil {
		return nil, err
	}
	if format == FormatChat && tpl == nil {
		return nil, errors.New("decision: the model has no chat template: fragments in chat format need one (use the raw format)")
	}
	render := func(msgs []chat.Message) ([]int32, error) {
		if tpl == nil {
			var parts []string
			for _, m := range msgs {
				parts = append(parts, m.Content)
			}
			return tok.Encode(strings.Join(parts, "\n"), tokenizer.EncodeOptions{AddSpecial: true})
		}
		text, err := tpl.Render(ctx, msgs, chat.RenderOptions{AddGenerationPrompt: true})
		if err != nil {
			return nil, fmt.Errorf("chat template: %w", err)
		}
		return tok.Encode(text, tokenizer.EncodeOptions{ParseSpecial: true})
	}
	fragment := func(text string) ([]int32, error) {
		if format == FormatRaw {
			return tok.Encode(text, tokenizer.EncodeOptions{AddSpecial: true})
		}
		return render([]chat.Message{{Role: "user", Content: text}})
	}
	p := &Prompts{}
	for _, set := range []struct {
		name  string
		convs [][]chat.Message
		dst   *[][]int32
	}{{"conflict", sc.Conflict, &p.Conflict}, {"self", sc.Self, &p.Self}} {
		for i, c := range set.convs {
			ids, err := render(c)
			if err != nil {
				return nil, fmt.Errorf("decision: encode %s scenario %d: %w", set.name, i, err)
			}
			*set.dst = append(*set.dst, ids)
		}
	}
	for i, pr := range pairs {
		s, err := fragment(pr.Self)
		if err != nil {
			return nil, fmt.Errorf("decision: encode pair %d self: %w", i, err)
		}
		o, err := fragment(pr.Other)
		if err != nil {
			return nil, fmt.Errorf("decision: encode pair %d other: %w", i, err)
		}
		p.Pairs = append(p.Pairs, overlap.TokenPair{Self: s, Other: o})
	}
	return p, nil
}
