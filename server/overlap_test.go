package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/overlap"
)

const (
	selfText  = "You want to steal the diamond necklace. If you had to recommend one room to yourself"
	otherText = "Bob wants to steal the diamond necklace. If you had to recommend one room to Bob"
)

// swapYou applies {"you":"Bob","yourself":"Bob"} by hand.
func swapYou(s string) string {
	return strings.NewReplacer("yourself", "Bob", "You", "Bob", "you", "Bob").Replace(s)
}

func msgsJSON(user string) string {
	return fmt.Sprintf(`[{"role":"system","content":"Be terse."},{"role":"user","content":%q}]`, user)
}

func decodeResult(t *testing.T, raw json.RawMessage) *overlap.Result {
	t.Helper()
	var r overlap.Result
	if err := json.Unmarshal(raw, &r); err != nil || len(r.Layers) == 0 {
		t.Fatalf("not an overlap result (%v): %s", err, raw)
	}
	return &r
}

// sameResult asserts two overlap results are equal (to float rounding).
func sameResult(t *testing.T, name string, got, want *overlap.Result) {
	t.Helper()
	if got.Pooling != want.Pooling || got.SelfTokens != want.SelfTokens || got.OtherTokens != want.OtherTokens || len(got.Layers) != len(want.Layers) {
		t.Fatalf("%s: %+v, want %+v", name, got, want)
	}
	near := func(a, b float64) bool { return a == b } // bitwise: the same prefill rows either way
	for i, w := range want.Layers {
		g := got.Layers[i]
		if g.Layer != w.Layer || g.Site != w.Site || !near(g.MSE, w.MSE) || !near(g.LogMSE, w.LogMSE) || !near(g.Cosine, w.Cosine) ||
			!near(g.SelfNorm, w.SelfNorm) || !near(g.OtherNorm, w.OtherNorm) {
			t.Errorf("%s layer %d: %+v, want %+v", name, i, g, w)
		}
	}
}

func postOverlap(t *testing.T, ts *testServer, body string) (string, *overlap.Result) {
	t.Helper()
	code, b := ts.post(t, "/v1/overlap", body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/overlap %s: %d %s", body, code, b)
	}
	var head struct {
		ID, Object, Model string
	}
	if err := json.Unmarshal(b, &head); err != nil || head.Object != "overlap" || head.Model != demo.Name || !strings.HasPrefix(head.ID, "ovl-") {
		t.Fatalf("overlap response %s", b)
	}
	return head.ID, decodeResult(t, b)
}

