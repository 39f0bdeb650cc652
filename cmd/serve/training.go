package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/server"
	"github.com/sooserve/sooserve/training"
)

// startTraining runs the SOO training job manager (jobs in <data>/jobs, one
// at a time) behind /v1/soo/jobs. A job that succeeds registers its adapter
// in reg (an existing adapter of the same name is not replaced: the job then
// fails). Jobs stop when ctx ends; one interrupted then stays "running" on
// disk and resumes from its last epoch checkpoint on the next start. The
// returned function waits for the manager to stop (after ctx ends).
func startTraining(ctx context.Context, c *config, base *server.Base, reg *adapters.Registry, srv *server.Server, log *slog.Logger) (func(), error) {
	env, err := server.TrainingEnv(ctx, base)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		env.Register = func(ctx context.Context, name, dir string) error {
			if _, err := reg.PutDir(ctx, name, dir, false); err != nil {
				return fmt.Errorf("register adapter %q: %w", name, err)
			}
			return nil
		}
	}
	dir := filepath.Join(c.Data, "jobs")
	m, err := training.NewManager(dir, env, log)
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(ctx)
	go m.Run(tctx)
	srv.SetTraining(m)
	log.Info("training jobs", "dir", dir, "jobs", len(m.List()))
	return func() {
		cancel()
		<-m.Done()
	}, nil
}
