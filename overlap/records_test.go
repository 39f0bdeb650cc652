package overlap_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sooserve/sooserve/overlap"
)

func rec(id string) overlap.Record {
	r := &overlap.Result{Pooling: "mean", Layers: []overlap.LayerResult{
		{Layer: 0, Site: "attn_out", MSE: 0.5, Cosine: 0.9},
		{Layer: 0, Site: "mlp_out", MSE: 0.05, Cosine: 0.2},
		{Layer: 2, Site: "attn_out", MSE: 2, Cosine: -0.3},
	}, SelfTokens: 3, OtherTokens: 4}
	return overlap.NewRecord(id, "tiny", "a", r, time.Unix(1700000000, 0))
}

func ids(rs []overlap.Record) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.ID)
	}
	return strings.Join(s, ",")
}

func TestRing(t *testing.T) {
	ctx := context.Background()
	var st overlap.Store = overlap.NewRing(3)
	if got, _ := st.Recent(ctx, 10); len(got) != 0 {
		t.Errorf("empty ring: %v", got)
	}
	for i := 1; i <= 5; i++ {
		if err := st.Add(ctx, rec(fmt.Sprint("r", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := st.Recent(ctx, 0); ids(got) != "r5,r4,r3" {
		t.Errorf("Recent(0) = %s", ids(got))
	}
	if got, _ := st.Recent(ctx, 2); ids(got) != "r5,r4" {
		t.Errorf("Recent(2) = %s", ids(got))
	}
	if r, err := st.Get(ctx, "r3"); err != nil || r.ID != "r3" || fmt.Sprint(r.Layers) != "[0 2]" {
		t.Errorf("Get(r3) = %+v, %v", r, err)
	}
	if _, err := st.Get(ctx, "r2"); !errors.Is(err, overlap.ErrNotFound) {
		t.Errorf("Get(evicted) err = %v", err)
	}
	// A repeated id: Get returns the newer, and evicting the older keeps it.
	st.Add(ctx, rec("r4"))
	st.Add(ctx, rec("r6"))
	if _, err := st.Get(ctx, "r4"); err != nil {
		t.Errorf("Get(r4 after its older copy was evicted): %v", err)
	}
	if err := st.Add(ctx, overlap.Record{}); err == nil {
		t.Error("record without id accepted")
	}
}

func TestRingSubscribe(t *testing.T) {
	ring := overlap.NewRing(2)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := ring.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	ring.Add(bg, rec("a"))
	ring.Add(bg, rec("b"))
	for _, want := range []string{"a", "b"} {
		select {
		case r := <-ch:
			if r.ID != want {
				t.Errorf("got %s, want %s", r.ID, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no record delivered")
		}
	}
	// A subscriber that does not read loses records, never blocks Add.
	for i := range 200 {
		ring.Add(bg, rec(fmt.Sprint("x", i)))
	}
	if ring.Dropped() == 0 {
		t.Error("no drops counted for a stalled subscriber")
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				ring.Add(bg, rec("after")) // must not panic on a closed channel
				return
			}
		case <-deadline:
			t.Fatal("channel not closed after cancel")
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := overlap.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	rc := &overlap.Recorder{Store: overlap.NewRing(4), Metrics: m}
	if err := rc.Record(context.Background(), rec("q1")); err != nil {
		t.Fatal(err)
	}
	r := rec("q2")
	r.Adapter = ""
	rc.Record(context.Background(), r)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var lv []string
			for _, lp := range mt.GetLabel() {
				lv = append(lv, lp.GetName()+"="+lp.GetValue())
			}
			h := mt.GetHistogram()
			got[mf.GetName()+"{"+strings.Join(lv, ",")+"}"] = fmt.Sprintf("n=%d sum=%g", h.GetSampleCount(), h.GetSampleSum())
		}
	}
	want := map[string]string{}
	for _, ad := range []string{"a", "base"} {
		want["soo_overlap_mse{adapter="+ad+",layer=0,site=attn_out}"] = "n=1 sum=0.5"
		want["soo_overlap_mse{adapter="+ad+",layer=0,site=mlp_out}"] = "n=1 sum=0.05"
		want["soo_overlap_mse{adapter="+ad+",layer=2,site=attn_out}"] = "n=1 sum=2"
		want["soo_overlap_cosine{adapter="+ad+",layer=0,site=attn_out}"] = "n=1 sum=0.9"
		want["soo_overlap_cosine{adapter="+ad+",layer=0,site=mlp_out}"] = "n=1 sum=0.2"
		want["soo_overlap_cosine{adapter="+ad+",layer=2,site=attn_out}"] = "n=1 sum=-0.3"
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("gathered\n%v\nwant\n%v", got, want)
	}
	if _, err := overlap.NewMetrics(reg); err == nil {
		t.Error("registering twice succeeded")
	}
	if got, _ := rc.Store.Get(context.Background(), "q1"); got.Adapter != "a" {
		t.Errorf("stored %+v", got)
	}
}

// TestRingConcurrent exercises Add, Recent, Get and Subscribe together (run
// with -race).
func TestRingConcurrent(t *testing.T) {
	ring := overlap.NewRing(16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, _ := ring.Subscribe(ctx)
	done := make(chan int)
	go func() {
		n := 0
		for range ch {
			n++
		}
		done <- n
	}()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := fmt.Sprintf("w%d-%d", w, i)
				ring.Add(ctx, rec(id))
				ring.Get(ctx, id)
				ring.Recent(ctx, 5)
			}
		}()
	}
	wg.Wait()
	if got, _ := ring.Recent(ctx, 0); len(got) != 16 {
		t.Errorf("kept %d", len(got))
	}
	cancel()
	if n := <-done; uint64(n)+ring.Dropped() != 200 {
		t.Errorf("delivered %d + dropped %d != 200", n, ring.Dropped())
	}
}