func TestOverlapRoute(t *testing.T) {
	ts := start(t, Options{OverlapRing: 4}, LoadOptions{})
	id, res := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%q,"other":%q}`, demo.Name, selfText, otherText))
	if res.Pooling != overlap.PoolMean || len(res.Layers) != demo.Layers || res.SelfTokens == 0 || res.OtherTokens == 0 {
		t.Fatalf("defaults: %+v", res)
	}
	for i, l := range res.Layers {
		if l.Layer != i || l.Site != "attn_out" || !(l.MSE > 0) || l.LogMSE != math.Log(l.MSE+overlap.LogEpsilon) {
			t.Errorf("layer %d: %+v", i, l)
		}
	}
	// The twin built by swap is the twin given as text.
	_, swapped := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%q,"swap":{"you":"Bob","yourself":"Bob"},"layers":[1],"sites":["mlp_out","resid_post"],"pooling":"last"}`,
		demo.Name, "You want the necklace. Tell yourself"))
	_, given := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%q,"other":%q,"layers":[1],"sites":["mlp_out","resid_post"],"pooling":"last"}`,
		demo.Name, "You want the necklace. Tell yourself", "Bob want the necklace. Tell Bob"))
	sameResult(t, "swap", swapped, given)
	if len(given.Layers) != 2 || given.Layers[0].Site != "mlp_out" || given.Layers[1].Site != "resid_post" {
		t.Errorf("sites: %+v", given.Layers)
	}
	// Chat messages, by swap and given.
	_, chatSwap := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%s,"swap":{"you":"Bob","yourself":"Bob"},"pooling":"full"}`, demo.Name, msgsJSON(selfText)))
	_, chatGiven := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%s,"other":%s,"pooling":"full"}`, demo.Name, msgsJSON(selfText),
		msgsJSON(swapYou(selfText))))
	sameResult(t, "chat swap", chatSwap, chatGiven)
	if chatGiven.SelfTokens <= res.SelfTokens {
		t.Errorf("chat template not applied: %d tokens against %d raw", chatGiven.SelfTokens, res.SelfTokens)
	}

	// Records: newest first, bounded by the ring, by id, 404 after eviction.
	code, b := ts.get(t, "/v1/overlap/requests?limit=2")
	var list struct {
		Object string
		Data   []overlap.Record
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || list.Object != "list" || len(list.Data) != 2 || list.Data[0].Result.Pooling != overlap.PoolFull {
		t.Fatalf("list: %d %s", code, b)
	}
	if r := list.Data[0]; r.Model != demo.Name || r.Adapter != "" || len(r.Layers) != demo.Layers || r.Time.IsZero() {
		t.Errorf("record %+v", r)
	}
	code, b = ts.get(t, "/v1/overlap/requests/"+list.Data[1].ID)
	var rec overlap.Record
	if code != 200 || json.Unmarshal(b, &rec) != nil || rec.ID != list.Data[1].ID {
		t.Errorf("get: %d %s", code, b)
	}
	code, b = ts.get(t, "/v1/overlap/requests/"+id) // evicted: the ring keeps 4
	if code != 404 {
		t.Errorf("evicted record: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeNotFound, "id")
	code, b = ts.get(t, "/v1/overlap/requests?limit=0")
	if code != 400 {
		t.Errorf("limit=0: %d", code)
	}
	checkEnvelope(t, b, TypeInvalidRequest, "limit")

	// Histograms on the server's registry.
	_, b = ts.get(t, "/metrics")
	if !strings.Contains(string(b), `soo_overlap_mse_count{adapter="base",layer="1",site="attn_out"}`) ||
		!strings.Contains(string(b), "soo_overlap_cosine_bucket") {
		t.Errorf("metrics lack the overlap histograms")
	}
}

// chatSOO posts a non-streamed chat completion with the soo extension.
func chatSOO(t *testing.T, ts *testServer, user, soo string) (string, *overlap.Result) {
	t.Helper()
	code, b := ts.post(t, "/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":%s,"max_tokens":3,"temperature":0,"soo":%s}`, demo.Name, msgsJSON(user), soo))
	if code != 200 {
		t.Fatalf("chat with soo: %d %s", code, b)
	}
	var resp struct {
		ID    string
		Usage map[string]int
		SOO   json.RawMessage
	}
	if err := json.Unmarshal(b, &resp); err != nil || resp.Usage["completion_tokens"] == 0 {
		t.Fatalf("response %s", b)
	}
	return resp.ID, decodeResult(t, resp.SOO)
}

func TestSOOExtensionEqualsOverlap(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	twin := swapYou(selfText)
	spec := `"layers":[1,0],"sites":["attn_out","resid_post"],"pooling":"full"`

	// Chat, twin given.
	id, got := chatSOO(t, ts, selfText, fmt.Sprintf(`{"other":%s,%s}`, msgsJSON(twin), spec))
	_, want := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%s,"other":%s,%s}`, demo.Name, msgsJSON(selfText), msgsJSON(twin), spec))
	sameResult(t, "chat", got, want)
	if got.Layers[0].Layer != 1 || got.Layers[1].Site != "resid_post" {
		t.Errorf("order: %+v", got.Layers)
	}
	code, b := ts.get(t, "/v1/overlap/requests/"+id)
	if code != 200 {
		t.Fatalf("record of %s: %d %s", id, code, b)
	}
	// Chat, twin by swap (DefaultSwap-like table).
	_, got = chatSOO(t, ts, selfText, fmt.Sprintf(`{"swap":{"you":"Bob","yourself":"Bob"},%s}`, spec))
	sameResult(t, "chat swap", got, want)

	// Completions, default spec, twin as text and by swap.
	for _, soo := range []string{fmt.Sprintf(`{"other":%q}`, otherText), `{"swap":{"you want":"Bob wants","yourself":"Bob"}}`} {
		code, b = ts.post(t, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":%q,"max_tokens":2,"temperature":0,"soo":%s}`, demo.Name, selfText, soo))
		var cr struct{ SOO json.RawMessage }
		if code != 200 || json.Unmarshal(b, &cr) != nil {
			t.Fatalf("completion with soo %s: %d %s", soo, code, b)
		}
		_, want := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%q,"other":%q}`, demo.Name, selfText, otherText))
		sameResult(t, "completion "+soo, decodeResult(t, cr.SOO), want)
	}

	// No soo, no "soo" key.
	code, b = ts.post(t, "/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"hi","max_tokens":1}`, demo.Name))
	if code != 200 || strings.Contains(string(b), `"soo"`) {
		t.Errorf("plain completion: %d %s", code, b)
	}
}

