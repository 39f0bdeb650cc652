package adapters

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sooserve/sooserve/engine/lora"
	"github.com/sooserve/sooserve/engine/model"
)

// Options configures a Registry.
type Options struct {
	Base   *model.Config // the base model adapters are validated against
	BaseID string        // the base model's API id (an adapter may not take it)
	Store  Store
	// MaxResident is how many bound adapters stay in memory (least recently
	// used evicted beyond); default 16.
	MaxResident int
	Limits      Limits
	// Registerer receives the registry's metrics; nil registers none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// ResyncEvery is how often a registry on a shared (Watcher) store lists
	// the store as a safety net beside the events; default 30 s.
	ResyncEvery time.Duration
}

// Registry is the set of adapters one base model serves: the records of a
// Store, and a resident set of up to MaxResident adapters bound in memory
// and loaded on demand.
//
// Versions: Acquire returns the *lora.Adapter of the current version.
// Replacing an adapter binds the new version (on a DiskStore while the
// store is written) and, once the store holds it durably, swaps the pointer
// the next Acquire returns; requests that already hold the old pointer
// finish on it, so no request ever mixes two versions. Deleting drops every
// reference the registry holds.
type Registry struct {
	opts Options
	log  *slog.Logger

	names nameLocks // a name's store changes and reads, each with its update of records

	mu       sync.Mutex
	records  map[string]Record // the registry's view of the store
	resident map[string]*entry
	lru      *list.List // of *entry, most recent at the front
	loading  map[string]*loadCall
	gen      uint64 // bumped by every local change (see resync)

	loads     prometheus.Counter
	evictions prometheus.Counter
	failures  prometheus.Counter
	residentG prometheus.Gauge

	cancel context.CancelFunc
	done   chan struct{}
}

type entry struct {
	rec  Record
	a    *lora.Adapter
	elem *list.Element
}

type loadCall struct {
	version int64
	done    chan struct{}
	a       *lora.Adapter
	rec     Record
	err     error
}

// Open returns a registry over opts.Store, with the store's records listed.
// When the store is a Watcher the registry follows the changes other
// replicas make until Close.
func Open(ctx context.Context, opts Options) (*Registry, error) {
	if opts.Base == nil || opts.Store == nil {
		return nil, errors.New("adapters: registry needs a base model config and a store")
	}
	if opts.MaxResident <= 0 {
		opts.MaxResident = 16
	}
	if opts.ResyncEvery <= 0 {
		opts.ResyncEvery = 30 * time.Second
	}
	opts.Limits = opts.Limits.withDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{opts: opts, log: opts.Logger, records: map[string]Record{}, resident: map[string]*entry{},
		lru: list.New(), loading: map[string]*loadCall{}, done: make(chan struct{})}
	r.loads = prometheus.NewCounter(prometheus.CounterOpts{Name: "soo_adapter_loads_total", Help: "Adapters bound into memory (uploads, replacements and loads on demand)."})
	r.evictions = prometheus.NewCounter(prometheus.CounterOpts{Name: "soo_adapter_evictions_total", Help: "Adapters dropped from memory to stay within --max-adapters."})
	r.failures = prometheus.NewCounter(prometheus.CounterOpts{Name: "soo_adapter_load_failures_total", Help: "Stored adapters that failed to load."})
	r.residentG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "soo_adapters_resident", Help: "Adapters bound in memory."})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{r.loads, r.evictions, r.failures, r.residentG} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("adapters: metrics: %w", err)
			}
		}
		count := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "soo_adapters_stored", Help: "Adapters in the registry's store."}, func() float64 {
			r.mu.Lock()
			defer r.mu.Unlock()
			return float64(len(r.records))
		})
		if err := opts.Registerer.Register(count); err != nil {
			return nil, fmt.Errorf("adapters: metrics: %w", err)
		}
	}
	if err := r.resync(ctx); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if w, ok := opts.Store.(Watcher); ok {
		go r.follow(wctx, w)
	} else {
		close(r.done)
	}
	return r, nil
}

// Close stops following the store (it does not close the store).
func (r *Registry) Close() error {
	r.cancel()
	<-r.done
	return nil
}

// Limits returns the registry's limits.
func (r *Registry) Limits() Limits { return r.opts.Limits }

// BaseID returns the base model's API id.
func (r *Registry) BaseID() string { return r.opts.BaseID }

