// Command serve runs SOO Serve: the OpenAI- and Ollama-compatible HTTP API
// over the engine, with continuous batching.
//
// Every flag also reads an environment variable (DESIGN §2):
//
//	--model        SOO_MODEL         model directory or hf:ORG/NAME (default: built-in demo model)
//	--model-name   SOO_MODEL_NAME    API id of the base model (default: directory name)
//	--addr         SOO_ADDR          listen address (127.0.0.1:8080)
//	--data         SOO_DATA          data directory (./soo-data)
//	--api-key      SOO_API_KEY       bearer key for every route but /health
//	--redis        SOO_REDIS_URL     redis://host:port/db: adapters, overlap records and training jobs shared by several replicas
//	--worker       SOO_WORKER        with --redis: this replica also runs training jobs from the shared queue
//	--backend      SOO_BACKEND       cpu, xla:cpu or xla:cuda (xla needs a -tags xla build and a PJRT plugin)
//	--dtype        SOO_DTYPE         f32 or bf16 (default: as stored)
//	--bf16-inputs  SOO_BF16_INPUTS   rounded (default) or exact: whether products with bf16 weights read their inputs rounded to bf16
//	--max-batch    SOO_MAX_BATCH     concurrent sequences per step (8)
//	--max-adapters SOO_MAX_ADAPTERS  adapters resident at once (16)
//	--ctx          SOO_CTX           context length (min(model max, 4096))
//
// SOO_HF_ENDPOINT overrides the hub used for hf: models (https://huggingface.co)
// and HF_TOKEN is sent to it when set.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/internal/depend"
	"github.com/sooserve/sooserve/overlap"
	"github.com/sooserve/sooserve/server"
	"github.com/sooserve/sooserve/server/hub"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	Model, ModelName, Addr, Data, APIKey, Redis, Backend, DType, BF16Inputs string
	MaxBatch, MaxAdapters, Ctx                                              int
	Worker                                                                  bool
	HFEndpoint, HFToken                                                     string
	Grace                                                                   time.Duration
}

