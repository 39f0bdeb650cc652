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
// A put writes the blobs the store lacks and the new index record to tmp/,
// renames the blobs into blobs/, and syncs the blobs, blobs/ and the
// record's temporary file, all at once; only when all of that is durable is
// the record renamed into index/ (the moment the adapter changes) and index/
// synced, after which Put returns. So a crash at any point leaves the old or
// the new adapter, never a torn one, and a record never names a blob that is
// not durable. A blob already referenced by a record is durable and never
// rewritten. OpenDisk removes leftovers of a crash (temporary files, blobs no
// record references). One process owns a directory at a time.
type DiskStore struct {
	dir string
	log *slog.Logger

	// wmu serialises changes (puts, deletes), from their first write to
	// their last, so a put decides which blobs to write knowing no other
	// change runs.
	wmu sync.Mutex
	// hook, when set (tests), is called after each step of a put (see
	// write, commit, removeBlobs) with the step's name; an error fails the
	// put there.
	hook func(step string) error

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
	p, err := s.beginPut(ctx, rec.Name, f, replace)
	if err != nil {
		return Record{}, err
	}
	p.describe(rec)
	return p.commit()
}

// pendingPut is a put whose files are being written in the background
// while the caller checks the adapter: the caller describes it (its record,
// when known), then commits (the adapter changes) or aborts (nothing
// changes).
type pendingPut interface {
	// describe gives the record to store (the store fills in the sums, the
	// size and the version); it is called once, before commit.
	describe(rec Record)
	// commit waits for the writes and makes the record visible; it returns
	// once the change is durable.
	commit() (Record, error)
	// abort undoes the writes; after commit it does nothing.
	abort()
}

// putStager is a Store that writes an adapter's files while the caller
// still checks them (DiskStore).
type putStager interface {
	beginPut(ctx context.Context, name string, f Files, replace bool) (pendingPut, error)
}

// diskPut is a DiskStore put in progress.
type diskPut struct {
	s       *DiskStore
	name    string
	f       Files
	version int64
	old     Record // the record it replaces, when had
	had     bool

	recs      chan Record   // describe's record, for write
	described bool          // describe was called
	quit      chan struct{} // closed by abort, so write stops waiting for a record
	done      chan struct{} // closed when write returns

	// Set by write, read after done.
	rec     Record   // the record, complete
	written []string // blobs renamed into blobs/ (none referenced before)
	index   string   // the record's temporary file
	err     error

	ended bool // committed or aborted (wmu released)
}

// errAborted ends a write whose put was aborted before it was described.
var errAborted = errors.New("adapters: put aborted")

// beginPut takes the store's write lock, gives the put its version and
// starts writing f (see write). The lock is held until commit or abort.
func (s *DiskStore) beginPut(ctx context.Context, name string, f Files, replace bool) (pendingPut, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("adapters: put %s: %w", name, err)
	}
	s.wmu.Lock()
	s.mu.Lock()
	old, had := s.records[name]
	if had && !replace {
		s.mu.Unlock()
		s.wmu.Unlock()
		return nil, exists(name)
	}
	s.version++
	p := &diskPut{s: s, name: name, f: f, version: s.version, old: old, had: had,
		recs: make(chan Record, 1), quit: make(chan struct{}), done: make(chan struct{})}
	s.mu.Unlock()
	go func() {
		defer close(p.done)
		p.err = p.write()
	}()
	return p, nil
}

// describe implements pendingPut.
func (p *diskPut) describe(rec Record) {
	if !p.described {
		p.described = true
		p.recs <- rec
	}
}