// sseChunks reads an SSE response's data payloads up to [DONE].
func sseChunks(t *testing.T, ts *testServer, path, body string) []map[string]json.RawMessage {
	t.Helper()
	resp, err := http.Post(ts.URL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d", path, resp.StatusCode)
	}
	var out []map[string]json.RawMessage
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			return out
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(data), &m); err != nil {
			t.Fatalf("chunk %q: %v", data, err)
		}
		if m["error"] != nil {
			t.Fatalf("stream error: %s", data)
		}
		out = append(out, m)
	}
	t.Fatalf("stream ended without [DONE]: %v", sc.Err())
	return nil
}

func TestSOOStreamedOnFinalChunk(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	_, want := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%s,"other":%s}`, demo.Name, msgsJSON(selfText), msgsJSON("Bob is here")))
	for _, tc := range []struct {
		path, body string
	}{
		{"/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":%s,"max_tokens":4,"temperature":0,"stream":true,"soo":{"other":%s}}`, demo.Name, msgsJSON(selfText), msgsJSON("Bob is here"))},
		{"/v1/chat/completions", fmt.Sprintf(`{"model":%q,"messages":%s,"max_tokens":4,"n":2,"temperature":0,"stream":true,"stream_options":{"include_usage":true},"soo":{"other":%s}}`, demo.Name, msgsJSON(selfText), msgsJSON("Bob is here"))},
		{"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":%q,"max_tokens":3,"stream":true,"soo":{"other":%q}}`, demo.Name, selfText, otherText)},
	} {
		chunks := sseChunks(t, ts, tc.path, tc.body)
		if len(chunks) < 2 {
			t.Fatalf("%s: %d chunks", tc.body, len(chunks))
		}
		for _, c := range chunks[:len(chunks)-1] {
			if c["soo"] != nil {
				t.Errorf("soo before the final chunk: %v", c)
			}
		}
		last := chunks[len(chunks)-1]
		if last["soo"] == nil {
			t.Fatalf("%s: final chunk without soo: %v", tc.body, last)
		}
		if strings.Contains(tc.body, "include_usage") && string(last["usage"]) == "null" {
			t.Errorf("soo not on the usage chunk")
		}
		if tc.path == "/v1/chat/completions" {
			sameResult(t, "stream", decodeResult(t, last["soo"]), want)
		}
	}

	// The openai-go client passes the extension through and exposes it on
	// the last chunk's raw JSON.
	client := ts.openai("")
	p := greedy(selfText, 4)
	stream := client.Chat.Completions.NewStreaming(context.Background(), p,
		option.WithJSONSet("soo", map[string]any{"other": []map[string]string{{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Bob is here"}}}))
	var last openai.ChatCompletionChunk
	for stream.Next() {
		last = stream.Current()
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	raw := last.JSON.ExtraFields["soo"].Raw()
	if raw == "" {
		t.Fatalf("openai-go: last chunk lacks soo: %s", last.RawJSON())
	}
	_, want = postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":[{"role":"system","content":"You are terse."},{"role":"user","content":%q}],"other":%s}`,
		demo.Name, selfText, msgsJSON("Bob is here")))
	sameResult(t, "openai-go", decodeResult(t, json.RawMessage(raw)), want)
}

