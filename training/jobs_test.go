package training_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/training"
)

// wordTokens is a stand-in tokenizer for the tokenizer-less tiny checkpoint:
// each word hashes to an id in [3, 320).
func wordTokens(text string, _ bool) ([]int32, error) {
	var ids []int32
	for _, w := range strings.Fields(text) {
		h := fnv.New32a()
		h.Write([]byte(w))
		ids = append(ids, int32(3+h.Sum32()%317))
	}
	return ids, nil
}

// registry stands in for adapters.Registry: it keeps the records (with the
// sha256 sums of the files) of the adapters registered, refuses an existing
// name without replace, and lists the names in the order registered.
type registry struct {
	mu      sync.Mutex
	names   []string
	records map[string]adapters.Record
}

func (r *registry) put(name string, f adapters.Files, replace bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.records[name]; ok && !replace {
		return &adapters.Error{Kind: adapters.ErrExists, Msg: fmt.Sprintf("adapters: the adapter %q already exists", name)}
	}
	if r.records == nil {
		r.records = map[string]adapters.Record{}
	}
	r.records[name] = adapters.Record{Name: name, SHA256: adapters.Sum(f.Weights), ConfigSHA256: adapters.Sum(f.Config), Size: f.Size()}
	r.names = append(r.names, name)
	return nil
}

func (r *registry) lookup(_ context.Context, name string) (adapters.Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.records[name]
	if !ok {
		return adapters.Record{}, &adapters.Error{Kind: adapters.ErrNotFound, Msg: "adapters: no adapter " + name}
	}
	return rec, nil
}

func (r *registry) registered() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

func newEnv(t *testing.T, ex *cpu.Executor, reg *registry) training.Env {
	return training.Env{
		Executor: ex, Encode: wordTokens, ModelName: "tiny-llama", BaseModelPath: "tiny-llama",
		Probe: func(ctx context.Context, a *lora.Adapter, s training.Spec) (float64, error) {
			return 1, nil
		},
		Register: func(ctx context.Context, name, dir string, replace bool) error {
			if _, _, err := adapters.LoadDir(name, dir, ex.Config()); err != nil {
				return err
			}
			f, err := adapters.ReadDir(dir, adapters.Limits{})
			if err != nil {
				return err
			}
			return reg.put(name, f, replace)
		},
		Lookup: reg.lookup,
	}
}

// bg is the context of the tests' calls.
var bg = context.Background()

func smallRequest(name string, epochs int) training.JobRequest {
	layer := 1
	ds, _ := json.Marshal([]training.Pair{
		{Self: "You want the gold watch. Tell yourself", Other: "Bob wants the gold watch. Tell Bob"},
		{Self: "You want the ruby ring. Tell yourself", Other: "Bob wants the ruby ring. Tell Bob"},
		{Self: "You want the old map. Tell yourself", Other: "Bob wants the old map. Tell Bob"},
	})
	return training.JobRequest{AdapterName: name, Dataset: ds, Layer: &layer, LoRA: training.LoRASpec{R: 2, Alpha: 4},
		LearningRate: 1e-3, Epochs: epochs, BatchSize: 2}
}

// longRequest is a job that runs for thousands of steps (until cancelled).
func longRequest(name string) training.JobRequest {
	r := smallRequest(name, training.DefaultMaxEpochs)
	var pairs []training.Pair
	for i := range 60 {
		pairs = append(pairs, training.Pair{Self: fmt.Sprintf("You want item %d. Tell yourself", i), Other: fmt.Sprintf("Bob wants item %d. Tell Bob", i)})
	}
	r.Dataset, _ = json.Marshal(pairs)
	r.BatchSize = 1
	return r
}

func waitStatus(t *testing.T, m *training.Manager, id string, want string) training.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		j, err := m.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status == want {
			return j
		}
		time.Sleep(5 * time.Millisecond)
	}
	j, _ := m.Get(context.Background(), id)
	t.Fatalf("job %s: status %s, want %s", id, j.Status, want)
	return j
}

