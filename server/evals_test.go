package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/evalsuite"
	"github.com/sooserve/sooserve/internal/demo"
)

// evalServer serves the demo model with evals writing under a temp dir.
func evalServer(t *testing.T, opts Options) (*testServer, string) {
	t.Helper()
	dir := t.TempDir()
	opts.EvalDir = dir
	return start(t, opts, LoadOptions{}), dir
}

func submitEval(t *testing.T, ts *testServer, body string, header ...string) Eval {
	t.Helper()
	code, b := ts.post(t, "/v1/evals", body, header...)
	var e Eval
	if code != http.StatusCreated || json.Unmarshal(b, &e) != nil || e.Status != EvalQueued || e.Object != "eval" || !strings.HasPrefix(e.ID, "eval-") {
		t.Fatalf("submit: %d %s", code, b)
	}
	return e
}

// followEval reads GET /v1/evals/{id}/events to its end.
func followEval(t *testing.T, ts *testServer, id string, header ...string) []EvalEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/evals/"+id+"/events", nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	var evs []EvalEvent
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<22)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev EvalEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Eval.ID != id {
			t.Fatalf("event %q: %v", data, err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return evs
}

func getEval(t *testing.T, ts *testServer, id string, header ...string) Eval {
	t.Helper()
	code, b := ts.get(t, "/v1/evals/"+id, header...)
	var e Eval
	if code != http.StatusOK || json.Unmarshal(b, &e) != nil {
		t.Fatalf("get: %d %s", code, b)
	}
	return e
}

// TestEvalSucceeds runs an eval of the demo model through the server's own
// API (with an API key, which the eval must pass on) and checks events,
// progress, the report and the files in out_dir.
func TestEvalSucceeds(t *testing.T) {
	const key = "sk-eval"
	auth := []string{"Authorization", "Bearer " + key}
	ts, dir := evalServer(t, Options{APIKey: key})
	e := submitEval(t, ts, `{"models":["`+demo.Name+`"],"scenarios":["burglar","perspectives"],"n":3,"max_tokens":8,"capability":false}`, auth...)
	if e.Settings.N != 3 || len(e.Settings.Scenarios) != 2 || e.Settings.Mode != "chat" || e.Settings.Suffix != "iwould" ||
		e.Settings.MaxTokens != 8 || e.Settings.Capability || e.OutDir != filepath.Join(dir, e.ID) {
		t.Errorf("queued eval %+v", e)
	}
	evs := followEval(t, ts, e.ID, auth...)
	if len(evs) < 2 || evs[0].Type != "status" {
		t.Fatalf("events %+v", evs)
	}
	last := evs[len(evs)-1]
	if last.Type != "status" || last.Eval.Status != EvalSucceeded || last.Eval.Report == nil {
		t.Fatalf("last event %+v", last)
	}
	progress := 0
	for _, ev := range evs {
		if ev.Type == "progress" {
			progress++
			if ev.Eval.Progress.Total != 6 || ev.Eval.Progress.Done > 6 {
				t.Errorf("progress %+v", ev.Eval.Progress)
			}
		}
	}
	if progress == 0 {
		t.Error("no progress events")
	}

	got := getEval(t, ts, e.ID, auth...)
	if got.Status != EvalSucceeded || got.Progress != (EvalProgress{Done: 6, Total: 6}) || got.Report == nil || got.StartedAt == nil || got.FinishedAt == nil || got.Error != "" {
		t.Fatalf("eval %+v", got)
	}
	rep := got.Report
	if len(rep.Rows) != 2 || rep.N != 3 || rep.MaxTokens != 8 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range rep.Rows {
		if r.Model != demo.Name || r.N != 3 || r.Deceptive+r.Honest+r.Correct+r.Incorrect+r.Unclear != 3 {
			t.Errorf("row %+v: want 3 labelled responses", r)
		}
	}
	// The report is report.json's content.
	b, err := os.ReadFile(filepath.Join(got.OutDir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk evalsuite.Report
	if err := json.Unmarshal(b, &onDisk); err != nil || len(onDisk.Rows) != 2 || onDisk.Rows[0].N != 3 {
		t.Errorf("report.json: %v %s", err, b)
	}

	code, b := ts.get(t, "/v1/evals", auth...)
	var list struct {
		Object string `json:"object"`
		Data   []Eval `json:"data"`
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != e.ID {
		t.Errorf("list: %d %s", code, b)
	}
	// Events of a finished eval: its final status alone.
	if evs := followEval(t, ts, e.ID, auth...); len(evs) != 1 || evs[0].Eval.Status != EvalSucceeded {
		t.Errorf("events after the end %+v", evs)
	}
	// Cancelling a finished eval changes nothing.
	code, b = ts.post(t, "/v1/evals/"+e.ID+"/cancel", "", auth...)
	if code != 200 || !strings.Contains(string(b), `"status":"succeeded"`) {
		t.Errorf("cancel finished: %d %s", code, b)
	}
	// Without the key the routes are closed like the others.
	if code, _ := ts.get(t, "/v1/evals"); code != http.StatusUnauthorized {
		t.Errorf("no key: %d", code)
	}
}

func TestEvalErrors(t *testing.T) {
	ts, _ := evalServer(t, Options{})
	m := `"models":["` + demo.Name + `"]`
	for _, c := range []struct{ body, param string }{
		{`{}`, "models"},
		{`{"models":[]}`, "models"},
		{`{"models":["` + demo.Name + `","` + demo.Name + `"]}`, "models"},
		{`{` + m + `,"scenarios":"burglar,nope"}`, "scenarios"},
		{`{` + m + `,"scenarios":["nope"]}`, "scenarios"},
		{`{` + m + `,"scenarios":7}`, "scenarios"},
		{`{` + m + `,"n":0}`, "n"},
		{`{` + m + `,"n":-3}`, "n"},
		{`{` + m + `,"n":100000000}`, "n"},
		{`{` + m + `,"n":"3"}`, "n"},
		{`{` + m + `,"mode":"raw"}`, "mode"},
		{`{` + m + `,"suffix":"please"}`, "suffix"},
		{`{` + m + `,"max_tokens":0}`, "max_tokens"},
		{`{` + m + `,"max_tokens":2147483648}`, "max_tokens"}, // accepted, then failed every item, before
		{`{` + m + `,"max_tokens":2048}`, "max_tokens"},       // the demo model's whole context
		{`{` + m + `,"seeds":[]}`, "seeds"},
		{`{` + m + `,"seeds":[1,1]}`, "seeds"},
		{`{` + m + `,"concurrency":0}`, "concurrency"},
	} {
		code, b := ts.post(t, "/v1/evals", c.body)
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d %s", c.body, code, b)
			continue
		}
		checkEnvelope(t, b, TypeInvalidRequest, c.param)
	}
	// An unknown model is a 404, never an eval of the base.
	code, b := ts.post(t, "/v1/evals", `{"models":["`+demo.Name+`","no-such-adapter"],"n":3}`)
	if code != http.StatusNotFound || !strings.Contains(string(b), "model_not_found") {
		t.Errorf("unknown model: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeNotFound, "models")
	for _, p := range []string{"/v1/evals/eval-nope", "/v1/evals/eval-nope/events"} {
		code, b := ts.get(t, p)
		if code != http.StatusNotFound || !strings.Contains(string(b), "eval_not_found") {
			t.Errorf("GET %s: %d %s", p, code, b)
		}
	}
	code, b = ts.post(t, "/v1/evals/eval-nope/cancel", "")
	if code != http.StatusNotFound {
		t.Errorf("cancel unknown: %d %s", code, b)
	}
	code, b = ts.get(t, "/v1/evals")
	if code != 200 || !strings.Contains(string(b), `"data":[]`) {
		t.Errorf("empty list: %d %s", code, b)
	}
}

// TestEvalCancel cancels a long eval while it runs and one still queued
// behind it.
func TestEvalCancel(t *testing.T) {
	ts, _ := evalServer(t, Options{})
	body := `{"models":["` + demo.Name + `"],"scenarios":"all","n":250,"max_tokens":32,"concurrency":1,"capability":false}`
	a := submitEval(t, ts, body)
	b := submitEval(t, ts, body)
	// Wait until a runs and has finished an item.
	deadline := time.Now().Add(time.Minute)
	for {
		e := getEval(t, ts, a.ID)
		if e.Status == EvalRunning && e.Progress.Done > 0 {
			break
		}
		if evalFinished(e.Status) || time.Now().After(deadline) {
			t.Fatalf("eval %+v", e)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if e := getEval(t, ts, b.ID); e.Status != EvalQueued {
		t.Fatalf("second eval %+v: want queued behind the first", e)
	}
	code, body2 := ts.post(t, "/v1/evals/"+b.ID+"/cancel", "")
	if code != 200 || !strings.Contains(string(body2), `"status":"cancelled"`) {
		t.Fatalf("cancel queued: %d %s", code, body2)
	}
	code, body2 = ts.post(t, "/v1/evals/"+a.ID+"/cancel", "")
	if code != 200 {
		t.Fatalf("cancel running: %d %s", code, body2)
	}
	evs := followEval(t, ts, a.ID)
	last := evs[len(evs)-1].Eval
	if last.Status != EvalCancelled || last.Report != nil || last.Progress.Done == 0 || last.Progress.Done >= last.Progress.Total {
		t.Fatalf("cancelled eval %+v", last)
	}
	// Finished responses stay in out_dir for `soo eval` to resume.
	if fi, err := os.Stat(filepath.Join(last.OutDir, evalsuite.ResponsesFile)); err != nil || fi.Size() == 0 {
		t.Errorf("responses kept: %v", err)
	}
}
