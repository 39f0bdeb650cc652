package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/internal/demo"
	"github.com/sooserve/sooserve/internal/depend"
)

// TestAsAPIErrorDependencyAndStorage: a dependency that is down is a 503
// naming it (even when its cause is a timeout), and a write the storage
// refuses is a 507 that names the condition but not the path.
func TestAsAPIErrorDependencyAndStorage(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name                string
		err                 error
		status              int
		typ, code, contains string
	}{
		{"redis down", fmt.Errorf("adapters: redis put x: %w", depend.Classify("redis", refused)), 503, TypeUnavailable, "dependency_unavailable", "redis is unavailable: dial tcp: connect: connection refused"},
		{"redis stalled", fmt.Errorf("jobs: %w", depend.Unavailable("redis", context.DeadlineExceeded)), 503, TypeUnavailable, "dependency_unavailable", "redis is unavailable: context deadline exceeded"},
		{"disk full", fmt.Errorf("adapters: put x: %w", &os.PathError{Op: "write", Path: "/srv/data/adapters/blob", Err: syscall.ENOSPC}), 507, TypeStorage, "storage_full", "no space left on device"},
		{"quota", fmt.Errorf("jobs: %w", &os.PathError{Op: "write", Path: "/srv/data/jobs/x", Err: syscall.EDQUOT}), 507, TypeStorage, "storage_full", "quota"},
		{"read-only", &os.PathError{Op: "open", Path: "/srv/data/x", Err: syscall.EROFS}, 507, TypeStorage, "storage_read_only", "read-only file system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ae := AsAPIError(tc.err)
			if ae.Status != tc.status || ae.Type != tc.typ || ae.Code != tc.code || !strings.Contains(ae.Message, tc.contains) {
				t.Errorf("%v -> %d %s %s %q", tc.err, ae.Status, ae.Type, ae.Code, ae.Message)
			}
			if strings.Contains(ae.Message, "/srv/data") {
				t.Errorf("the message leaks the path: %q", ae.Message)
			}
			if !errors.Is(ae, tc.err) {
				t.Error("the cause is lost")
			}
		})
	}
	// Not every Redis error is an outage.
	if ae := AsAPIError(fmt.Errorf("x: %w", depend.Classify("redis", redis.Nil))); ae.Status != 500 {
		t.Errorf("redis.Nil -> %d", ae.Status)
	}
}

// fullStore is a DiskStore whose disk is full: every Put fails as a write
// to a full filesystem does.
type fullStore struct{ adapters.Store }

func (fullStore) Put(_ context.Context, rec adapters.Record, _ adapters.Files, _ bool) (adapters.Record, error) {
	return adapters.Record{}, fmt.Errorf("adapters: put %s: %w", rec.Name, &os.PathError{Op: "write", Path: "/data/adapters/.tmp-blob", Err: syscall.ENOSPC})
}

// TestStorageFullUpload: an upload to a server whose disk is full answers
// 507 insufficient_storage over HTTP, not a generic 500.
func TestStorageFullUpload(t *testing.T) {
	as := startAdapters(t, fullStore{diskStore(t)}, adapters.Limits{})
	code, body := as.upload(t, "full", adapterstest.Random(as.base.Config, 4, []string{"q_proj"}, 1, 0.2), "")
	if code != http.StatusInsufficientStorage || errCode(body) != "storage_full" || !strings.Contains(string(body), "no space left on device") ||
		strings.Contains(string(body), "/data/adapters") {
		t.Fatalf("upload to a full disk: %d %s", code, body)
	}
	checkEnvelope(t, body, TypeStorage, "")
}

// redisReplica serves the demo model with a registry on the Redis at url
// and a /health check of that Redis, as cmd/serve wires them.
func redisReplica(t *testing.T, url string) *adapterServer {
	t.Helper()
	st, err := adapters.OpenRedis(context.Background(), url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := New(Options{})
	s.MountAdapters()
	b, err := LoadBase(demoModel(t), LoadOptions{ID: demo.Name, Metrics: s.Metrics(), Threads: 2, MaxBatch: 8})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := adapters.Open(context.Background(), adapters.Options{Base: b.Config, BaseID: b.ID, Store: st, MaxResident: 8, Registerer: s.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	opt, err := depend.RedisOptions(url)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opt)
	s.AddHealthCheck("redis", func(ctx context.Context) error { return depend.Classify("redis", rc.Ping(ctx).Err()) })
	s.SetModels(&AdapterModels{Base: b, Registry: reg})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		b.Close(ctx)
		reg.Close()
		rc.Close()
	})
	return &adapterServer{URL: "http://" + ln.Addr().String(), base: b, reg: reg}
}

