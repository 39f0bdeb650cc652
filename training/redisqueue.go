package training

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/internal/atomicfile"
	"github.com/sooserve/sooserve/internal/depend"
)

// RedisOptions configure a Manager whose jobs live in Redis (NewRedisManager).
//
// With prefix P (default DefaultRedisJobsPrefix, "soo:jobs") the keys are:
//
//	P                   hash: job id -> record JSON (the Job and its request),
//	                    written on every status change, every epoch and at
//	                    most every ProgressEvery in between
//	P:queue             stream of {"id": job id}, consumer group "workers":
//	                    XADD on submit, XREADGROUP by workers, XACK (and
//	                    XDEL) once the job is finished
//	P:events            pub/sub channel of Event JSON (every replica's SSE)
//	P:cancel            set of job ids whose cancellation the running worker
//	                    must carry out (it polls every CancelPoll)
//	P:checkpoint:<id>   the job's last epoch checkpoint (safetensors bytes),
//	                    overwritten every epoch, deleted when the job ends
//	P:pending           set of the ids of queued and running jobs: a submit
//	                    counts it (WATCHed) against Limits.MaxPending, and
//	                    every terminal write removes its job
//	P:result:<id>       hash: file name -> bytes of the adapter a job trained
//	                    but could not register (kept, never deleted)
//
// Request-path calls (submit, get, list, cancel, result files) are bounded
// by RequestTimeout; a Redis that is down or too slow makes them fail with
// an error wrapping ErrUnavailable (HTTP 503), never an empty answer.
// For the bound to hold while Redis is paused rather than down, the client
// needs ContextTimeoutEnabled (go-redis otherwise waits for its own
// ReadTimeout).
//
// A worker renews its claim on the stream entry of the job it runs every
// ClaimIdle/4 (XCLAIM to itself); a worker that dies leaves the entry
// pending, and another worker XAUTOCLAIMs it once it has been idle for
// ClaimIdle and resumes the job from the checkpoint in Redis. Checkpoints go
// through Redis so that workers need not share a disk; a checkpoint holds the
// LoRA parameters and both AdamW moments (3× the adapter) and must fit
// Redis's proto-max-bulk-len (512 MB by default). A worker stalled for longer
// than ClaimIdle (not dead) may race the one that took its job over: both
// write the record until the stalled one notices nothing; keep ClaimIdle well
// above any pause. A job that kills every worker that takes it is retried
// without end (there is no delivery limit yet).
type RedisOptions struct {
	Client *redis.Client
	// Prefix of the keys; "" means DefaultRedisJobsPrefix.
	Prefix string
	// Consumer names this worker in the consumer group; "" means
	// hostname-pid-random. Two live workers must not share a name.
	Consumer string
	// ClaimIdle is how long a stream entry stays unrenewed before another
	// worker takes it over (default 1 minute).
	ClaimIdle time.Duration
	// CancelPoll is how often a running job checks for a cancellation from
	// another replica (default 250 ms).
	CancelPoll time.Duration
	// ProgressEvery throttles progress writes to the job record (default
	// 500 ms); events are published on every step regardless.
	ProgressEvery time.Duration
	// RequestTimeout bounds each request-path call (default 1 s).
	RequestTimeout time.Duration
}

// DefaultRedisJobsPrefix prefixes the Redis keys of training jobs.
const DefaultRedisJobsPrefix = "soo:jobs"

const redisJobsGroup = "workers"

// redisQueue is the Redis side of a Manager.
type redisQueue struct {
	m                                                    *Manager
	c                                                    *redis.Client
	hash, stream, events, cancels, ckpt, pending, result string
	consumer                                             string
	claimIdle, poll, progressEvery, reqTimeout           time.Duration
	ps                                                   *redis.PubSub
	fan                                                  sync.WaitGroup
	entries                                              map[string]string // job id -> stream entry of the jobs this worker runs (m.mu)
}

// jobRecord is a job as stored: the public record and its request.
type jobRecord struct {
	Job
	Request *JobRequest `json:"request"`
}

