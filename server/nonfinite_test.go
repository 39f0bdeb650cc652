package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/engine/safetensors"
	"github.com/sooserve/sooserve/internal/demo"
)

// peftFiles returns the PEFT files of a rank-2 q_proj/v_proj adapter for
// base, every weight w, with lora_alpha alpha.
func peftFiles(t *testing.T, base *model.Config, alpha float64, w float32) adapters.Files {
	t.Helper()
	a := &lora.Adapter{Rank: 2, Alpha: alpha, Modules: []model.Module{model.Q, model.V}, Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	for l := range a.Layers {
		for _, m := range a.Modules {
			out, in := base.Shape(m)
			p := &lora.Pair{R: 2, In: in, Out: out, A: make([]float32, 2*in), B: make([]float32, out*2)}
			for i := range p.A {
				p.A[i] = w
			}
			for i := range p.B {
				p.B[i] = w
			}
			a.Layers[l][m] = p
		}
	}
	var wb bytes.Buffer
	if err := safetensors.Write(&wb, adapters.Tensors(a), map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	cj, _ := json.Marshal(map[string]any{"peft_type": "LORA", "r": 2, "lora_alpha": alpha, "target_modules": []string{"q_proj", "v_proj"}})
	return adapters.Files{Config: cj, Weights: wb.Bytes()}
}

// brokenLoRA returns the engine adapter of peftFiles(base, 2, 1e30) built
// in memory, bypassing the checks no upload passes any more: it overflows
// float32, so everything computed through it is NaN.
func brokenLoRA(base *model.Config) *lora.Adapter {
	a := &lora.Adapter{Name: "broken", Rank: 2, Alpha: 2, Modules: []model.Module{model.Q, model.V}, Layers: make([][model.NumModules]*lora.Pair, base.Layers)}
	for l := range a.Layers {
		for _, m := range a.Modules {
			out, in := base.Shape(m)
			p := &lora.Pair{R: 2, In: in, Out: out, Scale: 1, A: make([]float32, 2*in), B: make([]float32, out*2)}
			for i := range p.A {
				p.A[i] = 1e30
			}
			for i := range p.B {
				p.B[i] = 1e30
			}
			a.Layers[l][m] = p
		}
	}
	return a
}

// TestOverflowingAdapterUploadRejected: lora_alpha 1e308 or weights of 1e30
// are a 400 naming the field or tensor, by upload and by the vLLM load
// route, and leave nothing behind (today's main answered 201).
func TestOverflowingAdapterUploadRejected(t *testing.T) {
	as := startAdapters(t, diskStore(t), adapters.Limits{})
	cfg := as.base.Config
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		f    adapters.Files
		want []string
	}{
		{"alpha 1e308", peftFiles(t, cfg, 1e308, 0.01), []string{"lora_alpha", "1e+308"}},
		{"weights 1e30", peftFiles(t, cfg, 2, 1e30), []string{adapters.Key(0, "self_attn.q_proj", "A"), "Frobenius norm"}},
	} {
		code, b := as.upload(t, "bad", tc.f, "")
		if code != http.StatusBadRequest {
			t.Errorf("%s: upload %d %s, want 400", tc.name, code, b)
		}
		checkEnvelope(t, b, TypeInvalidRequest, "")
		for _, w := range tc.want {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s: upload error %s does not say %q", tc.name, b, w)
			}
		}
		pd := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
		os.MkdirAll(pd, 0o755)
		os.WriteFile(filepath.Join(pd, adapters.ConfigFile), tc.f.Config, 0o644)
		os.WriteFile(filepath.Join(pd, adapters.WeightsFile), tc.f.Weights, 0o644)
		code, b = as.do(t, http.MethodPost, "/v1/load_lora_adapter", []byte(fmt.Sprintf(`{"lora_name":"bad","lora_path":%q}`, pd)), "application/json")
		if code != http.StatusBadRequest || !strings.Contains(string(b), tc.want[0]) {
			t.Errorf("%s: load_lora_adapter %d %s, want 400 naming %q", tc.name, code, b, tc.want[0])
		}
		if l := as.listed(t); l != "" {
			t.Errorf("%s: listed after rejection: %s", tc.name, l)
		}
	}
	if out, code := as.complete(t, "bad", 2, false); code != http.StatusNotFound {
		t.Errorf("the rejected adapter serves: %d %s", code, out)
	}
}