// write writes the blobs the store lacks and, once described, the record
// to tmp/, renames the blobs into blobs/ and syncs them, blobs/ and the
// record's temporary file, as much as possible at once: the weights' data is
// synced while their sha256 is computed, the rest together once the names
// and the record are known. On return without error every blob the record
// names is durable, and so is the record's temporary file (p.index). On
// error it removes its temporary files (the blobs it renamed are abort's).
// Steps, for the test hook: "write", "rename" and "sync" of "weights" and
// "config", "write index", "sync index temp", "sync blobs/".
func (p *diskPut) write() (err error) {
	s, f := p.s, p.f
	var open []*os.File // closed on return
	var temps []string  // removed on error
	var bg sync.WaitGroup
	defer func() {
		bg.Wait()
		for _, fh := range open {
			fh.Close()
		}
		if err != nil {
			for _, t := range temps {
				os.Remove(t)
			}
			p.index = ""
		}
	}()
	create := func(what string, data []byte) (*os.File, error) {
		fh, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "w-*")
		if err != nil {
			return nil, fmt.Errorf("adapters: put %s: %w", p.name, err)
		}
		open, temps = append(open, fh), append(temps, fh.Name())
		if _, err := fh.Write(data); err != nil {
			return nil, fmt.Errorf("adapters: put %s: write %s: %w", p.name, what, err)
		}
		return fh, s.step("write " + what)
	}
	syncFile := func(what string, fh *os.File) error {
		if err := fh.Sync(); err != nil {
			return fmt.Errorf("adapters: put %s: sync %s: %w", p.name, what, err)
		}
		return s.step("sync " + what)
	}

	var wsum string
	summed := make(chan struct{})
	bg.Go(func() {
		defer close(summed)
		wsum = Sum(f.Weights)
	})
	wtmp, err := create("weights", f.Weights)
	if err != nil {
		return err
	}
	// Written speculatively: if the store holds these weights already, the
	// sync was for nothing, but in the usual case it overlaps the sum.
	var wsyncErr error
	wsynced := make(chan struct{})
	bg.Go(func() {
		defer close(wsynced)
		wsyncErr = syncFile("weights", wtmp)
	})
	csum := Sum(f.Config)
	<-summed
	// A blob a record references is durable already (wmu keeps it so).
	s.mu.Lock()
	needW, needC := s.refs[wsum] == 0, s.refs[csum] == 0 && csum != wsum
	s.mu.Unlock()
	var syncs []func() error
	if needC {
		ctmp, err := create("config", f.Config)
		if err != nil {
			return err
		}
		if err := p.renameBlob("config", ctmp.Name(), csum); err != nil {
			return err
		}
		syncs = append(syncs, func() error { return syncFile("config", ctmp) })
	}
	if needW {
		if err := p.renameBlob("weights", wtmp.Name(), wsum); err != nil {
			return err
		}
	} else if err := os.Remove(wtmp.Name()); err != nil {
		return fmt.Errorf("adapters: put %s: %w", p.name, err)
	}
	var rec Record
	select {
	case rec = <-p.recs:
	case <-p.quit:
		return errAborted
	}
	rec.Name, rec.Version = p.name, p.version
	rec.SHA256, rec.ConfigSHA256, rec.Size = wsum, csum, f.Size()
	p.rec = rec
	js, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("adapters: put %s: %w", p.name, err)
	}
	itmp, err := create("index", js)
	if err != nil {
		return err
	}
	p.index = itmp.Name()
	syncs = append(syncs, func() error { return syncFile("index temp", itmp) })
	if needW || needC {
		blobs := filepath.Join(s.dir, "blobs")
		syncs = append(syncs, func() error {
			if err := syncDir(blobs); err != nil {
				return err
			}
			return s.step("sync blobs/")
		})
	}
	// The remaining syncs at once: file systems commit concurrent syncs
	// together (ext4's journal, for one), where one after the other each
	// waits for a commit of its own.
	errs := make([]error, len(syncs)+1)
	for i, fn := range syncs {
		bg.Go(func() { errs[i] = fn() })
	}
	bg.Wait()
	<-wsynced
	if needW {
		errs[len(syncs)] = wsyncErr
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, fh := range open {
		if err := fh.Close(); err != nil {
			return fmt.Errorf("adapters: put %s: %w", p.name, err)
		}
	}
	open = nil
	return nil
}

// renameBlob moves the temporary file tmp to blobs/<sum>. The blob is not
// durable yet, but no record references it: a crash leaves an unreferenced
// blob, which OpenDisk removes.
func (p *diskPut) renameBlob(what, tmp, sum string) error {
	dst := filepath.Join(p.s.dir, "blobs", sum)
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("adapters: put %s: rename into %s: %w", p.name, dst, err)
	}
	p.written = append(p.written, sum)
	return p.s.step("rename " + what)
}

// step reports a finished step to the test hook.
func (s *DiskStore) step(name string) error {
	if s.hook == nil {
		return nil
	}
	return s.hook(name)
}