// NewRedisManager returns a Manager whose queue, job records, checkpoints and
// events live in Redis, shared by every replica on the same Redis and prefix:
// any of them accepts, lists, reports, streams and cancels any job, and those
// that call Run (workers) take the queued jobs, one at a time each. dir holds
// a running job's scratch files (its checkpoint and adapter before they go to
// Redis and the registry). Close it after Run has returned.
func NewRedisManager(ctx context.Context, dir string, env Env, o RedisOptions, log *slog.Logger) (*Manager, error) {
	if o.Client == nil {
		return nil, errors.New("training: redis: no client")
	}
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("training: jobs dir: %w", err)
	}
	if o.Prefix == "" {
		o.Prefix = DefaultRedisJobsPrefix
	}
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), strings.TrimPrefix(newID(), "sooj-"))
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = time.Minute
	}
	if o.CancelPoll <= 0 {
		o.CancelPoll = 250 * time.Millisecond
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 500 * time.Millisecond
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = time.Second
	}
	m := newManager(dir, env, log)
	q := &redisQueue{m: m, c: o.Client, hash: o.Prefix, stream: o.Prefix + ":queue", events: o.Prefix + ":events",
		cancels: o.Prefix + ":cancel", ckpt: o.Prefix + ":checkpoint:", pending: o.Prefix + ":pending",
		result: o.Prefix + ":result:", consumer: o.Consumer, claimIdle: o.ClaimIdle, poll: o.CancelPoll,
		progressEvery: o.ProgressEvery, reqTimeout: o.RequestTimeout, entries: map[string]string{}}
	err := q.c.XGroupCreateMkStream(ctx, q.stream, redisJobsGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return nil, fmt.Errorf("training: redis: create consumer group: %w", err)
	}
	q.ps = q.c.Subscribe(ctx, q.events)
	if _, err := q.ps.Receive(ctx); err != nil { // the subscription is confirmed
		q.ps.Close()
		return nil, fmt.Errorf("training: redis: subscribe %s: %w", q.events, err)
	}
	q.fan.Add(1)
	go q.fanout()
	m.rq = q
	return m, nil
}

func (q *redisQueue) close() error {
	err := q.ps.Close()
	q.fan.Wait()
	if err != nil {
		return fmt.Errorf("training: redis: %w", err)
	}
	return nil
}

// fanout delivers the events of every replica to this one's subscribers.
func (q *redisQueue) fanout() {
	defer q.fan.Done()
	for msg := range q.ps.Channel() {
		var ev Event
		if err := json.Unmarshal([]byte(msg.Payload), &ev); err != nil {
			q.m.log.Warn("training: unreadable job event", "err", err)
			continue
		}
		q.m.mu.Lock()
		q.m.fanout(ev)
		q.m.mu.Unlock()
	}
}

// opCtx bounds a Redis call that must happen whatever the job's context.
func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// reqCtx bounds a request-path Redis call.
func (q *redisQueue) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, q.reqTimeout)
}

// unavailable wraps the error of a failed Redis call: a connectivity
// failure (down, unreachable, too slow) also wraps ErrUnavailable and names
// Redis (depend.Classify).
func unavailable(op string, err error) error {
	return depend.Classify("redis", fmt.Errorf("training: redis: %s: %w", op, err))
}

func encodeRecord(j *Job) ([]byte, error) {
	b, err := json.Marshal(jobRecord{*j, j.request})
	if err != nil {
		return nil, fmt.Errorf("training: encode job: %w", err)
	}
	return b, nil
}

func decodeJob(s string) (*Job, error) {
	var rec jobRecord
	if err := json.Unmarshal([]byte(s), &rec); err != nil {
		return nil, fmt.Errorf("training: decode job: %w", err)
	}
	j := rec.Job
	j.request = rec.Request
	if j.Losses == nil {
		j.Losses = []float64{}
	}
	return &j, nil
}

func terminal(status string) bool {
	return status == StatusSucceeded || status == StatusFailed || status == StatusCancelled
}

