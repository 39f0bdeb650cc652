package training_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/training"
)

// replica is one Manager on the shared Redis, as one serve process would be.
type replica struct {
	m      *training.Manager
	reg    *registry
	cancel context.CancelFunc
}

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(adapterstest.StartRedis(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true // as cmd/serve sets it: request deadlines bound Redis calls
	rc := redis.NewClient(opt)
	t.Cleanup(func() { rc.Close() })
	return rc
}

// newReplica starts a replica with its own registry, or shared; mut may
// change its environment.
func newReplica(t *testing.T, rc *redis.Client, name string, shared ...*registry) *replica {
	return newReplicaEnv(t, rc, name, nil, shared...)
}

func newReplicaEnv(t *testing.T, rc *redis.Client, name string, mut func(*training.Env), shared ...*registry) *replica {
	t.Helper()
	r := &replica{reg: &registry{}}
	if len(shared) > 0 {
		r.reg = shared[0]
	}
	env := newEnv(t, tinyLlama(t), r.reg)
	if mut != nil {
		mut(&env)
	}
	m, err := training.NewRedisManager(context.Background(), t.TempDir(), env,
		training.RedisOptions{Client: rc, Consumer: name, ClaimIdle: 400 * time.Millisecond, CancelPoll: 20 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	t.Cleanup(func() {
		if r.cancel != nil {
			r.cancel()
			<-m.Done()
		}
		m.Close()
	})
	return r
}

// work starts the replica's worker; stop simulates its crash.
func (r *replica) work() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.m.Run(ctx)
}

func (r *replica) stop() {
	r.cancel()
	<-r.m.Done()
	r.cancel = nil
}

func TestRedisJobOnAnotherReplica(t *testing.T) {
	rc := redisClient(t)
	a, b := newReplica(t, rc, "a"), newReplica(t, rc, "b")
	events, unsub := a.m.Subscribe("")
	defer unsub()
	b.work()
	j, err := a.m.Submit(bg, smallRequest("honest-r", 3))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.m.Get(bg, j.ID); err != nil || got.Status == "" {
		t.Fatalf("replica b does not see the job: %+v %v", got, err)
	}
	done := waitStatus(t, a.m, j.ID, training.StatusSucceeded)
	if len(done.Losses) != 6 || done.OverlapBefore == nil || done.OverlapAfter == nil || done.StartedAt == 0 {
		t.Errorf("finished job %+v", done)
	}
	if len(b.reg.registered()) != 1 || len(a.reg.registered()) != 0 {
		t.Errorf("registered on a %v, on b %v", a.reg.registered(), b.reg.registered())
	}
	var progress int
	statuses := map[string]bool{}
	deadline := time.After(5 * time.Second)
	for !statuses[training.StatusSucceeded] {
		select {
		case ev := <-events:
			if ev.Type == "progress" {
				progress++
			} else {
				statuses[ev.Job.Status] = true
			}
		case <-deadline:
			t.Fatalf("events on a: %d progress, statuses %v", progress, statuses)
		}
	}
	if progress != 6 || !statuses[training.StatusQueued] || !statuses[training.StatusRunning] {
		t.Errorf("events on a: %d progress (want 6), statuses %v", progress, statuses)
	}
	if l, err := a.m.List(bg); err != nil || len(l) != 1 || l[0].ID != j.ID {
		t.Errorf("list on a: %+v", l)
	}
	if n, _ := rc.XPending(context.Background(), "soo:jobs:queue", "workers").Result(); n.Count != 0 {
		t.Errorf("%d entries still pending", n.Count)
	}
}

func TestRedisCrashedWorkerIsTakenOver(t *testing.T) {
	rc := redisClient(t)
	a, b := newReplica(t, rc, "a"), newReplica(t, rc, "b")
	a.work()
	j, err := a.m.Submit(bg, smallRequest("resumable", 40))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if !adapterstest.Eventually(ctx, 60*time.Second, func() bool {
		return rc.Exists(ctx, "soo:jobs:checkpoint:"+j.ID).Val() == 1
	}) {
		t.Fatal("worker a never stored a checkpoint")
	}
	a.stop() // a crashes mid-job: its entry stays pending, the record "running"
	if got, _ := b.m.Get(bg, j.ID); got.Status != training.StatusRunning {
		t.Fatalf("after the crash the job is %s", got.Status)
	}
	events, unsub := b.m.Subscribe(j.ID)
	defer unsub()
	b.work()
	done := waitStatus(t, b.m, j.ID, training.StatusSucceeded)
	if len(done.Losses) != done.Progress.Steps || len(b.reg.registered()) != 1 || len(a.reg.registered()) != 0 {
		t.Errorf("taken-over job: %d losses for %d steps, registered on a %v, on b %v",
			len(done.Losses), done.Progress.Steps, a.reg.registered(), b.reg.registered())
	}
	first := 0
	for len(events) > 0 && first == 0 {
		if ev := <-events; ev.Type == "progress" {
			first = ev.Job.Progress.Step
		}
	}
	if first <= 2 { // 2 steps an epoch: b must start after a checkpointed epoch
		t.Errorf("worker b started at step %d, not from the checkpoint", first)
	}
	if !adapterstest.Eventually(ctx, 5*time.Second, func() bool {
		return rc.Exists(ctx, "soo:jobs:checkpoint:"+j.ID).Val() == 0
	}) {
		t.Error("checkpoint left in Redis")
	}
	// The taken-over run matches an uninterrupted one exactly.
	m2, _ := training.NewManager(t.TempDir(), newEnv(t, tinyLlama(t), &registry{}), nil)
	ctx2, cancel2 := context.WithCancel(ctx)
	defer func() { cancel2(); <-m2.Done() }()
	go m2.Run(ctx2)
	ref, _ := m2.Submit(bg, smallRequest("resumable", 40))
	want := waitStatus(t, m2, ref.ID, training.StatusSucceeded)
	for i := range want.Losses {
		if want.Losses[i] != done.Losses[i] {
			t.Fatalf("step %d: taken-over loss %g, uninterrupted %g", i, done.Losses[i], want.Losses[i])
		}
	}
}

func TestRedisCancelFromAnotherReplica(t *testing.T) {
	rc := redisClient(t)
	a, b := newReplica(t, rc, "a"), newReplica(t, rc, "b")
	// A job cancelled while queued never runs.
	queued, err := a.m.Submit(bg, smallRequest("never-q", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := b.m.Cancel(bg, queued.ID); err != nil || c.Status != training.StatusCancelled {
		t.Fatalf("cancel queued: %+v %v", c, err)
	}
	events, unsub := a.m.Subscribe("")
	defer unsub()
	b.work()
	j, err := a.m.Submit(bg, longRequest("never"))
	if err != nil {
		t.Fatal(err)
	}
	for ev := range events { // wait for the job's first step on b
		if ev.Type == "progress" && ev.Job.ID == j.ID {
			break
		}
	}
	if _, err := a.m.Cancel(bg, j.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, a.m, j.ID, training.StatusCancelled)
	if got, _ := a.m.Get(bg, queued.ID); got.Status != training.StatusCancelled || got.StartedAt != 0 {
		t.Errorf("queued job after cancel: %+v", got)
	}
	if len(b.reg.registered()) != 0 {
		t.Errorf("cancelled jobs registered %v", b.reg.registered())
	}
	ctx := context.Background()
	if !adapterstest.Eventually(ctx, 5*time.Second, func() bool {
		n, _ := rc.XPending(ctx, "soo:jobs:queue", "workers").Result()
		return n.Count == 0 && rc.Exists(ctx, "soo:jobs:checkpoint:"+j.ID, "soo:jobs:cancel").Val() == 0
	}) {
		t.Error("cancelled job left a pending entry, a checkpoint or its flag in Redis")
	}
	if _, err := a.m.Get(bg, "nope"); err != training.ErrNotFound {
		t.Errorf("unknown job: %v", err)
	}
}
