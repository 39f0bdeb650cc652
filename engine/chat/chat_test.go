package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var fixedNow = time.Date(2024, 9, 5, 14, 3, 7, 0, time.UTC)

func model(name string) string { return filepath.Join(testdataDir, "models", name) }

var (
	sys = Message{Role: "system", Content: "You are a terse assistant."}
	u1  = Message{Role: "user", Content: "  What is 2+2?\n"}
	a1  = Message{Role: "assistant", Content: "4."}
	u2  = Message{Role: "user", Content: "And times 3?"}
)

// TestRenderModels checks hand-written expectations, derived by reading the
// templates, for each fixture model.
func TestRenderModels(t *testing.T) {
	const l3sys = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 05 Sep 2024\n\n"
	tests := []struct {
		model string
		msgs  []Message
		agp   bool
		want  string
	}{
		{"llama-2-chat", []Message{u1, a1, u2}, false,
			"<s>[INST] What is 2+2? [/INST] 4. </s><s>[INST] And times 3? [/INST]"},
		{"llama-2-chat", []Message{u1, a1, u2}, true, // template ignores add_generation_prompt
			"<s>[INST] What is 2+2? [/INST] 4. </s><s>[INST] And times 3? [/INST]"},
		{"llama-2-chat", []Message{sys, u1, a1}, false,
			"<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\n  What is 2+2? [/INST] 4. </s>"},
		{"mistral-7b-instruct-v0.2", []Message{u1, a1, u2}, false,
			"<s>[INST]   What is 2+2?\n [/INST]4.</s>[INST] And times 3? [/INST]"},
		{"mistral-7b-instruct-v0.2", []Message{u1}, true,
			"<s>[INST]   What is 2+2?\n [/INST]"},
		{"llama-3-instruct", []Message{sys, u1, a1}, false,
			"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"},
		{"llama-3-instruct", []Message{u1}, true,
			"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
		{"llama-3.2-instruct", []Message{u1}, false,
			l3sys + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"},
		{"llama-3.2-instruct", []Message{sys, u1, a1, u2}, true,
			l3sys + "You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd times 3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
		{"qwen2-instruct", []Message{u1, a1}, true,
			"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n  What is 2+2?\n<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>assistant\n"},
		{"qwen2-instruct", []Message{sys, u2}, false,
			"<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nAnd times 3?<|im_end|>\n"},
		{"gemma-2-it", []Message{u1, a1, u2}, false,
			"<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4.<end_of_turn>\n<start_of_turn>user\nAnd times 3?<end_of_turn>\n"},
		{"gemma-2-it", []Message{u2}, true,
			"<bos><start_of_turn>user\nAnd times 3?<end_of_turn>\n<start_of_turn>model\n"},
		{"smollm2-instruct", []Message{u2}, true,
			"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nAnd times 3?<|im_end|>\n<|im_start|>assistant\n"},
		{"smollm2-instruct", []Message{sys, u2, a1}, false,
			"<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nAnd times 3?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"},
	}
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%s/%d", tc.model, i), func(t *testing.T) {
			tpl, err := LoadTemplate(model(tc.model))
			if err != nil {
				t.Fatal(err)
			}
			got, err := tpl.Render(context.Background(), tc.msgs, RenderOptions{
				AddGenerationPrompt: tc.agp,
				Now:                 func() time.Time { return fixedNow },
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestRaiseException(t *testing.T) {
	tests := []struct {
		model string
		msgs  []Message
		want  string
	}{
		{"mistral-7b-instruct-v0.2", []Message{u1, u2}, "Conversation roles must alternate user/assistant/user/assistant/..."},
		{"mistral-7b-instruct-v0.2", []Message{a1}, "Conversation roles must alternate user/assistant/user/assistant/..."},
		{"mistral-7b-instruct-v0.2", []Message{sys, u1}, "Conversation roles must alternate user/assistant/user/assistant/..."},
		{"llama-2-chat", []Message{sys, a1}, "Conversation roles must alternate user/assistant/user/assistant/..."},
		{"gemma-2-it", []Message{sys, u1}, "System role not supported"},
		{"gemma-2-it", []Message{u1, u2}, "Conversation roles must alternate user/assistant/user/assistant/..."},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			tpl, err := LoadTemplate(model(tc.model))
			if err != nil {
				t.Fatal(err)
			}
			out, err := tpl.Render(context.Background(), tc.msgs, RenderOptions{})
			var te *TemplateError
			if !errors.As(err, &te) {
				t.Fatalf("want *TemplateError, got %q, %v", out, err)
			}
			if te.Message != tc.want || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want message %q", err, tc.want)
			}
		})
	}
}

func TestStrftimeNowUsesClock(t *testing.T) {
	tpl, err := LoadTemplate(model("llama-3.2-instruct"))
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	got, err := tpl.Render(context.Background(), []Message{u2}, RenderOptions{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "Today Date: 02 Jan 2025\n") {
		t.Errorf("date not from clock: %q", got)
	}
	// date_string given by the caller wins over strftime_now.
	got, err = tpl.Render(context.Background(), []Message{u2}, RenderOptions{Now: func() time.Time { return clock }, Extra: map[string]any{"date_string": "31 Dec 1999"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "Today Date: 31 Dec 1999\n") {
		t.Errorf("date_string ignored: %q", got)
	}
}

func TestStrftime(t *testing.T) {
	tm := time.Date(2024, 3, 7, 15, 4, 9, 123456000, time.UTC)
	for format, want := range map[string]string{
		"%d %b %Y":             "07 Mar 2024",
		"%A, %B %-d, %y":       "Thursday, March 7, 24",
		"%H:%M:%S %p %I":       "15:04:09 PM 03",
		"%Y-%m-%dT%H:%M:%S.%f": "2024-03-07T15:04:09.123456",
		"%j %a %% %Q":          "067 Thu % %Q",
	} {
		if got := strftime(tm, format); got != want {
			t.Errorf("strftime(%q) = %q, want %q", format, got, want)
		}
	}
}

func TestLoadTemplateForms(t *testing.T) {
	tests := []struct {
		model, bos, eos, srcPrefix string
	}{
		{"llama-2-chat", "<s>", "</s>", "{% if messages[0]['role'] == 'system' %}"}, // AddedToken object form
		{"mistral-7b-instruct-v0.2", "<s>", "</s>", "{{ bos_token }}"},
		{"qwen2-instruct", "", "<|im_end|>", "{% for message in messages %}"}, // bos_token: null
		{"list-form", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "{{ bos_token }}{% for m in messages %}"},
		{"jinja-file", "<s>", "</s>", "{% for message in messages %}"},
		{"json-file", "<s>", "</s>", "{{ bos_token }}"},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			tpl, err := LoadTemplate(model(tc.model))
			if err != nil {
				t.Fatal(err)
			}
			if tpl.BOS() != tc.bos || tpl.EOS() != tc.eos {
				t.Errorf("bos/eos = %q/%q, want %q/%q", tpl.BOS(), tpl.EOS(), tc.bos, tc.eos)
			}
			if !strings.HasPrefix(tpl.Source(), tc.srcPrefix) {
				t.Errorf("source %q does not start with %q", tpl.Source(), tc.srcPrefix)
			}
		})
	}
	tpl, err := LoadTemplate(model("list-form"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tpl.Render(context.Background(), []Message{u2}, RenderOptions{AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "<BOS_TOKEN><|USER|>And times 3?<|END_OF_TURN_TOKEN|><|ASSISTANT|>"; got != want {
		t.Errorf("list-form default template: got %q, want %q", got, want)
	}
}

func TestNoTemplate(t *testing.T) {
	_, err := LoadTemplate(model("no-template"))
	if !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("want ErrNoTemplate, got %v", err)
	}
	if !strings.Contains(err.Error(), "chat: model has no chat template") {
		t.Errorf("unclear error: %v", err)
	}
	_, err = LoadTemplate(t.TempDir()) // no files at all
	if !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("empty dir: want ErrNoTemplate, got %v", err)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), `{"chat_template": [{"name": "tool_use", "template": "x"}]}`)
	if _, err = LoadTemplate(dir); !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("no default among named templates: want ErrNoTemplate, got %v", err)
	}
	if _, err := New("  ", "", ""); !errors.Is(err, ErrNoTemplate) {
		t.Fatalf("New with empty source: want ErrNoTemplate, got %v", err)
	}
}

func TestLoadTemplateErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), `{"chat_template": "{% for m in messages %}", "bos_token": "<s>"}`)
	if _, err := LoadTemplate(dir); err == nil || !strings.Contains(err.Error(), "parse template") {
		t.Errorf("unterminated for: got %v", err)
	}
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), `{"chat_template": "x", "bos_token": {"lstrip": false}}`)
	if _, err := LoadTemplate(dir); err == nil || !strings.Contains(err.Error(), "bos_token") {
		t.Errorf("bos_token without content: got %v", err)
	}
	writeFile(t, filepath.Join(dir, "tokenizer_config.json"), `{not json`)
	if _, err := LoadTemplate(dir); err == nil || errors.Is(err, ErrNoTemplate) {
		t.Errorf("invalid JSON: got %v", err)
	}
}