// submit stores the record and queues the job in one transaction, unless
// Limits.MaxPending jobs are pending (the pending set is WATCHed).
func (q *redisQueue) submit(ctx context.Context, j *Job) (Job, error) {
	b, err := encodeRecord(j)
	if err != nil {
		return Job{}, err
	}
	ctx, cancel := q.reqCtx(ctx)
	defer cancel()
	for range 20 {
		err = q.c.Watch(ctx, func(tx *redis.Tx) error {
			n, err := tx.SCard(ctx, q.pending).Result()
			if err != nil {
				return err
			}
			if n >= int64(q.m.limits.MaxPending) {
				return queueFull(int(n))
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.HSet(ctx, q.hash, j.ID, b)
				p.SAdd(ctx, q.pending, j.ID)
				p.XAdd(ctx, &redis.XAddArgs{Stream: q.stream, Values: map[string]any{"id": j.ID}})
				return nil
			})
			return err
		}, q.pending)
		if !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	switch {
	case errors.Is(err, ErrQueueFull):
		return Job{}, err
	case err != nil:
		return Job{}, unavailable("queue job", err)
	}
	q.publish(ctx, Event{"status", *j})
	return q.m.snapshot(j), nil
}

// put writes the record of the job this worker runs (m.mu held); a
// terminal record goes with the acknowledgement of the job's stream entry
// and the removal of its checkpoint and cancellation flag, in one
// transaction.
func (q *redisQueue) put(j *Job) error {
	b, err := encodeRecord(j)
	if err != nil {
		return err
	}
	ctx, cancel := opCtx()
	defer cancel()
	_, err = q.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, q.hash, j.ID, b)
		if terminal(j.Status) {
			p.SRem(ctx, q.pending, j.ID)
			if entry, ok := q.entries[j.ID]; ok {
				q.cleanup(ctx, p, entry, j.ID)
			}
		}
		return nil
	})
	if err != nil {
		q.m.log.Warn("training: redis: write job record", "job", j.ID, "err", err)
		return unavailable("write job "+j.ID, err)
	}
	return nil
}

// publish sends ev to every replica's subscribers; a failure is logged.
func (q *redisQueue) publish(ctx context.Context, ev Event) {
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := q.c.Publish(ctx, q.events, b).Err(); err != nil {
		q.m.log.Warn("training: redis: publish job event", "job", ev.Job.ID, "err", err)
	}
}

func (q *redisQueue) get(ctx context.Context, id string) (Job, error) {
	ctx, cancel := q.reqCtx(ctx)
	defer cancel()
	s, err := q.c.HGet(ctx, q.hash, id).Result()
	if errors.Is(err, redis.Nil) {
		return Job{}, ErrNotFound
	}
	if err != nil {
		return Job{}, unavailable("read job "+id, err)
	}
	j, err := decodeJob(s)
	if err != nil {
		return Job{}, err
	}
	return *j, nil
}

// list returns every job, newest first.
func (q *redisQueue) list(ctx context.Context) ([]Job, error) {
	ctx, cancel := q.reqCtx(ctx)
	defer cancel()
	all, err := q.c.HGetAll(ctx, q.hash).Result()
	if err != nil {
		return nil, unavailable("list jobs", err)
	}
	out := make([]Job, 0, len(all))
	for id, s := range all {
		j, err := decodeJob(s)
		if err != nil {
			q.m.log.Warn("skipping unreadable job record", "job", id, "err", err)
			continue
		}
		out = append(out, *j)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].CreatedAt != out[b].CreatedAt {
			return out[a].CreatedAt > out[b].CreatedAt
		}
		return out[a].ID > out[b].ID
	})
	return out, nil
}

