package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/training"
)

// trainingServer serves the demo model with a running job manager whose
// Register records what it was given; mut, if any, changes its environment.
func trainingServer(t *testing.T, mut ...func(*training.Env)) (*testServer, *[]string, string) {
	t.Helper()
	ts := start(t, Options{}, LoadOptions{})
	env, err := TrainingEnv(context.Background(), ts.base)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var registered []string
	env.Register = func(_ context.Context, name, dir string, _ bool) error {
		if _, _, err := adapters.LoadDir(name, dir, ts.base.Config); err != nil {
			return err
		}
		mu.Lock()
		registered = append(registered, name)
		mu.Unlock()
		return nil
	}
	for _, f := range mut {
		f(&env)
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

// longJobs lets a job run for 1000 epochs (TestTrainingCancelAndErrors
// cancels one while it runs).
func longJobs(env *training.Env) { env.Limits.MaxEpochs, env.Limits.MaxSteps = 1000, 1_000_000 }

func TestTrainingCancelAndErrors(t *testing.T) {
	ts, registered, dir := trainingServer(t, longJobs)
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
	if err := env.Register(context.Background(), "x", t.TempDir(), false); !errors.Is(err, ErrNoRegistry) {
		t.Errorf("stub register: %v", err)
	}
	ids, err := env.Encode("hello", true)
	if plain, _ := env.Encode("hello", false); err != nil || len(ids) <= len(plain) {
		t.Errorf("chat encode %v (%v), raw %v", ids, err, plain)
	}
}

// longJobBody is a job of the default maximum of epochs over 60 pairs in
// batches of 1 (6,000 steps).
func longJobBody(name string) string {
	var pairs []string
	for i := range 60 {
		pairs = append(pairs, fmt.Sprintf(`{"self":"You want item %d. Tell yourself","other":"Bob wants item %d. Tell Bob"}`, i, i))
	}
	return fmt.Sprintf(`{"model":%q,"adapter_name":%q,"dataset":[%s],"layer":1,"lora":{"r":2,"alpha":4},"epochs":%d,"batch_size":1}`,
		demo.Name, name, strings.Join(pairs, ","), training.DefaultMaxEpochs)
}

// TestTrainingRequestLimits: requests over the documented limits get a 400
// naming the field (and a huge value is not echoed back), and a full queue
// a 429 in the envelope.
func TestTrainingRequestLimits(t *testing.T) {
	ts, _, _ := trainingServer(t, func(env *training.Env) {
		env.Limits.MaxPending = 2
		// A job that finished training waits at registration until the
		// server stops: it stays "running".
		env.Register = func(ctx context.Context, _, _ string, _ bool) error { <-ctx.Done(); return ctx.Err() }
	})
	var many []string
	for i := range training.DefaultMaxPairs + 1 {
		many = append(many, fmt.Sprintf(`{"self":"You %d","other":"Bob %d"}`, i, i))
	}
	huge := strings.Repeat("m", 1<<20)
	for _, tc := range []struct{ body, param string }{
		{jobBody("x", 101, ""), "epochs"},
		{jobBody("x", 1, `,"lora":{"r":65}`), "lora.r"},
		{jobBody("x", 1, `,"lora":{"r":2,"alpha":1e308}`), "lora.alpha"},
		{jobBody("x", 1, `,"weight_decay":1e300`), "weight_decay"},
		{strings.Replace(longJobBody("x"), `"batch_size":1`, `"batch_size":1,"epochs":100,"dataset":[`+strings.Join(many[:201], ",")+`]`, 1), "epochs"},
		{jobBody("x", 1, `,"dataset":[`+strings.Join(many, ",")+`]`), "dataset"},
		{jobBody("x", 1, `,"dataset":[{"self":"`+strings.Repeat("y", training.DefaultMaxTextBytes+1)+`","other":"Bob"}]`), "dataset"},
		{jobBody("x", 1, `,"model":"`+huge+`"`), "model"},
		{jobBody(huge, 1, ""), "adapter_name"},
		{jobBody(demo.Name, 1, ""), "adapter_name"},
		{jobBody("x", 1, `,"site":"`+huge+`"`), "site"},
		{jobBody("x", 1, `,"lora":{"target_modules":["`+strings.Repeat(`q_proj","`, 16)+`q_proj"]}`), "lora.target_modules"},
	} {
		code, b := ts.post(t, "/v1/soo/jobs", tc.body)
		if code != http.StatusBadRequest || len(b) > 2048 {
			t.Errorf("%.80s...: %d %.300s", tc.body, code, b)
			continue
		}
		checkEnvelope(t, b, TypeInvalidRequest, tc.param)
	}
	long := submitJob(t, ts, longJobBody("long"))
	queued := submitJob(t, ts, jobBody("queued", 1, ""))
	code, b := ts.post(t, "/v1/soo/jobs", jobBody("third", 1, ""))
	if code != http.StatusTooManyRequests || errCode(b) != "too_many_jobs" {
		t.Fatalf("third job: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeRateLimit, "")
	for _, id := range []string{long.ID, queued.ID} {
		if code, b := ts.post(t, "/v1/soo/jobs/"+id+"/cancel", ""); code != 200 {
			t.Errorf("cancel: %d %s", code, b)
		}
	}
}

// TestTrainingAdapterNameTaken: with the adapter registry wired in, a job to
// a taken name is refused (409) unless it sets "replace", which replaces the
// adapter; a job whose name is taken while it runs fails and keeps its
// files, downloadable from the job.
func TestTrainingAdapterNameTaken(t *testing.T) {
	var reg *adapters.Registry
	var mu sync.Mutex
	steal := "" // the name another client takes while the next job trains
	ts, _, _ := trainingServer(t, func(env *training.Env) {
		inner, cfg := env.Probe, env.Executor.Config()
		env.Probe = func(ctx context.Context, a *lora.Adapter, spec training.Spec) (float64, error) {
			mu.Lock()
			name := steal
			steal = ""
			mu.Unlock()
			if a == nil && name != "" {
				if _, err := reg.Put(ctx, name, adapterstest.Random(cfg, 2, []string{"q_proj"}, 7, 0.01), false); err != nil {
					t.Error(err)
				}
			}
			return inner(ctx, a, spec)
		}
	}, func(env *training.Env) {
		// As cmd/serve wires it: a real registry on a disk store.
		st, err := adapters.OpenDisk(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := env.Executor.Config()
		if reg, err = adapters.Open(context.Background(), adapters.Options{Base: cfg, BaseID: env.ModelName, Store: st}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { reg.Close() })
		UseRegistry(env, reg)
	})
	ctx := context.Background()
	if _, err := reg.Put(ctx, "taken", adapterstest.Random(ts.base.Config, 2, []string{"q_proj"}, 1, 0.01), false); err != nil {
		t.Fatal(err)
	}
	code, b := ts.post(t, "/v1/soo/jobs", jobBody("taken", 1, ""))
	if code != http.StatusConflict || errCode(b) != "adapter_exists" || !strings.Contains(string(b), `\"replace\": true`) {
		t.Fatalf("job to a taken name: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeConflict, "adapter_name")

	replaced := submitJob(t, ts, jobBody("taken", 1, `,"replace":true`))
	evs := followJob(t, ts, replaced.ID)
	done := evs[len(evs)-1].Job
	rec, err := reg.Get(ctx, "taken")
	if done.Status != training.StatusSucceeded || !done.Replace || done.Result == nil || err != nil || rec.SHA256 != done.Result.SHA256 {
		t.Fatalf("replacing job %+v; adapter %+v (%v)", done, rec, err)
	}
	code, b = ts.get(t, "/v1/soo/jobs/"+replaced.ID+"/adapter/"+adapters.WeightsFile)
	if code != http.StatusNotFound || errCode(b) != "file_not_found" {
		t.Errorf("files of a registered job: %d %s", code, b)
	}

	mu.Lock()
	steal = "racy"
	mu.Unlock()
	racy := submitJob(t, ts, jobBody("racy", 2, ""))
	evs = followJob(t, ts, racy.ID)
	failed := evs[len(evs)-1].Job
	if failed.Status != training.StatusFailed || failed.Result == nil || len(failed.Result.Files) != 2 || len(failed.Losses) != 4 {
		t.Fatalf("job whose name was taken: %+v", failed)
	}
	var f adapters.Files
	for _, file := range []struct {
		name, ctype string
		dst         *[]byte
	}{{adapters.ConfigFile, "application/json", &f.Config}, {adapters.WeightsFile, "application/octet-stream", &f.Weights}} {
		resp, err := http.Get(ts.URL + "/v1/soo/jobs/" + racy.ID + "/adapter/" + file.name)
		if err != nil {
			t.Fatal(err)
		}
		*file.dst, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), file.ctype) {
			t.Errorf("download %s: %d %s", file.name, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	if adapters.Sum(f.Weights) != failed.Result.SHA256 || adapters.Sum(f.Config) != failed.Result.ConfigSHA256 {
		t.Error("downloaded files differ from the job's result")
	}
	if _, err := reg.Put(ctx, "racy-kept", f, false); err != nil {
		t.Errorf("the kept files do not register: %v", err)
	}
	code, b = ts.get(t, "/v1/soo/jobs/"+racy.ID+"/adapter/job.json")
	if code != http.StatusNotFound {
		t.Errorf("another file: %d %s", code, b)
	}
	checkEnvelope(t, b, TypeNotFound, "file")
}

// TestTrainingRedisDown: with the job store's Redis down, the routes answer
// 503 naming Redis, never an empty list.
func TestTrainingRedisDown(t *testing.T) {
	ts := start(t, Options{}, LoadOptions{})
	env, err := TrainingEnv(context.Background(), ts.base)
	if err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(adapterstest.StartRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	rc := redis.NewClient(opt)
	defer rc.Close()
	m, err := training.NewRedisManager(context.Background(), t.TempDir(), env, training.RedisOptions{Client: rc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ts.SetTraining(m) // no worker: the job stays queued
	j := submitJob(t, ts, jobBody("x", 1, ""))
	if code, b := ts.get(t, "/v1/soo/jobs"); code != 200 || !strings.Contains(string(b), j.ID) {
		t.Fatalf("list: %d %s", code, b)
	}
	if err := rc.Do(context.Background(), "SHUTDOWN", "NOSAVE").Err(); err == nil {
		t.Fatal("redis did not shut down")
	}
	for _, probe := range []func() (int, []byte){
		func() (int, []byte) { return ts.get(t, "/v1/soo/jobs") },
		func() (int, []byte) { return ts.get(t, "/v1/soo/jobs/"+j.ID) },
		func() (int, []byte) { return ts.post(t, "/v1/soo/jobs/"+j.ID+"/cancel", "") },
		func() (int, []byte) { return ts.post(t, "/v1/soo/jobs", jobBody("y", 1, "")) },
	} {
		code, b := probe()
		if code != http.StatusServiceUnavailable || !strings.Contains(strings.ToLower(string(b)), "redis") {
			t.Errorf("with Redis down: %d %s", code, b)
			continue
		}
		checkEnvelope(t, b, TypeUnavailable, "")
	}
}