// commit implements pendingPut: once every blob is durable it renames the
// record into index/ and syncs index/. The blobs only the replaced version
// used are removed after commit returns, the write lock held until then.
func (p *diskPut) commit() (Record, error) {
	if p.ended {
		return Record{}, fmt.Errorf("adapters: put %s: already ended", p.name)
	}
	if !p.described {
		p.abort()
		return Record{}, fmt.Errorf("adapters: put %s: committed without a record", p.name)
	}
	<-p.done
	s := p.s
	if p.err != nil {
		p.abort()
		return Record{}, p.err
	}
	p.ended = true
	path := s.indexPath(p.name)
	if err := os.Rename(p.index, path); err != nil {
		p.removeWritten()
		os.Remove(p.index)
		s.wmu.Unlock()
		return Record{}, fmt.Errorf("adapters: put %s: rename into %s: %w", p.name, path, err)
	}
	if err := s.step("rename index"); err != nil {
		s.wmu.Unlock()
		return Record{}, err
	}
	// From here the new record is what the directory holds (durably or
	// not): the maps follow it even when the sync fails.
	err := syncDir(filepath.Join(s.dir, "index"))
	if err != nil {
		err = fmt.Errorf("adapters: put %s: %w", p.name, err)
	} else {
		err = s.step("sync index/")
	}
	s.mu.Lock()
	s.records[p.name] = p.rec
	s.refs[p.rec.SHA256]++
	s.refs[p.rec.ConfigSHA256]++
	var unused []string
	if p.had {
		unused = s.unref(p.old)
	}
	s.mu.Unlock()
	if len(unused) == 0 {
		s.wmu.Unlock()
	} else {
		go func() {
			defer s.wmu.Unlock()
			s.removeBlobs(unused)
		}()
	}
	if err != nil {
		return Record{}, err
	}
	return p.rec, nil
}

// abort implements pendingPut: it removes what the put wrote.
func (p *diskPut) abort() {
	if p.ended {
		return
	}
	p.ended = true
	close(p.quit)
	<-p.done
	defer p.s.wmu.Unlock()
	p.removeWritten()
	if p.index != "" {
		os.Remove(p.index)
	}
}

// removeWritten removes the blobs the put renamed into blobs/ (wmu held:
// still no record references them).
func (p *diskPut) removeWritten() {
	for _, sum := range p.written {
		if err := os.Remove(filepath.Join(p.s.dir, "blobs", sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.s.log.Warn("adapters: removing a blob of a failed put", "sha256", sum, "err", err)
		}
	}
	p.written = nil
}

func (s *DiskStore) indexPath(name string) string {
	return filepath.Join(s.dir, "index", name+".json")
}

// unref drops a record's blob references and returns the blobs no record
// uses any more, for removeBlobs (mu held).
func (s *DiskStore) unref(rec Record) []string {
	var unused []string
	for _, sum := range []string{rec.SHA256, rec.ConfigSHA256} {
		s.refs[sum]--
		if s.refs[sum] <= 0 {
			delete(s.refs, sum)
			unused = append(unused, sum)
		}
	}
	return unused
}

// removeBlobs removes the blobs unref returned (wmu held, so no put writes
// them again meanwhile; no record references them, so no Load reads them).
func (s *DiskStore) removeBlobs(sums []string) {
	for _, sum := range sums {
		if err := os.Remove(filepath.Join(s.dir, "blobs", sum)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("adapters: removing a blob", "sha256", sum, "err", err)
		}
		_ = s.step("remove blob " + sum) // nothing to fail any more
	}
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
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	rec, ok := s.records[name]
	s.mu.Unlock()
	if !ok {
		return notFound(name)
	}
	if err := os.Remove(s.indexPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("adapters: delete %s: %w", name, err)
	}
	if err := syncDir(filepath.Join(s.dir, "index")); err != nil {
		return err
	}
	// Only now, the record being durably gone, may its blobs go.
	s.mu.Lock()
	delete(s.records, name)
	unused := s.unref(rec)
	s.mu.Unlock()
	s.removeBlobs(unused)
	return nil
}

// Close implements Store: it waits for a put's removal of blobs no record
// uses any more.
func (s *DiskStore) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return nil
}
