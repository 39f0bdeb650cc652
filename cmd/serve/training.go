package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/server"
	"github.com/sooserve/sooserve/training"
)

// startTraining runs the SOO training job manager (jobs in <data>/jobs, one
// at a time) behind /v1/soo/jobs. A job that succeeds registers its adapter
// in reg; a job to an existing name is refused at submit unless it sets
// "replace", and a job that cannot register its adapter in the end fails but
// keeps its files (server.UseRegistry, training.Env). Jobs stop when ctx
// ends; one interrupted then stays "running" on disk and resumes from its
// last epoch checkpoint on the next start (or succeeds at once when it had
// registered its adapter). The returned function waits for the manager to
// stop (after ctx ends).
//
// With --redis the queue, job records, checkpoints and events live in Redis
// (training.NewRedisManager): every replica accepts, lists, streams and
// cancels every job, and replicas started with --worker run them, one at a
// time each; a job whose worker dies is taken over by another worker after
// a minute and resumes from its last epoch checkpoint. Use the same --model
// on every replica.
func startTraining(ctx context.Context, c *config, base *server.Base, reg *adapters.Registry, srv *server.Server, log *slog.Logger) (func(), error) {
	env, err := server.TrainingEnv(ctx, base)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		server.UseRegistry(&env, reg)
	}
	dir := filepath.Join(c.Data, "jobs")
	if c.Redis != "" {
		return startRedisTraining(ctx, c, dir, env, srv, log)
	}
	m, err := training.NewManager(dir, env, log)
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(ctx)
	go m.Run(tctx)
	srv.SetTraining(m)
	jobs, _ := m.List(ctx) // on disk: never fails
	log.Info("training jobs", "dir", dir, "jobs", len(jobs))
	return func() {
		cancel()
		<-m.Done()
	}, nil
}

// startRedisTraining is startTraining with --redis.
func startRedisTraining(ctx context.Context, c *config, dir string, env training.Env, srv *server.Server, log *slog.Logger) (func(), error) {
	opt, err := redis.ParseURL(c.Redis)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w", err)
	}
	// Request-path calls carry deadlines (training.RedisOptions.RequestTimeout):
	// go-redis applies them to its reads and writes only when asked to.
	opt.ContextTimeoutEnabled = true
	rc := redis.NewClient(opt)
	m, err := training.NewRedisManager(ctx, dir, env, training.RedisOptions{Client: rc}, log)
	if err != nil {
		rc.Close()
		return nil, err
	}
	tctx, cancel := context.WithCancel(ctx)
	if c.Worker {
		go m.Run(tctx)
	}
	srv.SetTraining(m)
	if jobs, err := m.List(ctx); err != nil {
		log.Warn("training jobs: cannot list the jobs in Redis", "err", err)
	} else {
		log.Info("training jobs", "queue", "redis", "worker", c.Worker, "jobs", len(jobs))
	}
	return func() {
		cancel()
		if c.Worker {
			<-m.Done()
		}
		m.Close()
		rc.Close()
	}, nil
}