// update runs fn on job id's record in a WATCH transaction (retried when
// another replica wrote the hash meanwhile); fn returns whether to write the
// record back and may queue more commands on p.
func (q *redisQueue) update(ctx context.Context, id string, fn func(j *Job, p redis.Pipeliner) (bool, error)) (*Job, error) {
	var out *Job
	for range 50 {
		err := q.c.Watch(ctx, func(tx *redis.Tx) error {
			s, err := tx.HGet(ctx, q.hash, id).Result()
			if errors.Is(err, redis.Nil) {
				return ErrNotFound
			}
			if err != nil {
				return err
			}
			j, err := decodeJob(s)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				write, err := fn(j, p)
				if err != nil || !write {
					return err
				}
				b, err := encodeRecord(j)
				if err != nil {
					return err
				}
				p.HSet(ctx, q.hash, id, b)
				return nil
			})
			out = j
			return err
		}, q.hash)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, err
			}
			return nil, unavailable("update job "+id, err)
		}
		return out, nil
	}
	return nil, unavailable("update job "+id, errors.New("too much contention"))
}

// cancel marks a queued job cancelled at once, or flags a running one for
// its worker, which stops it and marks it cancelled.
func (q *redisQueue) cancel(ctx context.Context, id string) (Job, error) {
	ctx, cancel := q.reqCtx(ctx)
	defer cancel()
	j, err := q.update(ctx, id, func(j *Job, p redis.Pipeliner) (bool, error) {
		switch j.Status {
		case StatusQueued:
			j.Status, j.FinishedAt = StatusCancelled, time.Now().Unix()
			p.SRem(ctx, q.pending, id)
			return true, nil
		case StatusRunning:
			p.SAdd(ctx, q.cancels, id)
		}
		return false, nil
	})
	if err != nil {
		return Job{}, err
	}
	switch j.Status {
	case StatusCancelled:
		q.publish(ctx, Event{"status", *j})
	case StatusRunning: // this replica may be running it: no need to wait for the poll
		q.m.mu.Lock()
		if c := q.m.cancels[id]; c != nil {
			c()
		}
		q.m.mu.Unlock()
	}
	return q.m.snapshot(j), nil
}

// run is a worker's loop: claim entries idle too long, else read new ones.
func (q *redisQueue) run(ctx context.Context) {
	block := min(q.claimIdle/2, 2*time.Second)
	for ctx.Err() == nil {
		msgs, _, err := q.c.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: q.stream, Group: redisJobsGroup,
			Consumer: q.consumer, MinIdle: q.claimIdle, Start: "0-0", Count: 1}).Result()
		if err == nil && len(msgs) == 0 {
			var streams []redis.XStream
			streams, err = q.c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: redisJobsGroup, Consumer: q.consumer,
				Streams: []string{q.stream, ">"}, Count: 1, Block: block}).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			for _, s := range streams {
				msgs = append(msgs, s.Messages...)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			q.m.log.Error("training: redis: read job queue", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for _, msg := range msgs {
			id, _ := msg.Values["id"].(string)
			q.take(ctx, msg.ID, id)
			if ctx.Err() != nil {
				return
			}
		}
	}
}

// take runs the job of stream entry entry, unless it has finished already.
func (q *redisQueue) take(ctx context.Context, entry, id string) {
	j, err := q.update(ctx, id, func(j *Job, _ redis.Pipeliner) (bool, error) {
		if terminal(j.Status) {
			return false, nil
		}
		j.Status = StatusRunning
		return true, nil
	})
	if errors.Is(err, ErrNotFound) || (err == nil && terminal(j.Status)) {
		q.finished(entry, id)
		return
	}
	if err != nil {
		q.m.log.Error("training: redis: claim job", "job", id, "err", err)
		return // the entry stays pending; it is claimed again after ClaimIdle
	}
	q.m.log.Info("training job taken", "job", id, "worker", q.consumer)
	q.m.mu.Lock()
	q.entries[id] = entry
	q.m.mu.Unlock()
	hctx, stop := context.WithCancel(ctx)
	var hb sync.WaitGroup
	hb.Add(1)
	go func() { defer hb.Done(); q.watch(hctx, entry, id) }()
	q.m.runJob(ctx, j)
	stop()
	hb.Wait()
	q.m.mu.Lock()
	done := terminal(j.Status)
	delete(q.entries, id)
	q.m.mu.Unlock()
	if done { // again, in case the terminal write failed
		q.finished(entry, id)
		_ = os.RemoveAll(filepath.Join(q.m.dir, id))
	}
}