// parse reads flags, each defaulting to its environment variable.
func parse(args []string, env func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	str := func(p *string, name, envName, def, usage string) {
		if v := env(envName); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" (env "+envName+")")
	}
	var intErr error
	num := func(p *int, name, envName string, def int, usage string) {
		if v := env(envName); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				intErr = fmt.Errorf("%s=%q: not an integer", envName, v)
			}
			def = n
		}
		fs.IntVar(p, name, def, usage+" (env "+envName+")")
	}
	str(&c.Model, "model", "SOO_MODEL", "", "Hugging Face model directory, or hf:ORG/NAME to download once (default: the built-in demo model)")
	str(&c.ModelName, "model-name", "SOO_MODEL_NAME", "", "API id of the base model (default: the directory name)")
	str(&c.Addr, "addr", "SOO_ADDR", "127.0.0.1:8080", "listen address")
	str(&c.Data, "data", "SOO_DATA", "./soo-data", "data directory: adapters, jobs, checkpoints, downloads")
	str(&c.APIKey, "api-key", "SOO_API_KEY", "", "require Authorization: Bearer KEY on every route but /health")
	str(&c.Redis, "redis", "SOO_REDIS_URL", "", "redis://host:port/db: keep adapters in Redis, shared by several replicas (default: <data>/adapters)")
	str(&c.Backend, "backend", "SOO_BACKEND", "cpu", "cpu, xla:cpu or xla:cuda (xla: a binary built with -tags xla and an installed PJRT plugin; no KV cache yet, training stays on cpu)")
	str(&c.DType, "dtype", "SOO_DTYPE", "", "weight dtype: f32 or bf16 (default: as stored)")
	str(&c.BF16Inputs, "bf16-inputs", "SOO_BF16_INPUTS", "rounded", "rounded: products with bf16 weights read their inputs rounded to bf16 (as llama.cpp's; AVX512_BF16 kernels where the CPU has them); exact: unrounded float32 inputs")
	num(&c.MaxBatch, "max-batch", "SOO_MAX_BATCH", 8, "concurrent sequences per decode step")
	num(&c.MaxAdapters, "max-adapters", "SOO_MAX_ADAPTERS", 16, "adapters resident at once")
	num(&c.Ctx, "ctx", "SOO_CTX", 0, "context length (default: min(model max, 4096))")
	worker := false
	if v := env("SOO_WORKER"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			intErr = fmt.Errorf("SOO_WORKER=%q: not a boolean", v)
		}
		worker = b
	}
	fs.BoolVar(&c.Worker, "worker", worker, "with --redis: also run training jobs taken from the shared Redis queue; replicas without it only accept and report jobs (without --redis the process always runs its own jobs) (env SOO_WORKER)")
	fs.DurationVar(&c.Grace, "grace", 30*time.Second, "how long shutdown waits for in-flight requests; those still running then end with an error event (503 shutting_down) and the exit is clean")
	if intErr != nil {
		return nil, intErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	c.HFEndpoint, c.HFToken = env("SOO_HF_ENDPOINT"), env("HF_TOKEN")
	switch {
	case c.MaxBatch < 1:
		return nil, fmt.Errorf("--max-batch must be at least 1")
	case c.MaxAdapters < 1:
		return nil, fmt.Errorf("--max-adapters must be at least 1")
	case c.Ctx < 0:
		return nil, fmt.Errorf("--ctx must not be negative")
	}
	switch c.Backend {
	case "cpu":
	case "xla:cpu", "xla:cuda":
	default:
		return nil, fmt.Errorf("--backend %q: want cpu, xla:cpu or xla:cuda", c.Backend)
	}
	if c.DType != "" {
		if _, err := model.ParseDType(c.DType); err != nil {
			return nil, fmt.Errorf("--dtype: %w", err)
		}
	}
	if c.BF16Inputs != "rounded" && c.BF16Inputs != "exact" {
		return nil, fmt.Errorf("--bf16-inputs %q: want rounded or exact", c.BF16Inputs)
	}
	return c, nil
}