// Put validates an adapter against the base model, stores it and makes it
// resident. With replace false an existing name fails with ErrExists; with
// replace true the new version serves every request that starts after Put
// returns. A failed Put changes nothing.
//
// Put keeps f: the resident adapter may share f.Weights' memory (F32
// weights are not copied), so the caller must not modify f afterwards.
//
// On a store that allows it (DiskStore) the files are written and synced
// while the adapter is checked (after the checks of its name, sizes and
// configuration, which cost nothing): the new version becomes visible, in
// the store and here, only once it is both durable and valid.
func (r *Registry) Put(ctx context.Context, name string, f Files, replace bool) (Record, error) {
	if name == r.opts.BaseID {
		return Record{}, invalid("adapters: %q is the base model's id; choose another adapter name", name)
	}
	cfg, err := precheck(name, f, r.opts.Limits)
	if err != nil {
		return Record{}, err
	}
	defer r.names.lock(name)()
	if !replace {
		r.mu.Lock()
		_, had := r.records[name]
		r.mu.Unlock()
		if had {
			return Record{}, exists(name)
		}
	}
	var rec Record
	var a *lora.Adapter
	if st, ok := r.opts.Store.(putStager); ok {
		pending, err := st.beginPut(ctx, name, f, replace)
		if err != nil {
			return Record{}, err
		}
		defer pending.abort() // does nothing after commit
		p, err := planTensors(name, cfg, f, r.opts.Base)
		if err != nil {
			return Record{}, err
		}
		pending.describe(p.record(r.opts.BaseID, f))
		if a, err = p.bind(true); err != nil {
			return Record{}, err
		}
		if rec, err = pending.commit(); err != nil {
			return Record{}, err
		}
	} else {
		p, err := planTensors(name, cfg, f, r.opts.Base)
		if err != nil {
			return Record{}, err
		}
		if a, err = p.bind(true); err != nil {
			return Record{}, err
		}
		if rec, err = r.opts.Store.Put(ctx, p.record(r.opts.BaseID, f), f, replace); err != nil {
			return Record{}, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	if cur, ok := r.records[name]; ok && cur.Version > rec.Version {
		return rec, nil // a newer version arrived meanwhile
	}
	r.records[name] = rec
	r.install(rec, a)
	r.loads.Inc()
	r.log.Info("adapter stored", "name", name, "version", rec.Version, "rank", rec.Rank, "modules", rec.Modules, "bytes", rec.Size, "replace", replace)
	return rec, nil
}

// PutDir is Put with the files of a PEFT directory on this machine.
func (r *Registry) PutDir(ctx context.Context, name, dir string, replace bool) (Record, error) {
	f, err := ReadDir(dir, r.opts.Limits)
	if err != nil {
		return Record{}, err
	}
	return r.Put(ctx, name, f, replace)
}

// install makes a the resident adapter of rec.Name (r.mu held), evicting
// the least recently used beyond MaxResident.
func (r *Registry) install(rec Record, a *lora.Adapter) {
	if e, ok := r.resident[rec.Name]; ok {
		e.rec, e.a = rec, a
		r.lru.MoveToFront(e.elem)
		return
	}
	e := &entry{rec: rec, a: a}
	e.elem = r.lru.PushFront(e)
	r.resident[rec.Name] = e
	for r.lru.Len() > r.opts.MaxResident {
		old := r.lru.Back().Value.(*entry)
		r.drop(old.rec.Name)
		r.evictions.Inc()
		r.log.Debug("adapter evicted", "name", old.rec.Name)
	}
	r.residentG.Set(float64(r.lru.Len()))
}

// drop removes name from the resident set (r.mu held).
func (r *Registry) drop(name string) {
	if e, ok := r.resident[name]; ok {
		r.lru.Remove(e.elem)
		e.a, e.elem = nil, nil
		delete(r.resident, name)
	}
	r.residentG.Set(float64(r.lru.Len()))
}

// Get returns the record of name.
func (r *Registry) Get(ctx context.Context, name string) (Record, error) {
	r.mu.Lock()
	rec, ok := r.records[name]
	r.mu.Unlock()
	if ok {
		return rec, nil
	}
	return r.lookup(ctx, name)
}

// lookup asks the store for a name the registry does not know (another
// replica may have just added it) and remembers it.
func (r *Registry) lookup(ctx context.Context, name string) (Record, error) {
	if ValidateName(name) != nil {
		return Record{}, notFound(name)
	}
	defer r.names.lock(name)()
	rec, err := r.opts.Store.Get(ctx, name)
	if err != nil {
		return Record{}, err
	}
	r.mu.Lock()
	if cur, ok := r.records[name]; !ok || cur.Version < rec.Version {
		r.records[name] = rec
	}
	r.mu.Unlock()
	return rec, nil
}

// List returns the records, sorted by name.
func (r *Registry) List(context.Context) []Record {
	r.mu.Lock()
	out := make([]Record, 0, len(r.records))
	for _, rec := range r.records {
		out = append(out, rec)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Resident returns the names of the adapters in memory, most recently used
// first.
func (r *Registry) Resident() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for e := r.lru.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(*entry).rec.Name)
	}
	return out
}

// Acquire returns the current version of name bound in memory, loading it
// from the store when it is not resident. The returned adapter is immutable:
// a request keeps using it even if the adapter is replaced or deleted.
func (r *Registry) Acquire(ctx context.Context, name string) (*lora.Adapter, Record, error) {
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		rec, known := r.records[name]
		if e, ok := r.resident[name]; ok && known && e.rec.Version == rec.Version {
			r.lru.MoveToFront(e.elem)
			a := e.a
			r.mu.Unlock()
			return a, rec, nil
		}
		r.mu.Unlock()
		if !known {
			var err error
			if rec, err = r.lookup(ctx, name); err != nil {
				return nil, Record{}, err
			}
		}
		a, lrec, err := r.load(ctx, name, rec.Version)
		if err != nil {
			return nil, Record{}, err
		}
		if lrec.Version >= rec.Version || attempt >= 3 {
			return a, lrec, nil
		}
	}
}

