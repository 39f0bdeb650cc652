package adapters_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/model"
)

func openRedis(t *testing.T, url string, base *model.Config) *adapters.Registry {
	t.Helper()
	ctx := context.Background()
	st, err := adapters.OpenRedis(ctx, url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := adapters.Open(ctx, adapters.Options{Base: base, BaseID: "tiny-llama", Store: st, MaxResident: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); st.Close() })
	return r
}

// TestRedisReplicas runs two registries on one real Redis: each sees the
// other's uploads, replacements and deletes within a second, and a replica
// that starts late or loses its subscription catches up.
func TestRedisReplicas(t *testing.T) {
	url := adapterstest.StartRedis(t)
	ctx := context.Background()
	base := tinyLlama(t)
	a := openRedis(t, url, base)
	b := openRedis(t, url, base)
	within := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		if !adapterstest.Eventually(ctx, time.Second, cond) {
			t.Fatalf("%s: not seen within a second", what)
		}
		t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Microsecond))
	}
	v1 := adapterstest.Random(base, 4, []string{"q_proj"}, 1, 0.1)
	v2 := adapterstest.Random(base, 4, []string{"q_proj", "v_proj"}, 2, 0.1)
	if _, err := a.Put(ctx, "x", v1, false); err != nil {
		t.Fatal(err)
	}
	within("upload", func() bool { return len(b.List(ctx)) == 1 })
	ab, _, err := b.Acquire(ctx, "x")
	if err != nil || len(ab.Modules) != 1 {
		t.Fatalf("b acquires x: %v", err)
	}
	if _, err := b.Put(ctx, "x", v1, false); !errors.Is(err, adapters.ErrExists) {
		t.Errorf("b uploads x again: %v", err)
	}
	if _, err := a.Put(ctx, "x", v2, true); err != nil {
		t.Fatal(err)
	}
	within("replacement", func() bool {
		ad, rec, err := b.Acquire(ctx, "x")
		return err == nil && rec.SHA256 == adapters.Sum(v2.Weights) && len(ad.Modules) == 2
	})
	if len(ab.Modules) != 1 {
		t.Error("the old version changed under its holder")
	}
	if err := b.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	within("delete", func() bool {
		_, _, err := a.Acquire(ctx, "x")
		return errors.Is(err, adapters.ErrNotFound) && len(a.List(ctx)) == 0 && len(a.Resident()) == 0
	})

	// A replica that starts late sees what is there.
	if _, err := a.Put(ctx, "y", v1, false); err != nil {
		t.Fatal(err)
	}
	c := openRedis(t, url, base)
	if got := c.List(ctx); len(got) != 1 || got[0].Name != "y" {
		t.Errorf("late replica lists %v", names(got))
	}
	// A replica whose subscription is killed catches up after reconnecting,
	// even with the events sent while it was away lost.
	admin := redis.NewClient(mustParse(t, url))
	defer admin.Close()
	if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(ctx, "z", v2, false); err != nil {
		t.Fatal(err)
	}
	within("upload after a lost subscription", func() bool { return len(c.List(ctx)) == 2 && len(b.List(ctx)) == 2 })
	if err := a.Delete(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	within("delete after a lost subscription", func() bool { return len(c.List(ctx)) == 1 && len(b.List(ctx)) == 1 })
	// The blobs of deleted and replaced versions are gone from Redis.
	keys, _ := admin.Keys(ctx, adapters.DefaultRedisPrefix+"blob:*").Result()
	if len(keys) != 2 {
		t.Errorf("%d blobs in redis, want 2 (z's)", len(keys))
	}
}

func mustParse(t *testing.T, url string) *redis.Options {
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
