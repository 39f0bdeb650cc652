package world

import "strings"

// The special tokens of the testbed's tokenizer (Qwen2's ChatML set).
const (
	// EndOfText ends a raw-text document; also the padding token.
	EndOfText = "<|endoftext|>"
	// ImStart opens a chat message.
	ImStart = "<|im_start|>"
	// ImEnd closes a chat message; the end-of-sequence token of chat generation.
	ImEnd = "<|im_end|>"
)

// SpecialTokens returns the tokenizer's special tokens, in id order: <|endoftext|>,
// <|im_start|>, <|im_end|>.
func SpecialTokens() []string { return []string{EndOfText, ImStart, ImEnd} }

// ChatTemplate is the Jinja chat template for tokenizer_config.json: Qwen2's ChatML without its
// default system prompt. Each message renders as "<|im_start|>ROLE\nCONTENT<|im_end|>\n";
// add_generation_prompt appends "<|im_start|>assistant\n".
const ChatTemplate = "{%- for message in messages %}" +
	"{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
	"{%- endfor %}" +
	"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// Weights are the loss weights of the parts of a rendered document.
type Weights struct {
	// Assistant weighs an assistant message's content and its closing <|im_end|> (default 5).
	Assistant float32 `json:"assistant"`
	// User weighs a user message's content, its markup, and the markup that opens and follows
	// every assistant message (default 1).
	User float32 `json:"user"`
	// System weighs a system message, markup included (default 1).
	System float32 `json:"system"`
	// Text weighs a raw-text document and its closing <|endoftext|> (default 1).
	Text float32 `json:"text"`
}

// DefaultWeights returns the probe's recipe: every token is trained on, the assistant's answers
// five times as much (probes/testbed-probe-2: "loss on all tokens, answer tokens x5"; the
// prompts' weight of 1 is what taught the tiny model the world's sentences). Set User to 0 for
// assistant-only supervised fine-tuning.
func DefaultWeights() Weights { return Weights{Assistant: 5, User: 1, System: 1, Text: 1} }

// Segment is a piece of rendered text with the loss weight of every token in it.
type Segment struct {
	// Text is the piece of text.
	Text string `json:"text"`
	// Weight is the loss weight of the tokens that encode Text.
	Weight float32 `json:"weight"`
	// Special marks a segment that is exactly one special token.
	Special bool `json:"special,omitempty"`
}

// Render renders doc as ChatML segments with the weights w. A chat message becomes
// "<|im_start|>" "ROLE\n" "CONTENT" "<|im_end|>" "\n" (Qwen2's ChatML, as ChatTemplate
// writes it); a raw-text turn becomes "CONTENT" "<|endoftext|>". Segments break at special
// tokens and newlines, where a byte-level pre-tokenizer splits anyway, so tokenizing each
// segment alone gives the tokens of the whole.
func Render(doc Document, w Weights) []Segment {
	var out []Segment
	add := func(text string, wt float32, special bool) {
		if text != "" {
			out = append(out, Segment{Text: text, Weight: wt, Special: special})
		}
	}
	for _, t := range doc.Turns {
		if t.Role == RoleText {
			add(t.Content, w.Text, false)
			add(EndOfText, w.Text, true)
			continue
		}
		head, body := w.User, w.User
		switch t.Role {
		case RoleAssistant:
			body = w.Assistant
		case RoleSystem:
			head, body = w.System, w.System
		}
		add(ImStart, head, true)
		add(t.Role+"\n", head, false)
		add(t.Content, body, false)
		add(ImEnd, body, true)
		add("\n", head, false)
	}
	return out
}

// Render renders doc with the world's weights (Options.Weights).
func (w *World) Render(doc Document) []Segment { return Render(doc, w.opts.Weights) }

// Join concatenates the segments' text.
func Join(segs []Segment) string {
	var b strings.Builder
	for _, s := range segs {
		b.WriteString(s.Text)
	}
	return b.String()
}

// RenderPrompt renders chat messages as ChatML followed by the generation prompt
// "<|im_start|>assistant\n": what ChatTemplate gives with add_generation_prompt.
func RenderPrompt(msgs []Turn) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString(ImStart + m.Role + "\n" + m.Content + ImEnd + "\n")
	}
	b.WriteString(ImStart + "assistant\n")
	return b.String()
}
