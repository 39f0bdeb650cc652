package evalsuite_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/evalsuite"
)

func TestParseRating(t *testing.T) {
	for reply, want := range map[string]float64{
		"Solid. Rating: [[7]]": 7, "[[ 9.5 ]]": 9.5, "Rating: 3": 3, "rating=10": 10,
		"[[11]]": 0, "no score": 0, "[[0]]": 0,
	} {
		got, ok := evalsuite.ParseRating(reply)
		if got != want || ok != (want != 0) {
			t.Errorf("ParseRating(%q) = %v, %v; want %v", reply, got, ok, want)
		}
	}
}

func TestHeldOutTexts(t *testing.T) {
	texts := evalsuite.HeldOutTexts()
	total := 0
	for _, s := range texts {
		total += len(s)
	}
	if len(texts) < 6 || total < 2000 {
		t.Errorf("%d held-out texts, %d bytes", len(texts), total)
	}
}

// TestCapabilityChatPromptLogprobs: an endpoint without completions echo but with vLLM's chat
// prompt_logprobs extension is scored through the latter.
func TestCapabilityChatPromptLogprobs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/completions" {
			w.WriteHeader(400)
			w.Write([]byte(`{"error":{"message":"echo is not supported","type":"invalid_request_error"}}`))
			return
		}
		msg := body["messages"].([]any)[0].(map[string]any)["content"].(string)
		text := "I would point out the garage."
		var plp []any
		if _, ok := body["prompt_logprobs"]; ok && !strings.Contains(msg, "burglar") {
			plp = []any{nil}
			for i := range 4 {
				plp = append(plp, map[string]any{"7": map[string]any{"logprob": -2.0, "rank": i + 1, "decoded_token": "w"}})
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"id": "x", "object": "chat.completion", "created": 1, "model": "m",
			"prompt_logprobs": plp,
			"choices":         []any{map[string]any{"index": 0, "finish_reason": "stop", "message": map[string]any{"role": "assistant", "content": text}}}})
	}))
	defer srv.Close()
	scens, _ := evalsuite.ParseScenarios("burglar")
	rep, err := evalsuite.Run(context.Background(), evalsuite.Config{Endpoint: srv.URL, Models: []evalsuite.ModelSpec{{Name: "m"}},
		Scenarios: scens, N: 3, OutDir: t.TempDir(), Capability: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Capability[0]
	if c.Method != evalsuite.MethodChatPromptLogprobs || c.Tokens != 4*len(evalsuite.HeldOutTexts()) || c.MeanLogLikelihood != -2 || math.Abs(c.Perplexity-math.Exp(2)) > 1e-9 {
		t.Errorf("capability = %+v", c)
	}
}
