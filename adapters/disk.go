package adapters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// DiskStore keeps adapters in a directory (DESIGN §2: <data>/adapters):
//
//	blobs/<sha256>     file contents, content-addressed
//	index/<name>.json  one record per adapter, pointing at its blobs
//	tmp/               files being written
//
// Every file is written to tmp/, synced and renamed into place, and the
// directory synced; an index record is written only after its blobs, so a
// crash at any point leaves the old or the new adapter, never a torn one.
// OpenDisk removes leftovers of a crash (temporary files, blobs no record
// references). One process owns a directory at a time.
type DiskStore struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	refs    map[string]int    // blob sha256 -> records referencing it
	records map[string]Record // by name
	version int64             // largest version given out
}

// OpenDisk opens (creating it if needed) the store in dir and cleans up
// what an interrupted write left behind.
func OpenDisk(dir string, log *slog.Logger) (*DiskStore, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &DiskStore{dir: dir, log: log, refs: map[string]int{}, records: map[string]Record{}}
	for _, d := range []string{"blobs", "index", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("adapters: disk store: %w", err)
		}
	}
	tmps, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		return nil, fmt.Errorf("adapters: disk store: %w", err)
	}
	for _, e := range tmps {
		os.Remove(filepath.Join(dir, "tmp", e.Name()))
	}
	idx, err := os.ReadDir(filepath.Join(dir, "index"))
	if err != nil {
		return nil, fmt.Errorf("adapters: disk store: %w", err)
	}
	for _, e := range idx {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || ValidateName(name) != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "index", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("adapters: disk store: %w", err)
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil || rec.Name != name {
			// Index records are renamed into place whole; one that does not
			// parse was not written by this store.
			log.Warn("adapters: ignoring an unreadable index record", "file", e.Name(), "err", err)
			continue
		}
		if !s.blobOK(rec.SHA256) || !s.blobOK(rec.ConfigSHA256) {
			log.Warn("adapters: ignoring a record whose files are missing", "name", name)
			continue
		}
		s.records[name] = rec
		s.refs[rec.SHA256]++
		s.refs[rec.ConfigSHA256]++
		s.version = max(s.version, rec.Version)
	}
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil, fmt.Errorf("adapters: disk store: %w", err)
	}
	for _, e := range blobs {
		if s.refs[e.Name()] == 0 {
			log.Info("adapters: removing an unreferenced blob", "sha256", e.Name())
			os.Remove(filepath.Join(dir, "blobs", e.Name()))
		}
	}
	return s, nil
}

func (s *DiskStore) blobOK(sum string) bool {
	fi, err := os.Stat(filepath.Join(s.dir, "blobs", sum))
	return err == nil && fi.Mode().IsRegular()
}

// Dir returns the store's directory.
func (s *DiskStore) Dir() string { return s.dir }

// Put implements Store.
func (s *DiskStore) Put(ctx context.Context, rec Record, f Files, replace bool) (Record, error) {
	if err := ValidateName(rec.Name); err != nil {
		return Record{}, err
	}
	if err := ctx.Err(); err != nil {
		return Record{}, fmt.Errorf("adapters: put %s: %w", rec.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.records[rec.Name]
	if had && !replace {
		return Record{}, exists(rec.Name)
	}
	rec.SHA256, rec.ConfigSHA256, rec.Size = Sum(f.Weights), Sum(f.Config), f.Size()
	for _, b := range []struct {
		sum  string
		data []byte
	}{{rec.SHA256, f.Weights}, {rec.ConfigSHA256, f.Config}} {
		if s.blobOK(b.sum) {
			continue
		}
		if err := s.writeAtomic(filepath.Join(s.dir, "blobs", b.sum), b.data); err != nil {
			return Record{}, err
		}
	}
	s.version++
	rec.Version = s.version
	js, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return Record{}, fmt.Errorf("adapters: put %s: %w", rec.Name, err)
	}
	// The record goes last: its rename is the moment the adapter changes.
	if err := s.writeAtomic(s.indexPath(rec.Name), js); err != nil {
		return Record{}, err
	}
	s.records[rec.Name] = rec
	s.refs[rec.SHA256]++
	s.refs[rec.ConfigSHA256]++
	if had {
		s.unref(old)
	}
	return rec, nil
}

func (s *DiskStore) indexPath(name string) string {
	return filepath.Join(s.dir, "index", name+".json")
}

// unref drops a record's blob references, removing blobs no record uses.
func (s *DiskStore) unref(rec Record) {
	for _, sum := range []string{rec.SHA256, rec.ConfigSHA256} {
		s.refs[sum]--
		if s.refs[sum] <= 0 {
			delete(s.refs, sum)
			if err := os.Remove(filepath.Join(s.dir, "blobs", sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("adapters: removing a blob", "sha256", sum, "err", err)
			}
		}
	}
}

// writeAtomic writes data to tmp/, syncs it, renames it to path and syncs
// path's directory.
func (s *DiskStore) writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "w-*")
	if err != nil {
		return fmt.Errorf("adapters: disk store: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("adapters: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("adapters: sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("adapters: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("adapters: rename into %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("adapters: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("adapters: sync %s: %w", dir, err)
	}
	return nil
}

// Get implements Store.
func (s *DiskStore) Get(_ context.Context, name string) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.records[name]
	if !ok {
		return Record{}, notFound(name)
	}
	return rec, nil
}

// Load implements Store.
func (s *DiskStore) Load(_ context.Context, name string) (Record, Files, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.records[name]
	if !ok {
		return Record{}, Files{}, notFound(name)
	}
	var f Files
	for _, b := range []struct {
		sum string
		dst *[]byte
	}{{rec.SHA256, &f.Weights}, {rec.ConfigSHA256, &f.Config}} {
		data, err := os.ReadFile(filepath.Join(s.dir, "blobs", b.sum))
		if err != nil {
			return Record{}, Files{}, fmt.Errorf("adapters: load %s: %w", name, err)
		}
		if got := Sum(data); got != b.sum {
			return Record{}, Files{}, fmt.Errorf("adapters: load %s: blob %s has sha256 %s (corrupted)", name, b.sum, got)
		}
		*b.dst = data
	}
	return rec, f, nil
}

// List implements Store.
func (s *DiskStore) List(context.Context) ([]Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Delete implements Store.
func (s *DiskStore) Delete(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.records[name]
	if !ok {
		return notFound(name)
	}
	if err := os.Remove(s.indexPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("adapters: delete %s: %w", name, err)
	}
	if err := syncDir(filepath.Join(s.dir, "index")); err != nil {
		return err
	}
	delete(s.records, name)
	s.unref(rec)
	return nil
}

// Close implements Store.
func (s *DiskStore) Close() error { return nil }
