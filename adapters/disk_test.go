package adapters_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/adapters/adapterstest"
	"github.com/sooserve/sooserve/engine/model"
)

// snapshotDir copies the store directory src to dst as a process killed at
// this moment would leave it. Files may come and go meanwhile (the put's
// other goroutines run on): whatever can be read is copied.
func snapshotDir(t *testing.T, src, dst string) {
	t.Helper()
	for _, sub := range []string{"blobs", "index", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dst, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(filepath.Join(src, sub))
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(src, sub, e.Name()))
			if err != nil {
				continue
			}
			if err := os.WriteFile(filepath.Join(dst, sub, e.Name()), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// storeState reopens the store in dir and returns its adapters (name ->
// weights sha256), after checking that every one loads, matches its sums and
// validates, and that no temporary file or unreferenced blob is left.
func storeState(t *testing.T, dir string, base *model.Config) map[string]string {
	t.Helper()
	ctx := context.Background()
	st, err := adapters.OpenDisk(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	refs := map[string]bool{}
	for _, rec := range recs {
		got, f, err := st.Load(ctx, rec.Name)
		if err != nil {
			t.Fatalf("%s: %s does not load: %v", dir, rec.Name, err)
		}
		if adapters.Sum(f.Weights) != got.SHA256 || adapters.Sum(f.Config) != got.ConfigSHA256 {
			t.Fatalf("%s: %s does not match its record", dir, rec.Name)
		}
		if _, _, err := adapters.Validate(rec.Name, f, base, adapters.Limits{}); err != nil {
			t.Fatalf("%s: %s is torn: %v", dir, rec.Name, err)
		}
		state[rec.Name] = rec.SHA256
		refs[rec.SHA256], refs[rec.ConfigSHA256] = true, true
	}
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	if len(blobs) != len(refs) || len(tmps) != 0 {
		t.Errorf("%s: %d blobs referenced; %d blobs, %d temporary files on disk", dir, len(refs), len(blobs), len(tmps))
	}
	return state
}

// withNaN returns f with its first weight set to NaN (a file that passes
// every check but the values').
func withNaN(f adapters.Files) adapters.Files {
	w := slices.Clone(f.Weights)
	n := binary.LittleEndian.Uint64(w[:8])
	binary.LittleEndian.PutUint32(w[8+n:], 0x7fc00000)
	return adapters.Files{Config: f.Config, Weights: w}
}

// TestDiskPutSteps follows every step of a series of puts and deletes
// through a registry on a DiskStore. At every step it takes a copy of the
// directory, as a crash there would leave it, and checks that the copy
// reopens to the adapters as they were before the operation or after it,
// whole (the switch being the rename of the index record). It checks the
// order of the steps that makes this hold across a power loss too: every
// blob the new record names, and blobs/, are synced before the record is
// renamed into index/; index/ is synced before Put returns; the replaced
// version's blobs are removed only after that.
func TestDiskPutSteps(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	dir := t.TempDir()
	snaps := t.TempDir()
	st, r := openDiskRegistry(t, base, dir)

	var mu sync.Mutex
	var steps []string
	var snapDirs []string
	nsnap := 0
	adapters.SetDiskHook(st, func(step string) error {
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, step)
		nsnap++
		d := filepath.Join(snaps, fmt.Sprint(nsnap))
		snapshotDir(t, dir, d)
		snapDirs = append(snapDirs, d)
		return nil
	})
	f1 := adapterstest.Random(base, 4, []string{"q_proj", "v_proj"}, 1, 0.1)
	f2 := adapterstest.Random(base, 4, []string{"q_proj", "v_proj"}, 2, 0.1) // f1's config
	f3 := adapterstest.Random(base, 8, []string{"q_proj", "v_proj", "down_proj"}, 3, 0.1)
	type op struct {
		what    string
		name    string
		f       adapters.Files
		del     bool
		wantErr bool
	}
	ops := []op{
		{what: "new adapter", name: "a", f: f1},
		{what: "replacement (config blob shared)", name: "a", f: f2},
		{what: "another name, same files (no blob written)", name: "b", f: f2},
		{what: "non-finite replacement (written, then undone)", name: "a", f: withNaN(f3), wantErr: true},
		{what: "delete", name: "a", del: true},
		{what: "new adapter, other config", name: "a", f: f3},
		{what: "replacement dropping both blobs", name: "a", f: f1},
	}
	want := map[string]string{}
	for _, o := range ops {
		before := maps.Clone(want)
		mu.Lock()
		steps, snapDirs = nil, nil
		mu.Unlock()
		var err error
		if o.del {
			err = r.Delete(ctx, o.name)
			delete(want, o.name)
		} else {
			_, err = r.Put(ctx, o.name, o.f, true)
			if !o.wantErr {
				want[o.name] = adapters.Sum(o.f.Weights)
			}
		}
		if (err != nil) != o.wantErr {
			t.Fatalf("%s: error %v", o.what, err)
		}
		st.Close() // waits for the removal of unused blobs
		mu.Lock()
		got, dirs := slices.Clone(steps), slices.Clone(snapDirs)
		mu.Unlock()
		t.Logf("%s: %s", o.what, strings.Join(got, ", "))

		// Every snapshot is the state before or, from the record's rename
		// on, the state after.
		switched := false
		for i, d := range dirs {
			if got[i] == "rename index" {
				switched = true
			}
			wantState := before
			if switched {
				wantState = want
			}
			if s := storeState(t, d, base); !maps.Equal(s, wantState) {
				t.Errorf("%s: killed after %q: the store reopens to %v, want %v", o.what, got[i], s, wantState)
			}
		}
		if s := storeState(t, dir, base); !maps.Equal(s, want) {
			t.Errorf("%s: the store reopens to %v, want %v", o.what, s, want)
		}
		if o.del {
			continue
		}

		// The order of the steps.
		at := func(step string) int { return slices.Index(got, step) }
		rename := at("rename index")
		if o.wantErr {
			if rename >= 0 {
				t.Errorf("%s: a failed put renamed its record", o.what)
			}
			continue
		}
		if rename < 0 || at("sync index/") < rename || at("sync index temp") > rename || at("sync index temp") < 0 {
			t.Errorf("%s: the record is renamed without being synced first, or index/ is not synced after", o.what)
		}
		for _, blob := range []string{"weights", "config"} {
			rb := at("rename " + blob)
			if rb < 0 {
				continue
			}
			if s := at("sync " + blob); s < 0 || s > rename {
				t.Errorf("%s: %s not synced before the record's rename", o.what, blob)
			}
			if s := at("sync blobs/"); s < rb || s > rename {
				t.Errorf("%s: blobs/ not synced between the %s blob's rename and the record's", o.what, blob)
			}
		}
		for i, step := range got {
			if strings.HasPrefix(step, "remove blob") && i < at("sync index/") {
				t.Errorf("%s: a blob of the replaced version removed before the new record was durable", o.what)
			}
		}
	}
	if n := len(want); n != 2 {
		t.Fatalf("%d adapters at the end, want 2", n)
	}
}

// TestDiskPutFailures fails a put at each of its steps (as a failing disk
// would) and checks that the store, in memory and reopened, still holds the
// old version and nothing else, and takes the next put.
func TestDiskPutFailures(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	old := adapterstest.Random(base, 4, []string{"q_proj", "v_proj"}, 1, 0.1)
	for _, step := range []string{"write weights", "sync weights", "rename weights", "write config", "rename config",
		"sync config", "write index", "sync index temp", "sync blobs/"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			st, r := openDiskRegistry(t, base, dir)
			if _, err := r.Put(ctx, "a", old, false); err != nil {
				t.Fatal(err)
			}
			boom := errors.New("boom")
			adapters.SetDiskHook(st, func(s string) error {
				if s == step {
					return boom
				}
				return nil
			})
			// Another config, so that both blobs are written.
			next := adapterstest.Random(base, 8, []string{"q_proj"}, 2, 0.1)
			if _, err := r.Put(ctx, "a", next, true); !errors.Is(err, boom) {
				t.Fatalf("put failing at %q: %v", step, err)
			}
			a, rec, err := r.Acquire(ctx, "a")
			if err != nil || a == nil || rec.SHA256 != adapters.Sum(old.Weights) {
				t.Fatalf("after the failure: %v, %+v", err, rec)
			}
			if _, f, err := st.Load(ctx, "a"); err != nil || adapters.Sum(f.Weights) != adapters.Sum(old.Weights) {
				t.Fatalf("the store lost the old version: %v", err)
			}
			st.Close()
			if s := storeState(t, dir, base); s["a"] != adapters.Sum(old.Weights) || len(s) != 1 {
				t.Errorf("reopened: %v", s)
			}
			adapters.SetDiskHook(st, nil)
			if _, err := r.Put(ctx, "a", next, true); err != nil {
				t.Fatalf("the next put: %v", err)
			}
			st.Close()
			if s := storeState(t, dir, base); s["a"] != adapters.Sum(next.Weights) {
				t.Errorf("reopened after the next put: %v", s)
			}
		})
	}
}