// watch renews this worker's claim on entry and carries out a cancellation
// flagged by another replica, until ctx ends.
func (q *redisQueue) watch(ctx context.Context, entry, id string) {
	poll := time.NewTicker(q.poll)
	defer poll.Stop()
	renew := time.NewTicker(max(q.claimIdle/4, time.Millisecond))
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			err := q.c.XClaimJustID(ctx, &redis.XClaimArgs{Stream: q.stream, Group: redisJobsGroup,
				Consumer: q.consumer, Messages: []string{entry}}).Err()
			if err != nil && ctx.Err() == nil {
				q.m.log.Warn("training: redis: renew job claim", "job", id, "err", err)
			}
		case <-poll.C:
			flagged, err := q.c.SIsMember(ctx, q.cancels, id).Result()
			if err != nil || !flagged {
				continue
			}
			q.m.mu.Lock()
			if c := q.m.cancels[id]; c != nil {
				c()
			}
			q.m.mu.Unlock()
		}
	}
}

// finished acknowledges a finished job's entry and drops its checkpoint and
// cancellation flag (idempotent).
func (q *redisQueue) finished(entry, id string) {
	ctx, cancel := opCtx()
	defer cancel()
	_, err := q.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		q.cleanup(ctx, p, entry, id)
		return nil
	})
	if err != nil {
		q.m.log.Warn("training: redis: acknowledge finished job", "job", id, "err", err)
	}
}

func (q *redisQueue) cleanup(ctx context.Context, p redis.Pipeliner, entry, id string) {
	p.XAck(ctx, q.stream, redisJobsGroup, entry)
	p.XDel(ctx, q.stream, entry)
	p.Del(ctx, q.ckpt+id)
	p.SRem(ctx, q.cancels, id)
	p.SRem(ctx, q.pending, id)
}

// storeResult keeps the files of the adapter job id trained but could not
// register, for AdapterFile.
func (q *redisQueue) storeResult(id string, f adapters.Files) error {
	ctx, cancel := opCtx()
	defer cancel()
	if err := q.c.HSet(ctx, q.result+id, adapters.ConfigFile, f.Config, adapters.WeightsFile, f.Weights).Err(); err != nil {
		return unavailable("keep the adapter of job "+id, err)
	}
	return nil
}

// resultFile returns a file storeResult kept.
func (q *redisQueue) resultFile(ctx context.Context, id, file string) ([]byte, error) {
	ctx, cancel := q.reqCtx(ctx)
	defer cancel()
	b, err := q.c.HGet(ctx, q.result+id, file).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoFile
	}
	if err != nil {
		return nil, unavailable("read the adapter of job "+id, err)
	}
	return b, nil
}

// fetchCheckpoint puts job id's checkpoint from Redis into dir, or empties
// dir when Redis holds none.
func (q *redisQueue) fetchCheckpoint(ctx context.Context, id, dir string) error {
	b, err := q.c.Get(ctx, q.ckpt+id).Bytes()
	if errors.Is(err, redis.Nil) {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("training: checkpoint: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("training: redis: read checkpoint of %s: %w", id, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("training: checkpoint: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, checkpointFile), b); err != nil {
		return fmt.Errorf("training: checkpoint: %w", err)
	}
	q.m.log.Info("training job resumes from its checkpoint", "job", id, "bytes", len(b))
	return nil
}

// storeCheckpoint copies the epoch checkpoint in dir to Redis; a failure is
// logged (a resume then starts from an earlier epoch).
func (q *redisQueue) storeCheckpoint(id, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, checkpointFile))
	if err == nil {
		ctx, cancel := opCtx()
		defer cancel()
		err = q.c.Set(ctx, q.ckpt+id, b, 0).Err()
	}
	if err != nil {
		q.m.log.Warn("training: redis: store checkpoint", "job", id, "err", err)
	}
}
