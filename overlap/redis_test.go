package overlap_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/overlap"
)

// redisClient returns a new client for url, closed when the test ends (each
// call on the same URL is another "replica").
func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRedisStore(t *testing.T) {
	url := adapterstest.StartRedis(t)
	ctx := context.Background()
	var st overlap.Store = overlap.NewRedisStore(redisClient(t, url), "test:records", 100)
	if got, err := st.Recent(ctx, 10); err != nil || len(got) != 0 {
		t.Errorf("empty store: %v, %v", got, err)
	}
	if _, err := st.Get(ctx, "r1"); !errors.Is(err, overlap.ErrNotFound) {
		t.Errorf("Get(unknown) err = %v", err)
	}
	for i := 1; i <= 5; i++ {
		if err := st.Add(ctx, rec(fmt.Sprint("r", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := st.Recent(ctx, 0); err != nil || ids(got) != "r5,r4,r3,r2,r1" {
		t.Errorf("Recent(0) = %s, %v", ids(got), err)
	}
	if got, _ := st.Recent(ctx, 2); ids(got) != "r5,r4" {
		t.Errorf("Recent(2) = %s", ids(got))
	}
	r, err := st.Get(ctx, "r3")
	if err != nil || r.ID != "r3" || fmt.Sprint(r.Layers) != "[0 2]" || r.Adapter != "a" ||
		len(r.Result.Layers) != 3 || r.Result.Layers[2].Cosine != -0.3 || !r.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("Get(r3) = %+v, %v", r, err)
	}
	// A repeated id: Get returns the newer.
	again := rec("r3")
	again.Model = "newer"
	st.Add(ctx, again)
	if r, _ := st.Get(ctx, "r3"); r.Model != "newer" {
		t.Errorf("Get(repeated id) = %+v", r)
	}
	if got, _ := st.Recent(ctx, 0); ids(got) != "r3,r5,r4,r3,r2,r1" {
		t.Errorf("Recent after repeat = %s", ids(got))
	}
	if err := st.Add(ctx, overlap.Record{}); err == nil {
		t.Error("record without id accepted")
	}
}

func TestRedisStoreTrim(t *testing.T) {
	url := adapterstest.StartRedis(t)
	ctx := context.Background()
	const maxLen, n = 50, 1000
	c := redisClient(t, url)
	st := overlap.NewRedisStore(c, "test:trim", maxLen)
	for i := range n {
		if err := st.Add(ctx, rec(fmt.Sprint("t", i))); err != nil {
			t.Fatal(err)
		}
	}
	all, err := st.Recent(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// MAXLEN ~ trims whole radix-tree nodes (100 entries by default).
	const slack = 128
	if len(all) < maxLen || len(all) > maxLen+slack {
		t.Errorf("kept %d records, want %d..%d", len(all), maxLen, maxLen+slack)
	}
	for i, r := range all {
		if want := fmt.Sprint("t", n-1-i); r.ID != want {
			t.Fatalf("Recent[%d] = %s, want %s (newest kept, newest first)", i, r.ID, want)
		}
	}
	if _, err := st.Get(ctx, "t0"); !errors.Is(err, overlap.ErrNotFound) {
		t.Errorf("Get(trimmed) err = %v", err)
	}
	if r, err := st.Get(ctx, fmt.Sprint("t", n-1)); err != nil || r.ID != fmt.Sprint("t", n-1) {
		t.Errorf("Get(newest) = %+v, %v", r, err)
	}
	// The id index is bounded too.
	if h := c.HLen(ctx, "test:trim:ids").Val(); h > 2*maxLen+slack {
		t.Errorf("id index holds %d ids", h)
	}
}

func TestRedisStoreSubscribe(t *testing.T) {
	url := adapterstest.StartRedis(t)
	bg := context.Background()
	// Two replicas: a subscribes, b adds.
	a := overlap.NewRedisStore(redisClient(t, url), "test:sub", 100)
	b := overlap.NewRedisStore(redisClient(t, url), "test:sub", 100)
	b.Add(bg, rec("before")) // added before Subscribe: not delivered
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	ch, err := a.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.Add(bg, rec("x"))
	b.Add(bg, rec("y"))
	for _, want := range []string{"x", "y"} {
		select {
		case r := <-ch:
			if r.ID != want || fmt.Sprint(r.Layers) != "[0 2]" {
				t.Errorf("got %+v, want %s", r, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not delivered", want)
		}
	}
	// Replica b sees what a adds, via Recent and Get.
	a.Add(bg, rec("z"))
	if got, _ := b.Recent(bg, 2); ids(got) != "z,y" {
		t.Errorf("b.Recent = %s", ids(got))
	}
	if _, err := b.Get(bg, "z"); err != nil {
		t.Errorf("b.Get(z): %v", err)
	}
	select {
	case r := <-ch:
		if r.ID != "z" {
			t.Errorf("got %s, want z", r.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("z not delivered")
	}
	// A subscriber that does not read loses records, never blocks Add.
	for i := range 200 {
		if err := b.Add(bg, rec(fmt.Sprint("s", i))); err != nil {
			t.Fatal(err)
		}
	}
	if !adapterstest.Eventually(bg, 5*time.Second, func() bool { return a.Dropped() > 0 }) {
		t.Error("no drops counted for a stalled subscriber")
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("channel not closed after cancel")
		}
	}
}

func TestRedisStoreSubscribeEmpty(t *testing.T) {
	url := adapterstest.StartRedis(t)
	bg := context.Background()
	st := overlap.NewRedisStore(redisClient(t, url), "test:empty", 0)
	if st.MaxLen() != overlap.DefaultRedisMaxLen {
		t.Errorf("MaxLen = %d", st.MaxLen())
	}
	ctx, cancel := context.WithCancel(bg)
	ch, err := st.Subscribe(ctx) // the stream does not exist yet
	if err != nil {
		t.Fatal(err)
	}
	st.Add(bg, rec("first"))
	select {
	case r := <-ch:
		if r.ID != "first" {
			t.Errorf("got %s", r.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first record not delivered")
	}
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("record after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}
