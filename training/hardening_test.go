package training_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/training"
)

// otherFiles are the files of an adapter some client registered.
var otherFiles = adapters.Files{Config: []byte(`{"peft_type":"LORA"}`), Weights: []byte("someone else's weights")}

// TestJobQueueBound: no more than Limits.MaxPending jobs wait or run; a
// finished (here cancelled) job frees its place, and a restarted manager
// counts the jobs it requeued.
func TestJobQueueBound(t *testing.T) {
	env := newEnv(t, tinyLlama(t), &registry{})
	env.Limits.MaxPending = 2
	dir := t.TempDir()
	m, err := training.NewManager(dir, env, nil) // not running: jobs stay queued
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Submit(bg, smallRequest("q-1", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(bg, smallRequest("q-2", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(bg, smallRequest("q-3", 1)); !errors.Is(err, training.ErrQueueFull) {
		t.Fatalf("third job: %v, want ErrQueueFull", err)
	}
	if l, _ := m.List(bg); len(l) != 2 {
		t.Errorf("%d jobs listed, want 2", len(l))
	}
	if _, err := m.Cancel(bg, first.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(bg, smallRequest("q-3", 1)); err != nil {
		t.Fatalf("after a cancel: %v", err)
	}
	m2, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Submit(bg, smallRequest("q-4", 1)); !errors.Is(err, training.ErrQueueFull) {
		t.Errorf("restarted manager: %v, want ErrQueueFull", err)
	}
}

// TestJobRequestLimits: every unbounded field of a request has a documented
// maximum, refused with the field named and without echoing a huge value.
func TestJobRequestLimits(t *testing.T) {
	m, err := training.NewManager(t.TempDir(), newEnv(t, tinyLlama(t), &registry{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	pairs := func(n, textBytes int) json.RawMessage {
		ps := make([]training.Pair, n)
		for i := range ps {
			ps[i] = training.Pair{Self: fmt.Sprintf("You %d", i), Other: fmt.Sprintf("Bob %d", i)}
		}
		if textBytes > 0 {
			ps[0].Self = strings.Repeat("x", textBytes)
		}
		b, _ := json.Marshal(ps)
		return b
	}
	huge := strings.Repeat("m", 1<<20)
	for _, tc := range []struct {
		name   string
		mut    func(*training.JobRequest)
		param  string // "" for spec messages the server maps by prefix
		prefix string
	}{
		{"epochs over", func(r *training.JobRequest) { r.Epochs = training.DefaultMaxEpochs + 1 }, "epochs", ""},
		{"epochs negative", func(r *training.JobRequest) { r.Epochs = -1 }, "epochs", ""},
		{"rank", func(r *training.JobRequest) { r.LoRA.R = training.DefaultMaxRank + 1 }, "lora.r", ""},
		{"steps", func(r *training.JobRequest) {
			r.Dataset, r.Epochs, r.BatchSize = pairs(201, 0), 100, 1 // 20,100 steps
		}, "epochs", ""},
		{"pairs", func(r *training.JobRequest) { r.Dataset, r.Epochs = pairs(training.DefaultMaxPairs+1, 0), 1 }, "dataset", ""},
		{"text", func(r *training.JobRequest) { r.Dataset = pairs(2, training.DefaultMaxTextBytes+1) }, "dataset", ""},
		{"model", func(r *training.JobRequest) { r.Model = huge }, "model", ""},
		{"adapter name", func(r *training.JobRequest) { r.AdapterName = huge }, "adapter_name", ""},
		{"base id", func(r *training.JobRequest) { r.AdapterName = "tiny-llama" }, "adapter_name", ""},
		{"site", func(r *training.JobRequest) { r.Site = huge }, "site", ""},
		{"targets", func(r *training.JobRequest) { r.LoRA.TargetModules = slices.Repeat([]string{"q_proj"}, 17) }, "lora.target_modules", ""},
		{"target name", func(r *training.JobRequest) { r.LoRA.TargetModules = []string{huge} }, "lora.target_modules", ""},
		{"dataset name", func(r *training.JobRequest) { r.Dataset, _ = json.Marshal(huge) }, "dataset", ""},
		{"alpha", func(r *training.JobRequest) { r.LoRA.Alpha = 1e308 }, "", "alpha"},
		{"weight decay", func(r *training.JobRequest) { r.WeightDecay = 1e300 }, "", "weight_decay"},
	} {
		r := smallRequest("ok", 1)
		tc.mut(&r)
		_, err := m.Submit(bg, r)
		var re *training.RequestError
		if !errors.As(err, &re) || re.Param != tc.param || !strings.HasPrefix(re.Message, tc.prefix) {
			t.Errorf("%s: error %v", tc.name, err)
			continue
		}
		if len(re.Message) > 512 {
			t.Errorf("%s: a %d-byte message", tc.name, len(re.Message))
		}
	}
	if l, _ := m.List(bg); len(l) != 0 {
		t.Errorf("refused requests made %d jobs", len(l))
	}
	// At the limits, and the paper's recipe, are accepted.
	r := smallRequest("at-limits", training.DefaultMaxEpochs)
	r.LoRA.R, r.LoRA.Alpha = training.DefaultMaxRank, training.MaxAlpha
	if _, err := m.Submit(bg, r); err != nil {
		t.Errorf("at the limits: %v", err)
	}
	paper := training.JobRequest{AdapterName: "paper", Dataset: json.RawMessage(`"paper"`)}
	if _, err := m.Submit(bg, paper); err != nil {
		t.Errorf("the paper's recipe: %v", err)
	}
}

// TestJobNameTaken: a job to a registered name, or to the name a pending job
// trains, is refused at submit unless it sets replace; with replace it runs
// and replaces the adapter.
func TestJobNameTaken(t *testing.T) {
	reg := &registry{}
	if err := reg.put("taken", otherFiles, false); err != nil {
		t.Fatal(err)
	}
	m, err := training.NewManager(t.TempDir(), newEnv(t, tinyLlama(t), reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Submit(bg, smallRequest("taken", 1))
	var ce *training.ConflictError
	if !errors.As(err, &ce) || ce.Name != "taken" || !strings.Contains(ce.Message, `"replace": true`) {
		t.Fatalf("submit to a taken name: %v", err)
	}
	if _, err := m.Submit(bg, smallRequest("fresh", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(bg, smallRequest("fresh", 1)); !errors.As(err, &ce) || !strings.Contains(ce.Message, "already trains") {
		t.Fatalf("submit to a pending job's name: %v", err)
	}
	r := smallRequest("taken", 1)
	r.Replace = true
	j, err := m.Submit(bg, r)
	if err != nil || !j.Replace {
		t.Fatalf("submit with replace: %+v %v", j, err)
	}
	ctx, cancel := context.WithCancel(bg)
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	done := waitStatus(t, m, j.ID, training.StatusSucceeded)
	rec, err := reg.lookup(bg, "taken")
	if err != nil || done.Result == nil || rec.SHA256 != done.Result.SHA256 || len(done.Result.Files) != 0 {
		t.Errorf("replaced adapter %+v (%v), job result %+v", rec, err, done.Result)
	}
}

// TestJobKeepsAdapterWhenRegistrationFails: a job whose name is taken while
// it runs trains to its end, fails, and keeps its files, downloadable from
// the job, also after a restart.
func TestJobKeepsAdapterWhenRegistrationFails(t *testing.T) {
	ex := tinyLlama(t)
	reg := &registry{}
	env := newEnv(t, ex, reg)
	env.Probe = func(_ context.Context, a *lora.Adapter, _ training.Spec) (float64, error) {
		if a == nil { // before training: another client takes the name
			_ = reg.put("racy", otherFiles, false)
		}
		return 1, nil
	}
	dir := t.TempDir()
	m, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	j, err := m.Submit(bg, smallRequest("racy", 2))
	if err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, m, j.ID, training.StatusFailed)
	if !strings.Contains(done.Error, "already exists") || !strings.Contains(done.Error, "kept") || len(done.Losses) != 4 {
		t.Errorf("failed job: %q, %d losses", done.Error, len(done.Losses))
	}
	want := []string{adapters.ConfigFile, adapters.WeightsFile}
	if done.Result == nil || !slices.Equal(done.Result.Files, want) {
		t.Fatalf("result %+v, want files %v", done.Result, want)
	}
	checkKept(t, m, done, ex)
	m2, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkKept(t, m2, done, ex)
	if rec, _ := reg.lookup(bg, "racy"); rec.SHA256 != adapters.Sum(otherFiles.Weights) {
		t.Error("the failed job changed the registered adapter")
	}
}

// checkKept downloads the kept files of job j and checks them against its
// result: they are the PEFT adapter the job trained.
func checkKept(t *testing.T, m *training.Manager, j training.Job, ex *cpu.Executor) {
	t.Helper()
	var f adapters.Files
	var err error
	if f.Config, err = m.AdapterFile(bg, j.ID, adapters.ConfigFile); err != nil {
		t.Fatal(err)
	}
	if f.Weights, err = m.AdapterFile(bg, j.ID, adapters.WeightsFile); err != nil {
		t.Fatal(err)
	}
	if adapters.Sum(f.Weights) != j.Result.SHA256 || adapters.Sum(f.Config) != j.Result.ConfigSHA256 {
		t.Error("kept files differ from the job's result")
	}
	if _, _, err := adapters.Validate(j.AdapterName, f, ex.Config(), adapters.Limits{}); err != nil {
		t.Errorf("kept files are not a valid adapter: %v", err)
	}
	if _, err := m.AdapterFile(bg, j.ID, "job.json"); !errors.Is(err, training.ErrNoFile) {
		t.Errorf("another file: %v", err)
	}
}

// TestJobRegisteredBeforeCrashSucceeds: a process that dies after its job
// registered the adapter, before it recorded the job's success, leaves a
// job that succeeds on restart without training or registering again.
func TestJobRegisteredBeforeCrashSucceeds(t *testing.T) {
	ex := tinyLlama(t)
	reg := &registry{}
	dir := t.TempDir()
	crashAfterRegister(t, dir, newEnv(t, ex, reg), true)
	m, err := training.NewManager(dir, newEnv(t, ex, reg), nil) // the restarted process
	if err != nil {
		t.Fatal(err)
	}
	done, progress := runToEnd(t, m)
	if done.Status != training.StatusSucceeded || done.Error != "" {
		t.Fatalf("resumed job ended %s: %s", done.Status, done.Error)
	}
	if got := reg.registered(); len(got) != 1 || progress != 0 {
		t.Errorf("registered %v, %d progress events after the restart (want once, none)", got, progress)
	}
}

// TestJobStoppedBeforeRegisterRegistersItsFiles: a process that dies after
// its job trained and wrote its adapter, before registering it, leaves a job
// that registers those files on restart without training again.
func TestJobStoppedBeforeRegisterRegistersItsFiles(t *testing.T) {
	ex := tinyLlama(t)
	reg := &registry{}
	dir := t.TempDir()
	crashAfterRegister(t, dir, newEnv(t, ex, reg), false)
	m, err := training.NewManager(dir, newEnv(t, ex, reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	done, progress := runToEnd(t, m)
	rec, err := reg.lookup(bg, "te14")
	if done.Status != training.StatusSucceeded || err != nil || done.Result == nil || rec.SHA256 != done.Result.SHA256 || progress != 0 {
		t.Fatalf("resumed job %s (%s), registered %+v (%v), %d progress events", done.Status, done.Error, rec, err, progress)
	}
}

// crashAfterRegister runs a job "te14" whose registration (done when
// register is set) is followed by the process's death: Register then blocks
// until the manager is stopped, which records nothing more, as kill -9 would.
func crashAfterRegister(t *testing.T, dir string, env training.Env, register bool) {
	t.Helper()
	reached := make(chan struct{})
	inner := env.Register
	env.Register = func(ctx context.Context, name, dir string, replace bool) error {
		if register {
			if err := inner(ctx, name, dir, replace); err != nil {
				return err
			}
		}
		close(reached)
		<-ctx.Done()
		return ctx.Err()
	}
	m, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	go m.Run(ctx)
	if _, err := m.Submit(bg, smallRequest("te14", 2)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the job never reached registration")
	}
	cancel()
	<-m.Done()
}

// runToEnd runs m's only job to its end and counts its progress events.
func runToEnd(t *testing.T, m *training.Manager) (training.Job, int) {
	t.Helper()
	l, err := m.List(bg)
	if err != nil || len(l) != 1 || l[0].Status != training.StatusQueued {
		t.Fatalf("after the crash: %+v %v", l, err)
	}
	events, unsub := m.Subscribe(l[0].ID)
	defer unsub()
	ctx, cancel := context.WithCancel(bg)
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	progress := 0
	deadline := time.After(60 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Type == "progress" {
				progress++
			}
			if ev.Type == "status" && (ev.Job.Status == training.StatusSucceeded || ev.Job.Status == training.StatusFailed) {
				return ev.Job, progress
			}
		case <-deadline:
			t.Fatal("the resumed job never finished")
		}
	}
}

// TestRedisQueueBound: the bound holds across replicas and under concurrent
// submits, and a finished job frees its place.
func TestRedisQueueBound(t *testing.T) {
	rc := redisClient(t)
	limit := func(env *training.Env) { env.Limits.MaxPending = 2 }
	a, b := newReplicaEnv(t, rc, "a", limit), newReplicaEnv(t, rc, "b", limit)
	first, err := a.m.Submit(bg, smallRequest("q-1", 1))
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.m.Submit(bg, smallRequest("q-2", 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*replica{a, b} {
		if _, err := r.m.Submit(bg, smallRequest("q-3", 1)); !errors.Is(err, training.ErrQueueFull) {
			t.Fatalf("third job: %v, want ErrQueueFull", err)
		}
	}
	for _, id := range []string{first.ID, second.ID} {
		if _, err := b.m.Cancel(bg, id); err != nil {
			t.Fatal(err)
		}
	}
	// Concurrent submits on both replicas: exactly two get in.
	errs := make(chan error, 8)
	for i := range 8 {
		r := []*replica{a, b}[i%2]
		go func() {
			_, err := r.m.Submit(bg, smallRequest(fmt.Sprintf("c-%d", i), 1))
			errs <- err
		}()
	}
	var ids []string
	accepted := 0
	for range 8 {
		err := <-errs
		switch {
		case err == nil:
			accepted++
		case !errors.Is(err, training.ErrQueueFull):
			t.Errorf("concurrent submit: %v", err)
		}
	}
	if accepted != 2 {
		t.Fatalf("%d of 8 concurrent submits accepted, want 2", accepted)
	}
	l, _ := a.m.List(bg)
	for _, j := range l {
		if j.Status == training.StatusQueued {
			ids = append(ids, j.ID)
		}
	}
	// A job that runs to its end frees its place.
	b.work()
	for _, id := range ids {
		waitStatus(t, a.m, id, training.StatusSucceeded)
	}
	if _, err := a.m.Submit(bg, smallRequest("after", 1)); err != nil {
		t.Errorf("after the jobs finished: %v", err)
	}
}

// TestRedisKeepsAdapterWhenRegistrationFails: the files of a job that could
// not register go to Redis, and any replica serves them.
func TestRedisKeepsAdapterWhenRegistrationFails(t *testing.T) {
	rc := redisClient(t)
	shared := &registry{}
	takeName := func(env *training.Env) {
		env.Probe = func(_ context.Context, a *lora.Adapter, _ training.Spec) (float64, error) {
			if a == nil {
				_ = shared.put("racy", otherFiles, false)
			}
			return 1, nil
		}
	}
	a, b := newReplicaEnv(t, rc, "a", takeName, shared), newReplica(t, rc, "b", shared)
	a.work()
	j, err := b.m.Submit(bg, smallRequest("racy", 2))
	if err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, b.m, j.ID, training.StatusFailed)
	if done.Result == nil || len(done.Result.Files) != 2 || !strings.Contains(done.Error, "kept") {
		t.Fatalf("failed job %+v", done)
	}
	checkKept(t, b.m, done, tinyLlama(t))
}

// TestRedisRegisteredBeforeCrashSucceeds: a worker that dies after its job
// registered the adapter leaves a job that the worker taking it over
// finishes as succeeded, without registering again.
func TestRedisRegisteredBeforeCrashSucceeds(t *testing.T) {
	rc := redisClient(t)
	shared := &registry{}
	reached := make(chan struct{})
	hang := func(env *training.Env) {
		inner := env.Register
		env.Register = func(ctx context.Context, name, dir string, replace bool) error {
			if err := inner(ctx, name, dir, replace); err != nil {
				return err
			}
			close(reached)
			<-ctx.Done()
			return ctx.Err()
		}
	}
	a, b := newReplicaEnv(t, rc, "a", hang, shared), newReplica(t, rc, "b", shared)
	a.work()
	j, err := a.m.Submit(bg, smallRequest("te14", 2))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the job never reached registration")
	}
	a.stop() // a dies: the record says "running", the entry stays pending
	b.work()
	done := waitStatus(t, b.m, j.ID, training.StatusSucceeded)
	if got := shared.registered(); len(got) != 1 || done.Error != "" {
		t.Errorf("registered %v; job %+v", got, done)
	}
}

// TestRedisUnavailableIsAnError: with Redis paused, request-path calls end
// within their bound; with Redis down, they fail with ErrUnavailable
// instead of answering an empty list or "not found".
func TestRedisUnavailableIsAnError(t *testing.T) {
	rc := redisClient(t)
	a := newReplica(t, rc, "a")
	j, err := a.m.Submit(bg, smallRequest("x", 1))
	if err != nil {
		t.Fatal(err)
	}
	o := *rc.Options()
	ctl := redis.NewClient(&o)
	defer ctl.Close()
	if err := ctl.Do(bg, "CLIENT", "PAUSE", "2500", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = a.m.List(bg)
	if took := time.Since(start); !errors.Is(err, training.ErrUnavailable) || took > 3*time.Second {
		t.Errorf("list while Redis is paused: %v after %v", err, took)
	}
	if err := ctl.Ping(bg).Err(); err != nil { // returns once the pause is over
		t.Fatal(err)
	}
	if err := ctl.Do(bg, "SHUTDOWN", "NOSAVE").Err(); err == nil {
		t.Fatal("redis did not shut down")
	}
	if l, err := a.m.List(bg); !errors.Is(err, training.ErrUnavailable) || l != nil {
		t.Errorf("list with Redis down: %v %v", l, err)
	}
	if _, err := a.m.Get(bg, j.ID); !errors.Is(err, training.ErrUnavailable) {
		t.Errorf("get with Redis down: %v", err)
	}
	if _, err := a.m.Get(bg, "sooj-nope"); !errors.Is(err, training.ErrUnavailable) {
		t.Errorf("get of an unknown job with Redis down: %v", err)
	}
	if _, err := a.m.Cancel(bg, j.ID); !errors.Is(err, training.ErrUnavailable) {
		t.Errorf("cancel with Redis down: %v", err)
	}
	if _, err := a.m.Submit(bg, smallRequest("y", 1)); !errors.Is(err, training.ErrUnavailable) {
		t.Errorf("submit with Redis down: %v", err)
	}
	if _, err := a.m.AdapterFile(bg, j.ID, adapters.WeightsFile); !errors.Is(err, training.ErrUnavailable) {
		t.Errorf("adapter file with Redis down: %v", err)
	}
}