// load binds the stored adapter name once for concurrent callers.
func (r *Registry) load(ctx context.Context, name string, version int64) (*lora.Adapter, Record, error) {
	r.mu.Lock()
	call, ok := r.loading[name]
	if !ok || call.version < version {
		call = &loadCall{version: version, done: make(chan struct{})}
		r.loading[name] = call
		go r.runLoad(name, call)
	}
	r.mu.Unlock()
	select {
	case <-call.done:
		return call.a, call.rec, call.err
	case <-ctx.Done():
		return nil, Record{}, fmt.Errorf("adapters: load %s: %w", name, ctx.Err())
	}
}

func (r *Registry) runLoad(name string, call *loadCall) {
	defer close(call.done)
	defer func() {
		r.mu.Lock()
		if r.loading[name] == call {
			delete(r.loading, name)
		}
		r.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	defer r.names.lock(name)()
	start := time.Now()
	rec, f, err := r.opts.Store.Load(ctx, name)
	if errors.Is(err, ErrNotFound) {
		r.mu.Lock()
		r.forget(name)
		r.mu.Unlock()
	}
	if err != nil {
		call.err = err
		return
	}
	// The store's files are this load's own: the adapter may share them.
	p, err := prepare(name, f, r.opts.Base, r.opts.Limits)
	var a *lora.Adapter
	if err == nil {
		a, err = p.bind(true)
	}
	if err != nil {
		r.failures.Inc()
		call.err = fmt.Errorf("adapters: stored adapter %q (version %d) does not load on this base model: %w", name, rec.Version, err)
		r.log.Error("adapter failed to load", "name", name, "version", rec.Version, "err", err)
		return
	}
	call.a, call.rec = a, rec
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.records[name]; !ok || cur.Version <= rec.Version {
		r.records[name] = rec
		r.install(rec, a)
		r.loads.Inc()
	}
	r.log.Debug("adapter loaded", "name", name, "version", rec.Version, "took", time.Since(start))
}

// forget drops name from the records and the resident set (r.mu held).
func (r *Registry) forget(name string) {
	delete(r.records, name)
	r.drop(name)
}

// Files returns the record and stored files of name (for downloads).
func (r *Registry) Files(ctx context.Context, name string) (Record, Files, error) {
	return r.opts.Store.Load(ctx, name)
}

// Delete removes name from the store and drops every reference the registry
// holds to it; requests running on it finish.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if ValidateName(name) != nil {
		return notFound(name)
	}
	defer r.names.lock(name)()
	err := r.opts.Store.Delete(ctx, name)
	r.mu.Lock()
	r.gen++
	if err == nil || errors.Is(err, ErrNotFound) {
		r.forget(name)
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.log.Info("adapter deleted", "name", name)
	return nil
}