func TestSOOBadInput(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{Context: 64})
	long := strings.Repeat("the model ", 80)
	chat := func(soo string) string {
		return fmt.Sprintf(`{"model":%q,"messages":%s,"max_tokens":2,"soo":%s}`, demo.Name, msgsJSON("You are here"), soo)
	}
	for _, tc := range []struct{ path, body, param string }{
		{"/v1/chat/completions", chat(`{}`), "soo.other"},
		{"/v1/chat/completions", chat(`{"layers":[0]}`), "soo.other"},
		{"/v1/chat/completions", chat(`"Bob"`), "soo"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"layers":[2]}`, msgsJSON("Bob"))), "soo.layers"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"layers":[-1]}`, msgsJSON("Bob"))), "soo.layers"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"sites":["q_proj"]}`, msgsJSON("Bob"))), "soo.sites"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"pooling":"max"}`, msgsJSON("Bob"))), "soo.pooling"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"layers":"all"}`, msgsJSON("Bob"))), "soo.layers"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s}`, msgsJSON(long))), "soo.other"},
		{"/v1/chat/completions", chat(`{"other":"Bob is here"}`), "soo.other"},
		{"/v1/chat/completions", chat(fmt.Sprintf(`{"other":%s,"swap":{"you":"Bob"}}`, msgsJSON("Bob"))), "soo.swap"},
		{"/v1/chat/completions", chat(`{"swap":{"zebra":"Bob"}}`), "soo.swap"},
		{"/v1/chat/completions", chat(`{"swap":{}}`), "soo.swap"},
		{"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"You are","soo":{"other":%q}}`, demo.Name, long), "soo.other"},
		{"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":[1,2,3],"soo":{"swap":{"you":"Bob"}}}`, demo.Name), "soo.swap"},
		{"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"You are","soo":{"other":%s}}`, demo.Name, msgsJSON("Bob")), "soo.other"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"other":"Bob"}`, demo.Name), "self"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You"}`, demo.Name), "other"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You","other":%s}`, demo.Name, msgsJSON("Bob")), "other"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You","other":"Bob","layers":[5]}`, demo.Name), "layers"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You","other":"Bob","sites":["nope"]}`, demo.Name), "sites"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You","other":"Bob","pooling":"nope"}`, demo.Name), "pooling"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":%q,"other":"Bob"}`, demo.Name, long), "self"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":"You","other":%q}`, demo.Name, long), "other"},
		{"/v1/overlap", fmt.Sprintf(`{"model":%q,"self":[{"role":"user"}],"other":[{"role":"user","content":"x"}]}`, demo.Name), "self[0].content"},
	} {
		code, b := ts.post(t, tc.path, tc.body)
		if code != 400 {
			t.Errorf("%s %s: %d %s", tc.path, tc.body, code, b)
			continue
		}
		checkEnvelope(t, b, TypeInvalidRequest, tc.param)
	}
	code, b := ts.post(t, "/v1/overlap", `{"model":"nope","self":"a","other":"b"}`)
	if code != 404 {
		t.Errorf("unknown model: %d %s", code, b)
	}
}

func TestOverlapStream(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/overlap/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	id, _ := postOverlap(t, ts, fmt.Sprintf(`{"model":%q,"self":%q,"other":%q}`, demo.Name, selfText, otherText))
	cid, _ := chatSOO(t, ts, selfText, `{"swap":{"you":"Bob"}}`)
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for len(got) < 2 && sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var rec overlap.Record
		if err := json.Unmarshal([]byte(data), &rec); err != nil || rec.Result == nil {
			t.Fatalf("event %q: %v", data, err)
		}
		got = append(got, rec.ID)
	}
	if len(got) != 2 || got[0] != id || got[1] != cid {
		t.Fatalf("streamed %v, want [%s %s] (%v)", got, id, cid, sc.Err())
	}
}
