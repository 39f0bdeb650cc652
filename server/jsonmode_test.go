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