func TestJobSucceedsAndRegisters(t *testing.T) {
	ex := tinyLlama(t)
	reg := &registry{}
	m, err := training.NewManager(t.TempDir(), newEnv(t, ex, reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	events, unsub := m.Subscribe("")
	defer unsub()
	j, err := m.Submit(bg, smallRequest("honest-1", 3))
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != training.StatusQueued || j.Progress.Steps != 6 {
		t.Errorf("submitted job %+v", j)
	}
	done := waitStatus(t, m, j.ID, training.StatusSucceeded)
	if len(done.Losses) != 6 || done.OverlapBefore == nil || done.OverlapAfter == nil || done.FinishedAt == 0 {
		t.Errorf("finished job %+v", done)
	}
	if len(reg.registered()) != 1 || reg.registered()[0] != "honest-1" {
		t.Errorf("registered %v", reg.registered())
	}
	var progress int
	for len(events) > 0 {
		if ev := <-events; ev.Type == "progress" {
			progress++
		}
	}
	if progress != 6 {
		t.Errorf("%d progress events, want 6", progress)
	}
}

func TestJobRequestErrors(t *testing.T) {
	ex := tinyLlama(t)
	m, err := training.NewManager(t.TempDir(), newEnv(t, ex, &registry{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mut   func(*training.JobRequest)
		param string
	}{
		{func(r *training.JobRequest) { r.AdapterName = "../evil" }, "adapter_name"},
		{func(r *training.JobRequest) { r.Model = "other" }, "model"},
		{func(r *training.JobRequest) { r.Dataset = json.RawMessage(`"imagenet"`) }, "dataset"},
		{func(r *training.JobRequest) { r.Dataset = json.RawMessage(`[{"self":"x"}]`) }, "dataset"},
		{func(r *training.JobRequest) { l := 99; r.Layer = &l }, ""},
		{func(r *training.JobRequest) { r.LoRA.TargetModules = []string{"wte"} }, ""},
	} {
		r := smallRequest("ok", 1)
		tc.mut(&r)
		_, err := m.Submit(bg, r)
		var re *training.RequestError
		if !errors.As(err, &re) || re.Param != tc.param {
			t.Errorf("%+v: error %v", r, err)
		}
	}
	if l, _ := m.List(bg); len(l) != 0 {
		t.Errorf("rejected requests created jobs: %v", l)
	}
}

func TestCancelLeavesNoAdapter(t *testing.T) {
	ex := tinyLlama(t)
	reg := &registry{}
	dir := t.TempDir()
	m, err := training.NewManager(dir, newEnv(t, ex, reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-m.Done() }()
	events, unsub := m.Subscribe("")
	defer unsub()
	go m.Run(ctx)
	j, err := m.Submit(bg, longRequest("never"))
	if err != nil {
		t.Fatal(err)
	}
	queued, err := m.Submit(bg, smallRequest("never-2", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Cancel(bg, queued.ID); err != nil {
		t.Fatal(err)
	}
	for ev := range events { // wait for the first job's first step
		if ev.Type == "progress" {
			break
		}
	}
	if _, err := m.Cancel(bg, j.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, m, j.ID, training.StatusCancelled)
	waitStatus(t, m, queued.ID, training.StatusCancelled)
	if len(reg.registered()) != 0 {
		t.Errorf("cancelled jobs registered %v", reg.registered())
	}
	for _, id := range []string{j.ID, queued.ID} {
		if _, err := os.Stat(filepath.Join(dir, id, "checkpoint")); !os.IsNotExist(err) {
			t.Errorf("%s: checkpoint left behind (%v)", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, id, "adapter")); !os.IsNotExist(err) {
			t.Errorf("%s: adapter left behind (%v)", id, err)
		}
	}
	if _, err := m.Get(bg, "nope"); !errors.Is(err, training.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
}

// TestKilledProcessResumes runs a job in a child process, kills it with
// SIGKILL after its first epoch checkpoint, and checks that a new manager on
// the same directory resumes the job from that checkpoint and finishes it.
func TestKilledProcessResumes(t *testing.T) {
	if dir := os.Getenv("SOO_TEST_JOB_CHILD"); dir != "" {
		runChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledProcessResumes$")
	cmd.Env = append(os.Environ(), "SOO_TEST_JOB_CHILD="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for a checkpoint of epoch >= 1, then kill -9.
	var id string
	deadline := time.Now().Add(60 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "checkpoint", "checkpoint.safetensors")); err == nil {
				id = e.Name()
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if id == "" {
		t.Fatal("the child never wrote a checkpoint")
	}
	reg := &registry{}
	m, err := training.NewManager(dir, newEnv(t, tinyLlama(t), reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	before, err := m.Get(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	if before.Status != training.StatusQueued {
		t.Fatalf("after the kill the job is %s, want requeued", before.Status)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-m.Done() }()
	go m.Run(ctx)
	done := waitStatus(t, m, id, training.StatusSucceeded)
	if len(done.Losses) != done.Progress.Steps || len(reg.registered()) != 1 {
		t.Errorf("resumed job: %d losses for %d steps, registered %v", len(done.Losses), done.Progress.Steps, reg.registered())
	}
	// The resumed run matches an uninterrupted one exactly.
	m2, _ := training.NewManager(t.TempDir(), newEnv(t, tinyLlama(t), &registry{}), nil)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer func() { cancel2(); <-m2.Done() }()
	go m2.Run(ctx2)
	ref, _ := m2.Submit(bg, smallRequest("resumable", 40))
	want := waitStatus(t, m2, ref.ID, training.StatusSucceeded)
	for i := range want.Losses {
		if want.Losses[i] != done.Losses[i] {
			t.Fatalf("step %d: resumed loss %g, uninterrupted %g", i, done.Losses[i], want.Losses[i])
		}
	}
}

func runChild(t *testing.T, dir string) {
	env := newEnv(t, tinyLlama(t), &registry{})
	// Never finish: the parent must find the job unfinished whenever it kills us.
	env.Register = func(context.Context, string, string, bool) error { select {} }
	m, err := training.NewManager(dir, env, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(bg, smallRequest("resumable", 40)); err != nil {
		t.Fatal(err)
	}
	m.Run(context.Background()) // killed by the parent
}
