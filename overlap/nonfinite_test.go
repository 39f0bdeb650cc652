package overlap_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/overlap"
)

// poisoned returns a [rows, cols] tensor of small values with v at index at
// (no poison when at < 0).
func poisoned(rows, cols, at int, v float32) engine.Tensor2D {
	t := engine.Tensor2D{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
	for i := range t.Data {
		t.Data[i] = float32(i%7) * 0.25
	}
	if at >= 0 {
		t.Data[at] = v
	}
	return t
}

// layerJSON decodes one layer entry as generic JSON.
func layerJSON(t *testing.T, l overlap.LayerResult) map[string]any {
	t.Helper()
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatalf("marshal %+v: %v", l, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCompareNonFinite: activations holding a NaN or an infinity give a
// LayerResult whose dependent values are not finite (cosine included, never
// the 0 of all-zero vectors) with a reason naming the prompt, and whose JSON
// has null for each of them plus "nonfinite": never an encoding failure.
// Values that do not depend on the bad prompt stay numbers.
func TestCompareNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, tc := range []struct {
		name    string
		S, O    engine.Tensor2D
		p       overlap.Pooling
		reason  string
		numbers []string // fields that stay finite
	}{
		{"NaN in self, mean", poisoned(3, 8, 5, nan), poisoned(2, 8, -1, 0), overlap.PoolMean, "self: 1 NaN and 0 infinite of 24 values; other: finite", []string{"other_norm"}},
		{"Inf in other, full", poisoned(3, 8, -1, 0), poisoned(4, 8, 30, inf), overlap.PoolFull, "self: finite; other: 0 NaN and 1 infinite of 32 values", []string{"self_norm"}},
		{"NaN in both, last", poisoned(2, 8, 9, nan), poisoned(2, 8, 8, nan), overlap.PoolLast, "self: 1 NaN and 0 infinite of 8 values; other: 1 NaN", nil},
	} {
		r, err := overlap.Compare(tc.S, tc.O, tc.p)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Finite() || !strings.Contains(r.NonFinite, tc.reason) || !strings.Contains(r.NonFinite, "numerically broken") {
			t.Errorf("%s: %+v, want non-finite values and a reason with %q", tc.name, r, tc.reason)
		}
		m := layerJSON(t, r)
		for _, f := range []string{"mse", "log_mse", "cosine", "self_norm", "other_norm"} {
			v, ok := m[f]
			if !ok {
				t.Errorf("%s: %s missing: %v", tc.name, f, m)
				continue
			}
			want := "null"
			for _, n := range tc.numbers {
				if n == f {
					want = "number"
				}
			}
			if _, isNum := v.(float64); (want == "number") != isNum || (want == "null" && v != nil) {
				t.Errorf("%s: %s = %v, want %s", tc.name, f, v, want)
			}
		}
		if m["nonfinite"] != r.NonFinite {
			t.Errorf("%s: nonfinite = %v", tc.name, m["nonfinite"])
		}
		// Read back: nulls are NaN, the rest as written.
		b, _ := json.Marshal(r)
		var back overlap.LayerResult
		if err := json.Unmarshal(b, &back); err != nil || !math.IsNaN(back.MSE) || back.NonFinite != r.NonFinite {
			t.Errorf("%s: read back %+v, %v", tc.name, back, err)
		}
	}
	// A NaN before the last row does not matter to "last" pooling.
	r, err := overlap.Compare(poisoned(2, 8, 1, nan), poisoned(2, 8, -1, 0), overlap.PoolLast)
	if err != nil || !r.Finite() || r.NonFinite != "" {
		t.Errorf("NaN outside the pooled row: %+v, %v", r, err)
	}
}

// TestLayerResultJSONUnchangedWhenFinite: a finite result's JSON is what it
// always was (the plain struct's encoding, no "nonfinite" key).
func TestLayerResultJSONUnchangedWhenFinite(t *testing.T) {
	type plain struct {
		Layer     int     `json:"layer"`
		Site      string  `json:"site"`
		MSE       float64 `json:"mse"`
		LogMSE    float64 `json:"log_mse"`
		Cosine    float64 `json:"cosine"`
		SelfNorm  float64 `json:"self_norm"`
		OtherNorm float64 `json:"other_norm"`
	}
	l := overlap.LayerResult{Layer: 3, Site: "mlp_out", MSE: 0.125, LogMSE: math.Log(0.125 + overlap.LogEpsilon), Cosine: -0.5, SelfNorm: 2, OtherNorm: 1e-30}
	got, err := json.Marshal(l)
	want, _ := json.Marshal(plain{l.Layer, l.Site, l.MSE, l.LogMSE, l.Cosine, l.SelfNorm, l.OtherNorm})
	if err != nil || string(got) != string(want) {
		t.Errorf("finite JSON %s, want %s (%v)", got, want, err)
	}
	var back overlap.LayerResult
	if err := json.Unmarshal(got, &back); err != nil || back != l {
		t.Errorf("round trip %+v, %v", back, err)
	}
	// A hand-made non-finite value still encodes, with a generic reason.
	m := layerJSON(t, overlap.LayerResult{MSE: math.Inf(1)})
	if m["mse"] != nil || m["nonfinite"] == nil || m["cosine"] != 0.0 {
		t.Errorf("hand-made Inf: %v", m)
	}
}

func nanRecord(id string) overlap.Record {
	r := &overlap.Result{Pooling: "mean", Layers: []overlap.LayerResult{
		{Layer: 0, Site: "attn_out", MSE: 0.5, LogMSE: math.Log(0.5), Cosine: 0.9, SelfNorm: 1, OtherNorm: 1},
		{Layer: 1, Site: "attn_out", MSE: math.NaN(), LogMSE: math.NaN(), Cosine: math.NaN(), SelfNorm: math.NaN(), OtherNorm: 3,
			NonFinite: "non-finite activations (self: 4 NaN and 0 infinite of 4 values; other: finite)"},
	}, SelfTokens: 1, OtherTokens: 1}
	return overlap.NewRecord(id, "tiny", "broken", r, time.Unix(1700000000, 0))
}

// TestNonFiniteRecords: a record with non-finite values is stored,
// listed, found and streamed by the ring and by Redis (whose entries are
// JSON), reads back with NaN where it was not finite, and the histograms
// skip those values (their sums stay finite).
func TestNonFiniteRecords(t *testing.T) {
	stores := map[string]func(t *testing.T) overlap.Store{
		"ring": func(*testing.T) overlap.Store { return overlap.NewRing(4) },
		"redis": func(t *testing.T) overlap.Store {
			return overlap.NewRedisStore(redisClient(t, adapterstest.StartRedis(t)), "test:nonfinite", 100)
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) { nonFiniteStore(t, name, open(t)) })
	}
}

func nonFiniteStore(t *testing.T, name string, st overlap.Store) {
	ctx := context.Background()
	check := func(what string, r overlap.Record, err error) {
		t.Helper()
		if err != nil || r.ID == "" || len(r.Result.Layers) != 2 {
			t.Fatalf("%s: %+v, %v", what, r, err)
		}
		l := r.Result.Layers[1]
		if !math.IsNaN(l.MSE) || l.OtherNorm != 3 || !strings.Contains(l.NonFinite, "self: 4 NaN") || r.Result.Layers[0].MSE != 0.5 {
			t.Errorf("%s: layer 1 %+v", what, l)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	sub, err := st.Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := overlap.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	rc := &overlap.Recorder{Store: st, Metrics: m}
	if err := rc.Record(ctx, nanRecord("n1")); err != nil {
		t.Fatalf("%s: record: %v", name, err)
	}
	got, err := st.Get(ctx, "n1")
	check(name+" get", got, err)
	list, err := st.Recent(ctx, 1)
	if err != nil || len(list) != 1 {
		t.Fatalf("%s: recent %v %v", name, list, err)
	}
	check(name+" recent", list[0], nil)
	select {
	case r := <-sub:
		check(name+" subscribe", r, nil)
		if _, err := json.Marshal(r); err != nil { // as GET /v1/overlap/stream writes it
			t.Errorf("%s: SSE encoding: %v", name, err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: not delivered to the subscriber", name)
	}
	cancel()
	fams, _ := reg.Gather()
	var counts []uint64
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			h := mt.GetHistogram()
			if math.IsNaN(h.GetSampleSum()) || math.IsInf(h.GetSampleSum(), 0) {
				t.Errorf("%s: %s sum %v", name, f.GetName(), h.GetSampleSum())
			}
			for _, l := range mt.GetLabel() {
				if l.GetName() == "layer" && l.GetValue() == "1" && f.GetName() == "soo_overlap_mse" {
					t.Errorf("%s: the NaN MSE of layer 1 was observed", name)
				}
			}
			counts = append(counts, h.GetSampleCount())
		}
	}
	if len(counts) != 2 { // layer 0's MSE and cosine only
		t.Errorf("%s: %d series, want 2: %v", name, len(counts), counts)
	}
}

// TestProbeResultNonFiniteJSON: a latent-SOO result with a NaN layer
// encodes with null and a reason naming the layer, and reads back as NaN.
func TestProbeResultNonFiniteJSON(t *testing.T) {
	pr := &overlap.ProbeResult{Site: "attn_out", Pooling: "mean", Pairs: 52, Layers: []float64{0.5, math.NaN()}, Mean: math.NaN()}
	b, err := json.Marshal(pr)
	if err != nil || !strings.Contains(string(b), `"layers":[0.5,null],"mean":null,"nonfinite":"the MSE is not finite at layers [1]`) {
		t.Fatalf("%s, %v", b, err)
	}
	var back overlap.ProbeResult
	if err := json.Unmarshal(b, &back); err != nil || back.Layers[0] != 0.5 || !math.IsNaN(back.Layers[1]) || !math.IsNaN(back.Mean) {
		t.Errorf("read back %+v, %v", back, err)
	}
	ok, _ := json.Marshal(overlap.ProbeResult{Site: "attn_out", Pooling: "mean", Pairs: 1, Layers: []float64{1}, Mean: 1})
	if string(ok) != `{"site":"attn_out","pooling":"mean","pairs":1,"layers":[1],"mean":1}` {
		t.Errorf("finite probe JSON changed: %s", ok)
	}
}