func TestRenderContextCanceled(t *testing.T) {
	tpl, err := New("{{ messages | length }}", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tpl.Render(ctx, nil, RenderOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("want context.Canceled, got %v", err)
	}
}

func TestMessageFields(t *testing.T) {
	tpl, err := New(`{% for m in messages %}{{ m.role }}:{{ m.name | default('-') }}:{% if 'tool_calls' in m %}{{ m.tool_calls[0].function.name }}({{ m.tool_calls[0].function.arguments | tojson }}){% endif %}:{{ m.tool_call_id | default('-') }};{% endfor %}`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var call FunctionCall
	if err := json.Unmarshal([]byte(`{"name": "f", "arguments": {"z": 1, "a": "é"}}`), &call); err != nil {
		t.Fatal(err)
	}
	msgs := []Message{
		{Role: "user", Content: "hi", Name: "bob"},
		{Role: "assistant", ToolCalls: []ToolCall{{ID: "c1", Function: call}}},
		{Role: "tool", Content: "ok", ToolCallID: "c1"},
		{Role: "assistant", ToolCalls: []ToolCall{{Function: FunctionCall{Name: "g", Arguments: map[string]any{"y": 2, "b": []int{1}}}}}},
	}
	got, err := tpl.Render(context.Background(), msgs, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := `user:bob::-;assistant:-:f({"z": 1, "a": "é"}):-;tool:-::c1;assistant:-:g({"b": [1], "y": 2}):-;`
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestConcurrentRender(t *testing.T) {
	tpl, err := LoadTemplate(model("llama-3.2-instruct"))
	if err != nil {
		t.Fatal(err)
	}
	gemma, err := LoadTemplate(model("gemma-2-it"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				day := time.Date(2024, 1, 1+g, 0, 0, 0, 0, time.UTC)
				content := fmt.Sprintf("msg %d/%d", g, i)
				out, err := tpl.Render(context.Background(), []Message{{Role: "user", Content: content}}, RenderOptions{
					AddGenerationPrompt: true,
					Now:                 func() time.Time { return day },
				})
				if err != nil {
					errs <- err
					return
				}
				if !strings.Contains(out, "\n\n"+content+"<|eot_id|>") || !strings.Contains(out, day.Format("02 Jan 2006")) {
					errs <- fmt.Errorf("goroutine %d: wrong output %q", g, out)
					return
				}
				// Raise in one template must not leak into other renders.
				_, err = gemma.Render(context.Background(), []Message{sys}, RenderOptions{})
				var te *TemplateError
				if !errors.As(err, &te) {
					errs <- fmt.Errorf("gemma: want TemplateError, got %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLStripBlocks(t *testing.T) {
	for src, want := range map[string]string{
		"a\n  {% if x %}b":      "a\n{% if x %}b",
		"a {% if x %}":          "a {% if x %}",
		"{{ x }} {% if y %}":    "{{ x }} {% if y %}",
		"  {%+ if x %}":         "  {%+ if x %}",
		"\t {# c #}\n  {{ x }}": "{# c #}\n  {{ x }}",
		"{{ '  {% x' }}\n  {% raw %}\n  {% a %}{% endraw %}": "{{ '  {% x' }}\n{% raw %}\n  {% a %}{% endraw %}",
	} {
		if got := lstripBlocks(src); got != want {
			t.Errorf("lstripBlocks(%q) = %q, want %q", src, got, want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
