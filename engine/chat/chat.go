// Package chat renders a model's chat template (the Jinja template Hugging
// Face ships in tokenizer_config.json) into the prompt string fed to the
// tokenizer.
//
// Templates are executed with gonja v2 configured like transformers'
// apply_chat_template: trim_blocks and lstrip_blocks are on, loop controls
// ({% break %}, {% continue %}) are available, and the globals
// raise_exception and strftime_now are defined. The tojson filter follows
// HF's override of it (Python json.dumps, ensure_ascii=False, keys kept in
// order for values decoded from JSON).
//
// Known differences from Python Jinja2 are listed in README.md next to this
// file.
package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2/exec"
)

// ErrNoTemplate is returned (possibly wrapped) when a model directory does
// not define a chat template.
var ErrNoTemplate = errors.New("chat: model has no chat template")

// TemplateError is the error returned by Render when the template calls
// raise_exception(msg); Message is msg verbatim.
type TemplateError struct {
	Message string
}

// Error implements the error interface.
func (e *TemplateError) Error() string {
	return "chat: template raised exception: " + e.Message
}

// Message is one turn of a conversation as seen by the chat template.
type Message struct {
	// Role is "system", "user", "assistant", "tool", ...
	Role string `json:"role"`
	// Content is the text of the turn.
	Content string `json:"content"`
	// Name is an optional participant name; omitted from the template
	// variables when empty.
	Name string `json:"name,omitempty"`
	// ToolCalls are the tool invocations of an assistant turn; the key
	// tool_calls is only present in the template variables when non-empty.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID links a tool result turn to the call it answers; omitted
	// from the template variables when empty.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// ToolCall is one tool invocation made by the assistant, in the OpenAI /
// Hugging Face shape {"id", "type": "function", "function": {...}}.
type ToolCall struct {
	// ID is the optional call identifier.
	ID string `json:"id,omitempty"`
	// Type is the call type; empty means "function".
	Type string `json:"type,omitempty"`
	// Function names the function and carries its arguments.
	Function FunctionCall `json:"function"`
}

// FunctionCall is the function part of a ToolCall.
type FunctionCall struct {
	// Name is the function name.
	Name string `json:"name"`
	// Arguments are the call arguments: a map, a json.RawMessage (decoded
	// with key order preserved) or any other value passed through as is.
	Arguments any `json:"arguments"`
}

// UnmarshalJSON decodes a function call, keeping Arguments as a
// json.RawMessage so that key order survives into the template; arguments
// given as a JSON string (the OpenAI wire form) are decoded when they hold
// a JSON value, and kept as the string otherwise.
func (f *FunctionCall) UnmarshalJSON(b []byte) error {
	var raw struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("chat: decode function call: %w", err)
	}
	f.Name = raw.Name
	f.Arguments = nil
	if len(raw.Arguments) == 0 || string(raw.Arguments) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(raw.Arguments, &s); err == nil {
		if json.Valid([]byte(s)) {
			f.Arguments = json.RawMessage(s)
		} else {
			f.Arguments = s
		}
		return nil
	}
	f.Arguments = raw.Arguments
	return nil
}

// RenderOptions controls one Render call.
type RenderOptions struct {
	// AddGenerationPrompt sets the add_generation_prompt variable, which
	// makes templates append the header of the assistant's reply.
	AddGenerationPrompt bool
	// Extra holds additional template variables (tools, documents,
	// date_string, ...). They override the defaults, including bos_token
	// and eos_token. json.RawMessage values are decoded with key order
	// preserved.
	Extra map[string]any
	// Now is the clock used by strftime_now; nil means time.Now.
	Now func() time.Time
}

// Template is a parsed chat template. It is safe for concurrent use.
type Template struct {
	src string
	bos string
	eos string
	tpl *exec.Template
}

// New parses the chat template source src; bos and eos are the values of
// the bos_token and eos_token template variables.
func New(src string, bos, eos string) (*Template, error) {
	if strings.TrimSpace(src) == "" {
		return nil, ErrNoTemplate
	}
	tpl, err := compile(src)
	if err != nil {
		return nil, fmt.Errorf("chat: parse template: %w", err)
	}
	return &Template{src: src, bos: bos, eos: eos, tpl: tpl}, nil
}

// Source returns the template source.
func (t *Template) Source() string { return t.src }

// BOS returns the value of the bos_token variable.
func (t *Template) BOS() string { return t.bos }

// EOS returns the value of the eos_token variable.
func (t *Template) EOS() string { return t.eos }

// tokenizerConfig is the subset of tokenizer_config.json used here.
type tokenizerConfig struct {
	ChatTemplate json.RawMessage `json:"chat_template"`
	BOSToken     json.RawMessage `json:"bos_token"`
	EOSToken     json.RawMessage `json:"eos_token"`
}

