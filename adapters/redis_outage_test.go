package adapters_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
)

// TestRedisStoreUnavailable: with its Redis stopped or paused (SIGSTOP),
// every RedisStore call fails within 2 s with an error that wraps
// ErrUnavailable and names Redis (go-redis's defaults hung 10 s when
// paused), a registry's Put and Acquire report it the same way, and the
// store works again once Redis answers.
func TestRedisStoreUnavailable(t *testing.T) {
	base := tinyLlama(t)
	f := adapterstest.Random(base, 4, []string{"q_proj"}, 1, 0.1)
	for _, mode := range []string{"stopped", "paused"} {
		t.Run(mode, func(t *testing.T) {
			rs := adapterstest.StartRedisServer(t)
			ctx := context.Background()
			st, err := adapters.OpenRedis(ctx, rs.URL, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			reg := openRedis(t, rs.URL, base)
			if _, err := reg.Put(ctx, "a", f, false); err != nil {
				t.Fatal(err)
			}
			switch mode {
			case "stopped":
				rs.Stop()
			case "paused":
				if err := rs.Pause(); err != nil {
					t.Fatal(err)
				}
			}
			check := func(what string, call func() error) {
				t.Helper()
				start := time.Now()
				err := call()
				took := time.Since(start)
				if !errors.Is(err, adapters.ErrUnavailable) || !strings.Contains(err.Error(), "redis is unavailable") {
					t.Errorf("%s with redis %s: %v", what, mode, err)
				}
				if took > 2*time.Second {
					t.Errorf("%s with redis %s took %v", what, mode, took)
				}
			}
			check("Get", func() error { _, err := st.Get(ctx, "a"); return err })
			check("Load", func() error { _, _, err := st.Load(ctx, "a"); return err })
			check("List", func() error { _, err := st.List(ctx); return err })
			check("Put", func() error {
				_, err := st.Put(ctx, adapters.Record{Name: "b"}, f, false)
				return err
			})
			check("Delete", func() error { return st.Delete(ctx, "a") })
			check("registry Put", func() error { _, err := reg.Put(ctx, "c", f, false); return err })
			check("registry Acquire of an unknown name", func() error { _, _, err := reg.Acquire(ctx, "d"); return err })
			if mode == "paused" {
				if err := rs.Resume(); err != nil {
					t.Fatal(err)
				}
				if _, _, err := st.Load(ctx, "a"); err != nil {
					t.Errorf("load after redis resumed: %v", err)
				}
			}
		})
	}
}