// run serves until ctx ends, then shuts down gracefully. When addrs is not
// nil the listening address is sent on it.
func run(ctx context.Context, args []string, env func(string) string, stderr io.Writer, addrs chan<- string) error {
	c, err := parse(args, env, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := os.MkdirAll(c.Data, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	var records overlap.Store // nil: the server's in-memory ring
	var rc *redis.Client
	if c.Redis != "" { // a capped stream shared by the replicas
		opt, err := depend.RedisOptions(c.Redis) // calls bounded to a few hundred ms
		if err != nil {
			return fmt.Errorf("--redis: %w", err)
		}
		rc = redis.NewClient(opt)
		defer rc.Close()
		records = redisRecords{overlap.NewRedisStore(rc, "soo:overlap:records", 10000)}
	}
	srv := server.New(server.Options{APIKey: c.APIKey, Logger: log, OverlapStore: records, EvalDir: filepath.Join(c.Data, "evals")})
	if rc != nil { // /health reports a Redis that is down as "degraded"
		srv.AddHealthCheck("redis", func(ctx context.Context) error { return depend.Classify("redis", rc.Ping(ctx).Err()) })
	}
	srv.MountAdapters()
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "auth", c.APIKey != "")
	if addrs != nil {
		addrs <- ln.Addr().String()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	// /health answers 503 until the model is loaded.
	base, err := load(ctx, c, srv, log)
	if err != nil {
		shutdown(srv, nil, c.Grace, log)
		return err
	}
	reg, closeReg, err := openAdapters(ctx, c, base, srv, log)
	if err != nil {
		shutdown(srv, base, c.Grace, log)
		return err
	}
	defer closeReg()
	stopTrain, err := startTraining(ctx, c, base, reg, srv, log)
	if err != nil {
		shutdown(srv, base, c.Grace, log)
		return err
	}
	defer stopTrain()
	srv.SetModels(&server.AdapterModels{Base: base, Registry: reg})
	log.Info("ready", "model", base.ID, "context", base.Context(), "max_batch", c.MaxBatch, "dtype", base.DType, "bf16_inputs", c.BF16Inputs)

	select {
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight requests", "grace", c.Grace)
	case err := <-serveErr:
		shutdown(srv, base, c.Grace, log)
		return err
	}
	return shutdown(srv, base, c.Grace, log)
}

// closeTimeout bounds how long the scheduler may take to stop once the
// server is shut down (its requests have finished or been cut by then).
const closeTimeout = 10 * time.Second

// shutdown stops srv, waiting up to grace for in-flight requests; those
// still running then are cut with a final error event (server.Shutdown),
// which is a clean exit. Then it stops base's scheduler.
func shutdown(srv *server.Server, base *server.Base, grace time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(ctx)
	if base != nil {
		cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
		defer ccancel()
		if serr := base.Close(cctx); serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		log.Warn("shutdown cut short", "err", err)
		return err
	}
	log.Info("stopped")
	return nil
}

// openAdapters opens the adapter store (Redis with --redis, else
// <data>/adapters) and the registry over it.
func openAdapters(ctx context.Context, c *config, base *server.Base, srv *server.Server, log *slog.Logger) (*adapters.Registry, func(), error) {
	var st adapters.Store
	var err error
	where := c.Redis
	if c.Redis != "" {
		st, err = adapters.OpenRedis(ctx, c.Redis, "", log)
	} else {
		where = filepath.Join(c.Data, "adapters")
		st, err = adapters.OpenDisk(where, log)
	}
	if err != nil {
		return nil, nil, err
	}
	reg, err := adapters.Open(ctx, adapters.Options{Base: base.Config, BaseID: base.ID, Store: st,
		MaxResident: c.MaxAdapters, Registerer: srv.Registry(), Logger: log})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	log.Info("adapters", "store", where, "stored", len(reg.List(ctx)), "max_resident", c.MaxAdapters)
	return reg, func() { reg.Close(); st.Close() }, nil
}

// load resolves --model to a directory and loads it.
func load(ctx context.Context, c *config, srv *server.Server, log *slog.Logger) (*server.Base, error) {
	dir := c.Model
	switch repo, err := hub.ParseRef(c.Model); {
	case c.Model == "":
		dir = filepath.Join(c.Data, "models", demo.Name)
		wrote, err := demo.Ensure(dir)
		if err != nil {
			return nil, err
		}
		log.Warn("no --model given: serving the built-in demo model (a tiny Llama with random weights: its output is gibberish; use --model DIR or --model hf:ORG/NAME for a real model)",
			"dir", dir, "written", wrote)
	case err == nil:
		dir = filepath.Join(c.Data, "models", "hf", filepath.FromSlash(repo))
		log.Info("fetching model from the hub (once)", "repo", repo, "dir", dir)
		if err := hub.Download(ctx, repo, dir, hub.Options{Endpoint: c.HFEndpoint, Token: c.HFToken, Logger: log}); err != nil {
			return nil, err
		}
	case !errors.Is(err, hub.ErrNotHub):
		return nil, err
	case strings.HasPrefix(c.Model, "hf:"):
		return nil, fmt.Errorf("--model %q: want hf:ORG/NAME", c.Model)
	}
	opts := server.LoadOptions{ID: c.ModelName, Context: c.Ctx, MaxBatch: c.MaxBatch, Metrics: srv.Metrics(), Logger: log, Backend: c.Backend,
		ExactBF16Inputs: c.BF16Inputs == "exact"}
	if c.DType != "" {
		dt, _ := model.ParseDType(c.DType)
		opts.DType = &dt
	}
	start := time.Now()
	base, err := server.LoadBase(dir, opts)
	if err != nil {
		return nil, err
	}
	log.Info("model loaded", "id", base.ID, "dir", dir, "arch", base.Config.Arch, "layers", base.Config.Layers,
		"hidden", base.Config.Hidden, "vocab", base.Config.VocabSize, "bytes", base.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return base, nil
}