// resync lists the store and brings the registry's view in line: new and
// changed records are taken, resident adapters of older versions dropped
// (they reload on demand), deleted ones forgotten.
func (r *Registry) resync(ctx context.Context) error {
	for range 5 {
		r.mu.Lock()
		gen := r.gen
		r.mu.Unlock()
		recs, err := r.opts.Store.List(ctx)
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.gen != gen {
			r.mu.Unlock()
			continue // a local change raced with the listing
		}
		seen := make(map[string]bool, len(recs))
		for _, rec := range recs {
			seen[rec.Name] = true
			if cur, ok := r.records[rec.Name]; !ok || cur.Version != rec.Version {
				r.records[rec.Name] = rec
				if e, ok := r.resident[rec.Name]; ok && e.rec.Version != rec.Version {
					r.drop(rec.Name)
				}
			}
		}
		for name := range r.records {
			if !seen[name] {
				r.forget(name)
			}
		}
		r.mu.Unlock()
		return nil
	}
	return errors.New("adapters: resync: the registry kept changing")
}

// follow applies the events of a shared store until ctx ends.
func (r *Registry) follow(ctx context.Context, w Watcher) {
	defer close(r.done)
	events := make(chan Event, 256)
	go func() {
		defer close(events)
		if err := w.Watch(ctx, func(ev Event) {
			select {
			case events <- ev:
			case <-ctx.Done():
			}
		}); err != nil {
			r.log.Error("adapters: watching the store stopped", "err", err)
		}
	}()
	tick := time.NewTicker(r.opts.ResyncEvery)
	defer tick.Stop()
	for {
		var ev Event
		select {
		case e, ok := <-events:
			if !ok {
				return
			}
			ev = e
		case <-tick.C:
			ev = Event{Op: OpResync}
		}
		r.apply(ctx, ev)
	}
}

// apply brings the registry in line with one event.
func (r *Registry) apply(ctx context.Context, ev Event) {
	switch ev.Op {
	case OpResync:
		if err := r.resync(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("adapters: resync failed", "err", err)
		}
	case OpDelete:
		r.mu.Lock()
		r.forget(ev.Name)
		r.mu.Unlock()
		r.log.Info("adapter deleted by another replica", "name", ev.Name)
	case OpPut, OpUpdate:
		r.mu.Lock()
		cur, known := r.records[ev.Name]
		_, wasResident := r.resident[ev.Name]
		r.mu.Unlock()
		if known && cur.Version >= ev.Version {
			return // our own change, or an old event
		}
		rec, err := r.opts.Store.Get(ctx, ev.Name)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				r.mu.Lock()
				r.forget(ev.Name)
				r.mu.Unlock()
			}
			return
		}
		r.mu.Lock()
		if cur, ok := r.records[ev.Name]; !ok || cur.Version < rec.Version {
			r.records[ev.Name] = rec
		}
		r.mu.Unlock()
		if wasResident {
			// Bind the new version now, so the next request does not wait;
			// until it is bound, requests wait for it (never the old one).
			go func() {
				lctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				if _, _, err := r.load(lctx, ev.Name, rec.Version); err != nil && ctx.Err() == nil {
					r.log.Warn("adapters: reloading a replaced adapter", "name", ev.Name, "err", err)
				}
			}()
		}
		r.log.Info("adapter changed by another replica", "name", ev.Name, "version", rec.Version, "op", ev.Op)
	}
}

// nameLocks serialises, per adapter name, the registry's store operations
// with its updates of the records they lead to. Without it a Delete could
// fall between a Put's (or a load's, or a lookup's) store write or read and
// its record update, and the registry would list an adapter the store no
// longer has.
type nameLocks struct {
	mu sync.Mutex
	m  map[string]*nameLock
}

type nameLock struct {
	mu   sync.Mutex
	refs int // holders and waiters
}

// lock locks name and returns the function that unlocks it.
func (l *nameLocks) lock(name string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*nameLock{}
	}
	nl := l.m[name]
	if nl == nil {
		nl = &nameLock{}
		l.m[name] = nl
	}
	nl.refs++
	l.mu.Unlock()
	nl.mu.Lock()
	return func() {
		nl.mu.Unlock()
		l.mu.Lock()
		if nl.refs--; nl.refs == 0 {
			delete(l.m, name)
		}
		l.mu.Unlock()
	}
}
