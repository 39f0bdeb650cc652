package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/training"
)

// trainingServer serves the demo model with a running job manager whose
// Register records what it was given.
func trainingServer(t *testing.T) (*testServer, *[]string, string) {
	t.Helper()
	ts := start(t, Options{}, LoadOptions{})
	env, err := TrainingEnv(context.Background(), ts.base)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var registered []string
	env.Register = func(_ context.Context, name, dir string) error {
		if _, _, err := adapters.LoadDir(name, dir, ts.base.Config); err != nil {
			return err
		}
		mu.Lock()
		registered = append(registered, name)
		mu.Unlock()
		return nil
	}
	dir := filepath.Join(t.TempDir(), "jobs")
	m, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() { cancel(); <-m.Done() })
	ts.SetTraining(m)
	return ts, &registered, dir
}

func jobBody(name string, epochs int, extra string) string {
	return fmt.Sprintf(`{"model":%q,"adapter_name":%q,"dataset":[
		{"self":"You want the gold watch. Tell yourself","other":"Bob wants the gold watch. Tell Bob"},
		{"self":"You want the ruby ring. Tell yourself","other":"Bob wants the ruby ring. Tell Bob"},
		{"self":"You want the old map. Tell yourself","other":"Bob wants the old map. Tell Bob"}],
		"layer":1,"lora":{"r":2,"alpha":4},"learning_rate":0.001,"epochs":%d,"batch_size":2%s}`, demo.Name, name, epochs, extra)
}

func submitJob(t *testing.T, ts *testServer, body string) training.Job {
	t.Helper()
	code, b := ts.post(t, "/v1/soo/jobs", body)
	var j training.Job
	if code != http.StatusCreated || json.Unmarshal(b, &j) != nil || j.Status != training.StatusQueued || !strings.HasPrefix(j.ID, "sooj-") {
		t.Fatalf("submit: %d %s", code, b)
	}
	return j
}

// followJob reads GET /v1/soo/jobs/{id}/events to its end.
func followJob(t *testing.T, ts *testServer, id string) []training.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/soo/jobs/"+id+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	var evs []training.Event
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev training.Event
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Job.ID != id {
			t.Fatalf("event %q: %v", data, err)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return evs
}