// brokenRows runs every row that only selects (nil: every row) through a
// broken adapter, as a numerically broken model or adapter would.
type brokenRows struct {
	engine.Executor
	a    *lora.Adapter
	only func(engine.Row) bool
}

func (e brokenRows) Forward(ctx context.Context, rows []engine.Row) ([]engine.Output, error) {
	rs := make([]engine.Row, len(rows))
	for i, r := range rows {
		if e.only == nil || e.only(r) {
			r.Adapter = e.a
		}
		rs[i] = r
	}
	return e.Executor.Forward(ctx, rs)
}

// startBroken serves the demo model on an executor that runs the rows only
// selects through brokenLoRA.
func startBroken(t *testing.T, only func(engine.Row) bool) *testServer {
	t.Helper()
	s := New(Options{})
	b0, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Threads: 2, Metrics: s.Metrics()})
	if err != nil {
		t.Fatal(err)
	}
	b0.Sched.Close(context.Background())
	ex := brokenRows{Executor: b0.Sched.Executor(), a: brokenLoRA(b0.Config), only: only}
	b, err := NewBase(demo.Name, demoModel(t), ex, b0.Tokenizer, b0.Template, LoadOptions{Metrics: s.Metrics()}, 256)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, s, b)
}

const nonFiniteMessage = "the model produced non-finite logits (NaN/Inf); the adapter or weights are numerically broken"

// TestNonFiniteLogitsAre500: a model whose logits are NaN answers a chat
// completion with a 500 that says so (today's main: 200, content "",
// finish_reason "stop"), streamed as the stream's error event; the
// completions and Ollama routes likewise.
func TestNonFiniteLogitsAre500(t *testing.T) {
	ts := startBroken(t, nil)
	chat := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello there"}],"max_tokens":4,"temperature":0}`, demo.Name)
	code, b := ts.post(t, "/v1/chat/completions", chat)
	if code != http.StatusInternalServerError {
		t.Fatalf("chat: %d %s, want 500", code, b)
	}
	checkEnvelope(t, b, TypeServer, "")
	var env struct {
		Error struct{ Message, Code string }
	}
	json.Unmarshal(b, &env)
	if env.Error.Message != nonFiniteMessage || env.Error.Code != "non_finite_logits" {
		t.Errorf("chat error %s", b)
	}
	code, b = ts.post(t, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"Hello","max_tokens":3}`, demo.Name))
	if code != http.StatusInternalServerError || !strings.Contains(string(b), nonFiniteMessage) {
		t.Errorf("completion: %d %s", code, b)
	}

	// Streamed: the role chunk, then the error event, and no token.
	resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(strings.Replace(chat, `"max_tokens"`, `"stream":true,"max_tokens"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, data)
		}
	}
	if resp.StatusCode != 200 || len(events) < 2 {
		t.Fatalf("stream: %d %q", resp.StatusCode, events)
	}
	last := events[len(events)-1]
	if last == "[DONE]" && len(events) > 2 {
		last = events[len(events)-2]
	}
	var se struct {
		Error struct{ Message, Type, Code string }
	}
	if err := json.Unmarshal([]byte(last), &se); err != nil || se.Error.Message != nonFiniteMessage || se.Error.Type != TypeServer {
		t.Errorf("stream's last event %q, want the non-finite error", last)
	}
	for _, e := range events[:len(events)-1] {
		if strings.Contains(e, `"finish_reason":"stop"`) {
			t.Errorf("a choice finished as stop: %s", e)
		}
	}

	// Ollama's chat (NDJSON): the error line.
	code, b = ts.post(t, "/api/chat", fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hi"}],"stream":false}`, demo.Name))
	if code != http.StatusInternalServerError || !strings.Contains(string(b), "non-finite logits") {
		t.Errorf("ollama chat: %d %s", code, b)
	}
}

// nullLayers checks that every layer entry of raw (a "layers" list) has
// null for each field in nulls, numbers for the others, and a reason.
func nullLayers(t *testing.T, what string, raw json.RawMessage, nulls ...string) {
	t.Helper()
	var layers []map[string]any
	if err := json.Unmarshal(raw, &layers); err != nil || len(layers) == 0 {
		t.Fatalf("%s: layers %s (%v)", what, raw, err)
	}
	for _, l := range layers {
		for _, f := range []string{"mse", "log_mse", "cosine", "self_norm", "other_norm"} {
			v, ok := l[f]
			isNull := false
			for _, n := range nulls {
				isNull = isNull || n == f
			}
			if _, num := v.(float64); !ok || isNull != (v == nil) || !isNull && !num {
				t.Errorf("%s: layer %v %s = %v (null wanted: %v)", what, l["layer"], f, v, isNull)
			}
		}
		if r, _ := l["nonfinite"].(string); !strings.Contains(r, "non-finite activations") {
			t.Errorf("%s: layer %v has no reason: %v", what, l["layer"], l)
		}
	}
}

