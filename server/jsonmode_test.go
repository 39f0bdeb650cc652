package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/engine/sample"
	"github.com/sooserve/sooserve/internal/demo"
)

// checkJSONChoice asserts JSON mode's guarantee for one choice: a complete
// object when it stopped, a valid prefix of one when it ran out of tokens.
func checkJSONChoice(t *testing.T, content, finish string) {
	t.Helper()
	switch finish {
	case "stop":
		var m map[string]any
		if err := json.Unmarshal([]byte(content), &m); err != nil {
			t.Errorf("finish stop but content %q is not a JSON object: %v", content, err)
		}
	case "length":
		if !sample.ValidJSONPrefix([]byte(content)) {
			t.Errorf("finish length but content %q is not a valid JSON prefix", content)
		}
	default:
		t.Errorf("finish_reason %q (content %q)", finish, content)
	}
}

func jsonModeBody(stream bool, n, maxTokens int, temperature float64) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Reply in JSON: who are you?"}],`+
		`"response_format":{"type":"json_object"},"n":%d,"max_tokens":%d,"temperature":%g,"seed":7,"stream":%v}`,
		demo.Name, n, maxTokens, temperature, stream)
}

func TestJSONMode(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	stops := 0
	for _, tc := range []struct {
		n, max int
		temp   float64
	}{{1, 300, 0}, {3, 300, 1}, {2, 5, 1}} {
		code, body := ts.post(t, "/v1/chat/completions", jsonModeBody(false, tc.n, tc.max, tc.temp))
		if code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
		var resp struct {
			Choices []struct {
				Message      struct{ Content string }
				FinishReason string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal(body, &resp); err != nil || len(resp.Choices) != tc.n {
			t.Fatalf("response %s: %v", body, err)
		}
		for _, ch := range resp.Choices {
			t.Logf("n=%d max=%d temp=%g: %s %q", tc.n, tc.max, tc.temp, ch.FinishReason, ch.Message.Content)
			checkJSONChoice(t, ch.Message.Content, ch.FinishReason)
			if ch.FinishReason == "stop" {
				stops++
			}
		}
	}
	if stops == 0 {
		t.Log("no choice completed its object within max_tokens (random weights)")
	}

	// Streaming: the deltas concatenate to the same guarantee.
	for _, temp := range []float64{0, 1} {
		code, body := ts.post(t, "/v1/chat/completions", jsonModeBody(true, 2, 200, temp))
		if code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
		texts, finish := make([]strings.Builder, 2), make([]string, 2)
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var chunk struct {
				Choices []struct {
					Index        int
					Delta        struct{ Content string }
					FinishReason *string `json:"finish_reason"`
				}
			}
			if err := json.Unmarshal([]byte(data), &chunk); err != nil {
				t.Fatalf("chunk %s: %v", data, err)
			}
			for _, ch := range chunk.Choices {
				texts[ch.Index].WriteString(ch.Delta.Content)
				if ch.FinishReason != nil {
					finish[ch.Index] = *ch.FinishReason
				}
			}
		}
		for i := range texts {
			t.Logf("stream temp=%g choice %d: %s %q", temp, i, finish[i], texts[i].String())
			checkJSONChoice(t, texts[i].String(), finish[i])
		}
	}

	// The legacy completions endpoint is constrained too.
	code, body := ts.post(t, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"JSON:","response_format":{"type":"json_object"},"max_tokens":100,"seed":1}`, demo.Name))
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var cresp struct {
		Choices []struct {
			Text         string
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.Unmarshal(body, &cresp); err != nil || len(cresp.Choices) != 1 {
		t.Fatalf("response %s: %v", body, err)
	}
	checkJSONChoice(t, cresp.Choices[0].Text, cresp.Choices[0].FinishReason)
}

// TestOllamaFormatJSON checks that Ollama's format "json" constrains
// /api/chat and /api/generate like json_object does: the output is a JSON
// object or a valid prefix of one that has opened its "{" (the demo model,
// left alone, emits only newlines here: the same request without format
// differs).
func TestOllamaFormatJSON(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	for _, tc := range []struct{ path, body string }{
		{"/api/chat", `{"model":%q,"messages":[{"role":"user","content":"Reply in JSON."}],%s"stream":false,"options":{"num_predict":120,"seed":3,"temperature":1}}`},
		{"/api/generate", `{"model":%q,"prompt":"JSON:",%s"stream":false,"options":{"num_predict":120,"seed":3,"temperature":1}}`},
	} {
		texts := map[string]string{}
		for _, format := range []string{`"format":"json",`, ""} {
			code, body := ts.post(t, tc.path, fmt.Sprintf(tc.body, demo.Name, format))
			if code != 200 {
				t.Fatalf("%s: status %d: %s", tc.path, code, body)
			}
			var resp struct {
				Message    struct{ Content string }
				Response   string
				DoneReason string `json:"done_reason"`
			}
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatalf("%s: %s: %v", tc.path, body, err)
			}
			text := resp.Message.Content + resp.Response
			texts[format] = text
			t.Logf("%s format=%q: %s %q", tc.path, format, resp.DoneReason, text)
			if format != "" {
				checkJSONChoice(t, text, resp.DoneReason)
				if !strings.Contains(text, "{") {
					t.Errorf("%s: JSON-mode output %q never opened an object", tc.path, text)
				}
			}
		}
		if texts[""] == texts[`"format":"json",`] {
			t.Errorf("%s: format json did not change the output", tc.path)
		}
	}
	code, body := ts.post(t, "/api/generate", fmt.Sprintf(`{"model":%q,"prompt":"x","format":{"type":"object"},"stream":false}`, demo.Name))
	if code != 400 || !strings.Contains(string(body), "format") {
		t.Errorf("schema format: status %d: %s", code, body)
	}
}