// TestDiskConcurrent puts, replaces, deletes, loads and acquires adapters
// from several goroutines (run with -race), then checks the store reopens
// consistent and agrees with the registry.
func TestDiskConcurrent(t *testing.T) {
	ctx := context.Background()
	base := tinyLlama(t)
	dir := t.TempDir()
	r, st := openDisk(t, dir, base, nil, 2)
	var files []adapters.Files
	for i := range 4 {
		files = append(files, adapterstest.Random(base, 4, []string{"q_proj", "v_proj"}, uint64(i%3), 0.1))
	}
	files = append(files, withNaN(files[0]))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 12 {
				name := fmt.Sprintf("a%d", (g+i)%3)
				switch i % 4 {
				case 0, 1:
					_, err := r.Put(ctx, name, files[(g+i)%len(files)], true)
					if err != nil && !errors.Is(err, adapters.ErrInvalid) {
						t.Error(err)
					}
				case 2:
					if _, _, err := r.Acquire(ctx, name); err != nil && !errors.Is(err, adapters.ErrNotFound) {
						t.Error(err)
					}
					if _, _, err := st.Load(ctx, name); err != nil && !errors.Is(err, adapters.ErrNotFound) {
						t.Error(err)
					}
				case 3:
					if err := r.Delete(ctx, name); err != nil && !errors.Is(err, adapters.ErrNotFound) {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	st.Close()
	state := storeState(t, dir, base)
	for _, rec := range r.List(ctx) {
		if state[rec.Name] != rec.SHA256 {
			t.Errorf("registry has %s@%s, the store %s", rec.Name, rec.SHA256[:8], state[rec.Name])
		}
	}
	if len(state) != len(r.List(ctx)) {
		t.Errorf("registry lists %d adapters, the store %d", len(r.List(ctx)), len(state))
	}
}

// openDiskRegistry opens a disk store in dir and a registry over it for the
// tiny Llama base; the registry is closed when the test ends.
func openDiskRegistry(t *testing.T, base *model.Config, dir string) (*adapters.DiskStore, *adapters.Registry) {
	t.Helper()
	st, err := adapters.OpenDisk(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := adapters.Open(context.Background(), adapters.Options{Base: base, BaseID: "tiny-llama", Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return st, r
}