// TestOverlapNonFiniteIsNull: overlap values computed from NaN activations
// are null with a reason, never a JSON encoding failure (today's main: a
// bare 500): POST /v1/overlap, the records (list, by id, the event stream)
// and the "soo" extension, non-streamed and streamed; the histograms skip
// those values.
func TestOverlapNonFiniteIsNull(t *testing.T) {
	all := []string{"mse", "log_mse", "cosine", "self_norm", "other_norm"}
	t.Run("overlap", func(t *testing.T) {
		ts := startBroken(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/overlap/stream", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sse := bufio.NewReader(resp.Body)
		sse.ReadString('\n') // ": ok": subscribed

		code, b := ts.post(t, "/v1/overlap", fmt.Sprintf(`{"model":%q,"self":%q,"other":%q,"layers":[0,1],"sites":["attn_out","resid_post"]}`, demo.Name, selfText, otherText))
		if code != http.StatusOK {
			t.Fatalf("POST /v1/overlap: %d %s", code, b)
		}
		var r struct {
			ID     string
			Layers json.RawMessage
		}
		json.Unmarshal(b, &r)
		nullLayers(t, "POST /v1/overlap", r.Layers, all...)

		code, b = ts.get(t, "/v1/overlap/requests/"+r.ID)
		var rec struct {
			Result struct{ Layers json.RawMessage }
		}
		if code != 200 || json.Unmarshal(b, &rec) != nil {
			t.Fatalf("record: %d %s", code, b)
		}
		nullLayers(t, "record", rec.Result.Layers, all...)
		if code, b = ts.get(t, "/v1/overlap/requests"); code != 200 || !strings.Contains(string(b), r.ID) {
			t.Errorf("list: %d %s", code, b)
		}
		for {
			line, err := sse.ReadString('\n')
			if err != nil {
				t.Fatalf("event stream: %v", err)
			}
			if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
				if err := json.Unmarshal([]byte(data), &rec); err != nil {
					t.Fatal(err)
				}
				nullLayers(t, "event stream", rec.Result.Layers, all...)
				break
			}
		}
		_, m := ts.get(t, "/metrics")
		for _, line := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(line, "soo_overlap_") && (strings.HasSuffix(line, " NaN") || strings.Contains(line, "Inf")) && !strings.Contains(line, `le="+Inf"`) {
				t.Errorf("metrics: %s", line)
			}
		}
	})

	t.Run("soo", func(t *testing.T) {
		// Only the twin's capture-only rows run through the broken adapter:
		// the request's own logits stay finite, the twin's activations are NaN.
		ts := startBroken(t, func(r engine.Row) bool { return r.Logits == engine.LogitsNone && r.Capture != nil })
		body := fmt.Sprintf(`{"model":%q,"messages":%s,"max_tokens":3,"temperature":0,"soo":{"other":%s,"layers":[1]}}`, demo.Name, msgsJSON(selfText), msgsJSON(swapYou(selfText)))
		code, b := ts.post(t, "/v1/chat/completions", body)
		var resp struct {
			SOO struct{ Layers json.RawMessage }
		}
		if code != http.StatusOK || json.Unmarshal(b, &resp) != nil {
			t.Fatalf("chat with soo: %d %s", code, b)
		}
		nullLayers(t, "soo", resp.SOO.Layers, "mse", "log_mse", "cosine", "other_norm")

		chunks := sseChunks(t, ts, "/v1/chat/completions", strings.Replace(body, `"max_tokens"`, `"stream":true,"max_tokens"`, 1))
		last := chunks[len(chunks)-1]
		var soo struct{ Layers json.RawMessage }
		if json.Unmarshal(last["soo"], &soo) != nil {
			t.Fatalf("streamed: final chunk %v", last)
		}
		nullLayers(t, "streamed soo", soo.Layers, "mse", "log_mse", "cosine", "other_norm")
	})
}