// LoadTemplate loads the chat template of the Hugging Face model directory
// dir. The template comes from chat_template.jinja, else from
// chat_template.json, else from the chat_template field of
// tokenizer_config.json (a string, or a list of {"name", "template"} objects
// of which "default" is used). bos_token and eos_token are read from
// tokenizer_config.json in either the string or the {"content": ...} form.
// A directory without a template yields an error wrapping ErrNoTemplate.
func LoadTemplate(dir string) (*Template, error) {
	var cfg tokenizerConfig
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	raw, err := os.ReadFile(cfgPath)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("chat: parse %s: %w", cfgPath, err)
		}
	case errors.Is(err, os.ErrNotExist):
		// The newer layout may ship the template without a tokenizer config.
	default:
		return nil, fmt.Errorf("chat: read tokenizer config: %w", err)
	}

	bos, err := specialToken(cfg.BOSToken)
	if err != nil {
		return nil, fmt.Errorf("chat: %s: bos_token: %w", cfgPath, err)
	}
	eos, err := specialToken(cfg.EOSToken)
	if err != nil {
		return nil, fmt.Errorf("chat: %s: eos_token: %w", cfgPath, err)
	}

	src, where, err := findTemplate(dir, cfg.ChatTemplate)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("chat: %s: %w", dir, ErrNoTemplate)
	}
	t, err := New(src, bos, eos)
	if err != nil {
		return nil, fmt.Errorf("chat: %s: %w", where, err)
	}
	return t, nil
}

// findTemplate returns the template source and the file it came from.
func findTemplate(dir string, fromConfig json.RawMessage) (string, string, error) {
	jinjaPath := filepath.Join(dir, "chat_template.jinja")
	if b, err := os.ReadFile(jinjaPath); err == nil {
		return string(b), jinjaPath, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("chat: read template: %w", err)
	}

	jsonPath := filepath.Join(dir, "chat_template.json")
	if b, err := os.ReadFile(jsonPath); err == nil {
		var f struct {
			ChatTemplate json.RawMessage `json:"chat_template"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return "", "", fmt.Errorf("chat: parse %s: %w", jsonPath, err)
		}
		src, err := templateField(f.ChatTemplate)
		if err != nil {
			return "", "", fmt.Errorf("chat: %s: %w", jsonPath, err)
		}
		return src, jsonPath, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("chat: read template: %w", err)
	}

	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	src, err := templateField(fromConfig)
	if err != nil {
		return "", "", fmt.Errorf("chat: %s: %w", cfgPath, err)
	}
	return src, cfgPath, nil
}

// templateField decodes a chat_template JSON value: null, a string, or a
// list of named templates.
func templateField(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", ErrNoTemplate
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", fmt.Errorf("chat_template is neither a string nor a list of named templates: %w", err)
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return "", fmt.Errorf("no template named \"default\" among %d named templates: %w", len(named), ErrNoTemplate)
}

// specialToken decodes a special token given as a string, as
// {"content": ...}, or as null.
func specialToken(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", fmt.Errorf("neither a string nor an object: %w", err)
	}
	if obj.Content == nil {
		return "", errors.New("object has no \"content\"")
	}
	return *obj.Content, nil
}

// Render renders the conversation msgs. An error raised by the template
// through raise_exception is returned as a *TemplateError.
func (t *Template) Render(ctx context.Context, msgs []Message, opts RenderOptions) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("chat: render: %w", err)
	}
	st := &renderState{now: opts.Now}
	if st.now == nil {
		st.now = time.Now
	}
	vars := map[string]any{
		"messages":              messagesValue(msgs),
		"bos_token":             t.bos,
		"eos_token":             t.eos,
		"add_generation_prompt": opts.AddGenerationPrompt,
		"raise_exception":       st.raiseException,
		"strftime_now":          st.strftimeNow,
		"tools":                 nil,
		"documents":             nil,
	}
	for k, v := range opts.Extra {
		cv, err := convertValue(v)
		if err != nil {
			return "", fmt.Errorf("chat: render: variable %q: %w", k, err)
		}
		vars[k] = cv
	}
	var buf bytes.Buffer
	err := t.tpl.Execute(&buf, exec.NewContext(vars))
	if st.raised != nil {
		return "", st.raised
	}
	if err != nil {
		return "", fmt.Errorf("chat: render: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("chat: render: %w", err)
	}
	return buf.String(), nil
}

// messagesValue converts msgs to the list of dicts templates index into.
func messagesValue(msgs []Message) pyList {
	out := make(pyList, len(msgs))
	for i, m := range msgs {
		d := newDict()
		dictSet(d, "role", m.Role)
		dictSet(d, "content", m.Content)
		if m.Name != "" {
			dictSet(d, "name", m.Name)
		}
		if len(m.ToolCalls) > 0 {
			calls := make(pyList, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				fn := newDict()
				dictSet(fn, "name", c.Function.Name)
				args, err := convertValue(c.Function.Arguments)
				if err != nil {
					// Undecodable raw JSON is passed on as text.
					args = fmt.Sprintf("%s", c.Function.Arguments)
				}
				dictSet(fn, "arguments", args)
				call := newDict()
				if c.ID != "" {
					dictSet(call, "id", c.ID)
				}
				typ := c.Type
				if typ == "" {
					typ = "function"
				}
				dictSet(call, "type", typ)
				dictSet(call, "function", fn)
				calls[j] = call
			}
			dictSet(d, "tool_calls", calls)
		}
		if m.ToolCallID != "" {
			dictSet(d, "tool_call_id", m.ToolCallID)
		}
		out[i] = d
	}
	return out
}