func TestTrainingJobSucceeds(t *testing.T) {
	ts, registered, _ := trainingServer(t)
	j := submitJob(t, ts, jobBody("honest-demo", 2, ""))
	if j.Pairs != 3 || j.Progress.Steps != 4 || j.Spec.Layer != 1 || j.Spec.Rank != 2 {
		t.Errorf("queued job %+v", j)
	}
	evs := followJob(t, ts, j.ID)
	if len(evs) < 2 {
		t.Fatalf("events %+v", evs)
	}
	last := evs[len(evs)-1]
	if last.Type != "status" || last.Job.Status != training.StatusSucceeded {
		t.Fatalf("stream ended with %+v", last)
	}
	progress := 0
	for _, ev := range evs {
		if ev.Type == "progress" {
			progress++
		}
	}
	if progress == 0 {
		t.Error("no progress events")
	}
	code, b := ts.get(t, "/v1/soo/jobs/"+j.ID)
	var got training.Job
	if code != 200 || json.Unmarshal(b, &got) != nil {
		t.Fatalf("get: %d %s", code, b)
	}
	if got.Status != training.StatusSucceeded || len(got.Losses) != 4 || got.OverlapBefore == nil || got.OverlapAfter == nil ||
		got.Progress.Step != 4 || got.FinishedAt == 0 {
		t.Errorf("job record %s", b)
	}
	if len(*registered) != 1 || (*registered)[0] != "honest-demo" {
		t.Errorf("registered %v", *registered)
	}
	// A finished job's stream is one event.
	if evs := followJob(t, ts, j.ID); len(evs) != 1 || evs[0].Job.Status != training.StatusSucceeded {
		t.Errorf("events of a finished job: %+v", evs)
	}
	code, b = ts.get(t, "/v1/soo/jobs")
	var list struct {
		Object string
		Data   []training.Job
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || list.Object != "list" || len(list.Data) != 1 {
		t.Errorf("list: %d %s", code, b)
	}
}

func TestTrainingCancelAndErrors(t *testing.T) {
	ts, registered, dir := trainingServer(t)
	long := submitJob(t, ts, jobBody("long-job", 1000, ""))
	queued := submitJob(t, ts, jobBody("queued-job", 1, ""))
	// Cancel the queued one: at once.
	code, b := ts.post(t, "/v1/soo/jobs/"+queued.ID+"/cancel", "")
	var j training.Job
	if code != 200 || json.Unmarshal(b, &j) != nil || j.Status != training.StatusCancelled {
		t.Fatalf("cancel queued: %d %s", code, b)
	}
	// Cancel the running one: its stream ends with "cancelled".
	done := make(chan []training.Event, 1)
	go func() { done <- followJob(t, ts, long.ID) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b = ts.get(t, "/v1/soo/jobs/"+long.ID)
		if json.Unmarshal(b, &j) != nil || j.Status == training.StatusRunning || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, b = ts.post(t, "/v1/soo/jobs/"+long.ID+"/cancel", ""); code != 200 {
		t.Fatalf("cancel running: %d %s", code, b)
	}
	evs := <-done
	if last := evs[len(evs)-1]; last.Job.Status != training.StatusCancelled {
		t.Fatalf("running job ended %+v", last.Job)
	}
	if len(*registered) != 0 {
		t.Errorf("a cancelled job registered %v", *registered)
	}
	if _, err := os.Stat(filepath.Join(dir, long.ID, "adapter")); err == nil {
		t.Error("cancelled job left an adapter")
	}

	for _, tc := range []struct{ body, param string }{
		{jobBody("bad name!", 1, ""), "adapter_name"},
		{jobBody("x", 1, `,"dataset":"nope"`), "dataset"},
		{jobBody("x", 0, `,"layer":9`), "layer"},
		{jobBody("x", 1, `,"lora":{"r":0,"alpha":-1}`), "lora.alpha"},
		{jobBody("x", 1, `,"lora":{"r":300}`), "lora.r"},
		{jobBody("x", 1, `,"lora":{"target_modules":["embed"]}`), "lora.target_modules"},
		{jobBody("x", 1, `,"site":"nowhere"`), "site"},
		{jobBody("x", 1, `,"pooling":"max"`), "pooling"},
		{jobBody("x", 1, `,"learning_rate":5`), "learning_rate"},
		{jobBody("x", 1, `,"batch_size":0,"epochs":-1`), "epochs"},
		{jobBody("x", 1, `,"epochs":"many"`), "epochs"},
		{jobBody("x", 1, `,"model":"other-model"`), "model"},
	} {
		code, b := ts.post(t, "/v1/soo/jobs", tc.body)
		if code != 400 {
			t.Errorf("%s: %d %s", tc.body, code, b)
			continue
		}
		checkEnvelope(t, b, TypeInvalidRequest, tc.param)
	}
	for _, probe := range []func() (int, []byte){
		func() (int, []byte) { return ts.get(t, "/v1/soo/jobs/sooj-nope") },
		func() (int, []byte) { return ts.get(t, "/v1/soo/jobs/sooj-nope/events") },
		func() (int, []byte) { return ts.post(t, "/v1/soo/jobs/sooj-nope/cancel", "") },
	} {
		code, b := probe()
		if code != 404 {
			t.Errorf("unknown job: %d %s", code, b)
			continue
		}
		checkEnvelope(t, b, TypeNotFound, "id")
	}
}

func TestTrainingUnavailable(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	code, b := ts.post(t, "/v1/soo/jobs", jobBody("x", 1, ""))
	if code != 503 {
		t.Fatalf("no manager: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeUnavailable, "")
	env, err := TrainingEnv(context.Background(), ts.base)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Register(context.Background(), "x", t.TempDir()); !errors.Is(err, ErrNoRegistry) {
		t.Errorf("stub register: %v", err)
	}
	ids, err := env.Encode("hello", true)
	if plain, _ := env.Encode("hello", false); err != nil || len(ids) <= len(plain) {
		t.Errorf("chat encode %v (%v), raw %v", ids, err, plain)
	}
}