// TestRedisOutage: with the Redis of the adapter registry stopped or paused
// (SIGSTOP), uploads and adapters not yet in memory answer 503
// dependency_unavailable naming Redis within 2 s (not a generic 500, not a
// 10 s hang), the base model and resident adapters still serve, and /health
// answers 200 "degraded" with the failed dependency.
func TestRedisOutage(t *testing.T) {
	for _, mode := range []string{"stopped", "paused"} {
		t.Run(mode, func(t *testing.T) {
			rs := adapterstest.StartRedisServer(t)
			a := redisReplica(t, rs.URL)
			v1 := adapterstest.Random(a.base.Config, 4, []string{"q_proj"}, 1, 0.2)
			if code, b := a.upload(t, "resident", v1, ""); code != 201 {
				t.Fatalf("upload: %d %s", code, b)
			}
			b := redisReplica(t, rs.URL) // knows "resident" but has not loaded it
			if code, body := a.do(t, http.MethodGet, "/health", nil, ""); code != 200 || string(body) != `{"dependencies":{"redis":"ok"},"status":"ok"}` {
				t.Fatalf("health with redis up: %d %s", code, body)
			}
			switch mode {
			case "stopped":
				rs.Stop()
			case "paused":
				if err := rs.Pause(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { rs.Resume() })
			}
			timed := func(what string, f func() (int, []byte)) (int, []byte) {
				t.Helper()
				start := time.Now()
				code, body := f()
				took := time.Since(start)
				t.Logf("%s: %d in %v", what, code, took.Round(time.Millisecond))
				if took > 2*time.Second {
					t.Errorf("%s took %v with redis %s", what, took, mode)
				}
				return code, body
			}
			unavailable := func(what string, code int, body []byte) {
				t.Helper()
				if code != 503 || errCode(body) != "dependency_unavailable" || !strings.Contains(string(body), "redis is unavailable") {
					t.Errorf("%s with redis %s: %d %s", what, mode, code, body)
					return
				}
				checkEnvelope(t, body, TypeUnavailable, "")
			}
			code, body := timed("upload", func() (int, []byte) {
				return a.upload(t, "new", adapterstest.Random(a.base.Config, 4, []string{"q_proj"}, 2, 0.2), "")
			})
			unavailable("upload", code, body)
			code, body = timed("adapter not in memory", func() (int, []byte) {
				return b.do(t, http.MethodPost, "/v1/completions", []byte(`{"model":"resident","prompt":"Hi","max_tokens":2}`), "application/json")
			})
			unavailable("adapter not in memory", code, body)
			code, body = timed("resident adapter", func() (int, []byte) {
				return a.do(t, http.MethodPost, "/v1/completions", []byte(`{"model":"resident","prompt":"Hi","max_tokens":2}`), "application/json")
			})
			if code != 200 {
				t.Errorf("resident adapter with redis %s: %d %s", mode, code, body)
			}
			code, body = timed("base model", func() (int, []byte) {
				return b.do(t, http.MethodPost, "/v1/completions", []byte(`{"model":"`+demo.Name+`","prompt":"Hi","max_tokens":2}`), "application/json")
			})
			if code != 200 {
				t.Errorf("base model with redis %s: %d %s", mode, code, body)
			}
			code, body = timed("health", func() (int, []byte) { return a.do(t, http.MethodGet, "/health", nil, "") })
			var h struct {
				Status       string
				Dependencies map[string]string
			}
			json.Unmarshal(body, &h)
			if code != 200 || h.Status != "degraded" || h.Dependencies["redis"] == "" || h.Dependencies["redis"] == "ok" {
				t.Errorf("health with redis %s: %d %s", mode, code, body)
			}
		})
	}
}
