package adapters_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/refcase"
)

func tinyLlama(t testing.TB) *model.Config {
	td, _ := refcase.TestData()
	cfg, err := model.LoadConfig(filepath.Join(td, "models/tiny-llama"))
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Fatal(err)
	}
	return cfg
}

func testFiles(t testing.TB, name string) adapters.Files {
	t.Helper()
	td, _ := refcase.TestData()
	f, err := adapters.ReadDir(filepath.Join(td, "adapters", name), adapters.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func openDisk(t testing.TB, dir string, base *model.Config, reg prometheus.Registerer, maxResident int) (*adapters.Registry, *adapters.DiskStore) {
	t.Helper()
	st, err := adapters.OpenDisk(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := adapters.Open(context.Background(), adapters.Options{Base: base, BaseID: "tiny-llama", Store: st,
		MaxResident: maxResident, Registerer: reg, Limits: adapters.Limits{MaxRank: 16, MaxBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, st
}

func names(rs []adapters.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name+"@"+r.SHA256[:8])
	}
	return out
}

func TestRegistryUploadListGetDelete(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	reg := prometheus.NewRegistry()
	r, _ := openDisk(t, t.TempDir(), base, reg, 4)
	f := testFiles(t, "tiny-llama-lora")
	rec, err := r.Put(ctx, "honest", f, false)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Rank != 4 || rec.Alpha != 8 || len(rec.Modules) != 7 || rec.SHA256 != adapters.Sum(f.Weights) || rec.Size != f.Size() || rec.Version == 0 || rec.Base != "tiny-llama" {
		t.Errorf("record %+v", rec)
	}
	if _, err := r.Put(ctx, "honest", f, false); !errors.Is(err, adapters.ErrExists) {
		t.Errorf("second put: %v", err)
	}
	if _, err := r.Put(ctx, "tiny-llama", f, false); !errors.Is(err, adapters.ErrInvalid) {
		t.Errorf("base id as adapter name: %v", err)
	}
	qv := testFiles(t, "tiny-llama-lora-qv")
	if _, err := r.Put(ctx, "qv", qv, false); err != nil {
		t.Fatal(err)
	}
	if got := names(r.List(ctx)); len(got) != 2 || !strings.HasPrefix(got[0], "honest@") || !strings.HasPrefix(got[1], "qv@") {
		t.Errorf("list %v", got)
	}
	got, err := r.Get(ctx, "qv")
	if err != nil || got.Rank != 8 || !got.RSLoRA || !slices.Equal(got.Modules, []string{"q_proj", "v_proj"}) {
		t.Errorf("get qv: %+v %v", got, err)
	}
	a1, _, err := r.Acquire(ctx, "honest")
	if err != nil {
		t.Fatal(err)
	}
	// Replacement: the old pointer stays intact, new acquisitions get the new one.
	old := a1.Layers[0][model.Q].A[0]
	rec2, err := r.Put(ctx, "honest", qv, true)
	if err != nil {
		t.Fatal(err)
	}
	a2, rec2b, err := r.Acquire(ctx, "honest")
	if err != nil || a2 == a1 || rec2b.Version != rec2.Version || rec2.Version <= rec.Version || a2.Rank != 8 {
		t.Fatalf("after replace: %v %+v", err, rec2b)
	}
	if a1.Layers[0][model.Q].A[0] != old || a1.Rank != 4 {
		t.Error("replacement changed the old version's weights")
	}
	// Delete drops the registry's references.
	weakA := weak.Make(a2)
	a1, a2 = nil, nil
	if err := r.Delete(ctx, "honest"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Acquire(ctx, "honest"); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("acquire deleted: %v", err)
	}
	if err := r.Delete(ctx, "honest"); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("delete twice: %v", err)
	}
	runtime.GC()
	runtime.GC()
	if weakA.Value() != nil {
		t.Error("the deleted adapter is still referenced")
	}
	if got := names(r.List(ctx)); len(got) != 1 {
		t.Errorf("list after delete %v", got)
	}
	if v := metric(t, reg, "soo_adapters_resident"); v != 1 {
		t.Errorf("resident gauge %v", v)
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			if m := mf.GetMetric()[0]; m.GetGauge() != nil {
				v = m.GetGauge().GetValue()
			} else {
				v = m.GetCounter().GetValue()
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestResidentLRU(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	r, _ := openDisk(t, dir, base, reg, 2)
	for i, n := range []string{"a", "b", "c"} {
		if _, err := r.Put(ctx, n, adapterstest.Random(base, 2, []string{"q_proj"}, uint64(i), 0.1), false); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.Resident(); !slices.Equal(got, []string{"c", "b"}) {
		t.Errorf("resident %v", got)
	}
	if v := metric(t, reg, "soo_adapter_evictions_total"); v != 1 {
		t.Errorf("evictions %v", v)
	}
	// "a" was evicted: the first request loads it on demand.
	if _, _, err := r.Acquire(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := r.Resident(); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("resident after loading a %v", got)
	}
	if v := metric(t, reg, "soo_adapter_loads_total"); v != 4 {
		t.Errorf("loads %v", v)
	}
	// A fresh registry on the same directory loads on demand, none resident.
	r2, _ := openDisk(t, dir, base, nil, 2)
	if len(r2.Resident()) != 0 || len(r2.List(ctx)) != 3 {
		t.Errorf("reopened: resident %v list %v", r2.Resident(), names(r2.List(ctx)))
	}
	a, rec, err := r2.Acquire(ctx, "b")
	if err != nil || a == nil || rec.Name != "b" {
		t.Fatal(err)
	}
}

// mutate returns f with one change applied to its config or weights.
func mutateConfig(f adapters.Files, edit func(m map[string]any)) adapters.Files {
	var m map[string]any
	json.Unmarshal(f.Config, &m)
	edit(m)
	b, _ := json.Marshal(m)
	return adapters.Files{Config: b, Weights: f.Weights}
}

// retag rewrites the safetensors header of f.Weights through edit.
func retag(f adapters.Files, edit func(h map[string]map[string]any)) adapters.Files {
	n := binary.LittleEndian.Uint64(f.Weights[:8])
	var h map[string]map[string]any
	json.Unmarshal(f.Weights[8:8+n], &h)
	edit(h)
	hb, _ := json.Marshal(h)
	var out bytes.Buffer
	binary.Write(&out, binary.LittleEndian, uint64(len(hb)))
	out.Write(hb)
	out.Write(f.Weights[8+n:])
	return adapters.Files{Config: f.Config, Weights: out.Bytes()}
}

func TestValidationFailuresChangeNothing(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	r, _ := openDisk(t, t.TempDir(), base, nil, 4)
	good := testFiles(t, "tiny-llama-lora")
	if _, err := r.Put(ctx, "keep", good, false); err != nil {
		t.Fatal(err)
	}
	before := names(r.List(ctx))
	keyA := adapters.Key(0, "self_attn.q_proj", "A")
	for _, tc := range []struct {
		name, adapter string
		files         adapters.Files
		kind          error
		want          string
	}{
		{"bad name", "no/slash", good, adapters.ErrInvalid, "adapter name"},
		{"empty name", "", good, adapters.ErrInvalid, "adapter name"},
		{"long name", strings.Repeat("x", 65), good, adapters.ErrInvalid, "adapter name"},
		{"dora", "x", mutateConfig(good, func(m map[string]any) { m["use_dora"] = true }), adapters.ErrInvalid, "DoRA"},
		{"modules_to_save", "x", mutateConfig(good, func(m map[string]any) { m["modules_to_save"] = []string{"lm_head"} }), adapters.ErrInvalid, "modules_to_save"},
		{"embedding target", "x", mutateConfig(good, func(m map[string]any) { m["target_modules"] = []string{"q_proj", "embed_tokens"} }), adapters.ErrInvalid, "embed_tokens"},
		{"unknown module", "x", mutateConfig(good, func(m map[string]any) { m["target_modules"] = []string{"q_proj", "qkv_proj"} }), adapters.ErrInvalid, "qkv_proj"},
		{"rank over limit", "x", adapterstest.Random(base, 32, []string{"q_proj"}, 1, 0.1), adapters.ErrInvalid, "limit of 16"},
		{"too large", "x", adapters.Files{Config: good.Config, Weights: make([]byte, 2<<20)}, adapters.ErrTooLarge, "limit"},
		{"not safetensors", "x", adapters.Files{Config: good.Config, Weights: []byte("hello world, not a tensor file")}, adapters.ErrInvalid, "safetensors"},
		{"not json", "x", adapters.Files{Config: []byte("{"), Weights: good.Weights}, adapters.ErrInvalid, adapters.ConfigFile},
		{"wrong shape", "x", retag(good, func(h map[string]map[string]any) {
			h[keyA]["shape"] = []int{64, 4} // [in, r] instead of [r, in]
		}), adapters.ErrInvalid, "shape"},
		{"integer dtype", "x", retag(good, func(h map[string]map[string]any) { h[keyA]["dtype"] = "I32" }), adapters.ErrInvalid, "I32"},
		{"embedding lora tensor", "x", retag(good, func(h map[string]map[string]any) {
			h["base_model.model.model.embed_tokens.lora_embedding_A"] = h[keyA]
			delete(h, keyA)
		}), adapters.ErrInvalid, "embedding LoRA"},
		{"unknown tensor", "x", retag(good, func(h map[string]map[string]any) {
			h["base_model.model.model.layers.0.self_attn.rotary.lora_A.weight"] = h[keyA]
			delete(h, keyA)
		}), adapters.ErrInvalid, "rotary"},
		{"layer beyond the model", "x", retag(good, func(h map[string]map[string]any) {
			h[adapters.Key(7, "self_attn.q_proj", "A")] = h[keyA]
			delete(h, keyA)
		}), adapters.ErrInvalid, "layers.7"},
		{"base id", "tiny-llama", good, adapters.ErrInvalid, "base model"},
		{"exists", "keep", testFiles(t, "tiny-llama-lora-qv"), adapters.ErrExists, "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Put(ctx, tc.adapter, tc.files, false)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %v containing %q", err, tc.kind, tc.want)
			}
			if got := names(r.List(ctx)); !slices.Equal(got, before) {
				t.Errorf("list changed: %v -> %v", before, got)
			}
		})
	}
	// A failed replacement keeps the old version.
	if _, err := r.Put(ctx, "keep", mutateConfig(good, func(m map[string]any) { m["use_dora"] = true }), true); err == nil {
		t.Fatal("bad replacement accepted")
	}
	if got := names(r.List(ctx)); !slices.Equal(got, before) {
		t.Errorf("list changed after a bad replacement: %v", got)
	}
}

func TestDiskStoreCleansUp(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	dir := t.TempDir()
	r, _ := openDisk(t, dir, base, nil, 2)
	f := testFiles(t, "tiny-llama-lora")
	if _, err := r.Put(ctx, "a", f, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "b", f, false); err != nil { // same blobs, shared
		t.Fatal(err)
	}
	if err := r.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Acquire(ctx, "b"); err != nil {
		t.Fatalf("shared blob removed with a: %v", err)
	}
	// Leftovers of a crash: a temp file and an unreferenced blob.
	os.WriteFile(filepath.Join(dir, "tmp", "w-123"), []byte("partial"), 0o644)
	os.WriteFile(filepath.Join(dir, "blobs", strings.Repeat("0", 64)), []byte("orphan"), 0o644)
	r2, _ := openDisk(t, dir, base, nil, 2)
	if got := names(r2.List(ctx)); len(got) != 1 {
		t.Errorf("list %v", got)
	}
	tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if len(tmps) != 0 || len(blobs) != 2 {
		t.Errorf("after reopening: %d temp files, %d blobs (want 0, 2)", len(tmps), len(blobs))
	}
}

func TestWriteTar(t *testing.T) {
	f := testFiles(t, "tiny-llama-lora-qv")
	var b bytes.Buffer
	if err := adapters.WriteTar(&b, adapters.Record{Created: time.Now()}, f); err != nil {
		t.Fatal(err)
	}
	got := untar(t, b.Bytes())
	if !bytes.Equal(got[adapters.ConfigFile], f.Config) || !bytes.Equal(got[adapters.WeightsFile], f.Weights) {
		t.Error("tar does not hold the files")
	}
}
