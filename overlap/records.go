package overlap

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Record is the overlap measured for one request, as kept by a Store and
// served by GET /v1/overlap/requests and /v1/overlap/stream.
type Record struct {
	// ID is the request id (the completion's id, or the overlap request's).
	ID string `json:"id"`
	// Model is the base model's id; Adapter the adapter's name, "" for the base.
	Model   string `json:"model"`
	Adapter string `json:"adapter,omitempty"`
	// Layers are the measured layers, in result order.
	Layers []int `json:"layers"`
	// Result is the overlap.
	Result *Result `json:"result"`
	// Time is when the measurement finished.
	Time time.Time `json:"time"`
}

// NewRecord fills a Record's Layers from r (each layer once, in order).
func NewRecord(id, model, adapter string, r *Result, t time.Time) Record {
	var layers []int
	seen := map[int]bool{}
	for _, l := range r.Layers {
		if !seen[l.Layer] {
			seen[l.Layer] = true
			layers = append(layers, l.Layer)
		}
	}
	return Record{ID: id, Model: model, Adapter: adapter, Layers: layers, Result: r, Time: t}
}

// ErrNotFound is returned by Store.Get for an unknown (or evicted) id.
var ErrNotFound = errors.New("overlap: no such record")

// Store keeps recent per-request records. Ring is the in-memory store; a
// Redis-backed one (a capped stream, XADD MAXLEN ~ N, subscribers via XREAD
// BLOCK) implements the same interface.
type Store interface {
	// Add stores a record and delivers it to current subscribers.
	Add(ctx context.Context, r Record) error
	// Recent returns up to n records, newest first (n <= 0: all kept).
	Recent(ctx context.Context, n int) ([]Record, error)
	// Get returns the record with the given id, or ErrNotFound.
	Get(ctx context.Context, id string) (Record, error)
	// Subscribe delivers every record added after it returns, until ctx is
	// done; then the channel is closed. A subscriber that falls more than its
	// buffer behind misses records rather than slowing Add down.
	Subscribe(ctx context.Context) (<-chan Record, error)
}

// DefaultRingSize is the capacity of NewRing(0).
const DefaultRingSize = 1024

// subscriberBuffer is the channel buffer of a Ring subscriber.
const subscriberBuffer = 64

// Ring is a bounded in-memory Store: it keeps the last Cap records and
// forgets the oldest. It is safe for concurrent use.
type Ring struct {
	mu      sync.Mutex
	buf     []Record
	next    int // where the next record goes
	n       int // records kept
	byID    map[string]int
	subs    map[chan Record]struct{}
	dropped uint64
}

// NewRing returns a ring that keeps size records (DefaultRingSize if size <= 0).
func NewRing(size int) *Ring {
	if size <= 0 {
		size = DefaultRingSize
	}
	return &Ring{buf: make([]Record, size), byID: map[string]int{}, subs: map[chan Record]struct{}{}}
}

// Cap returns the ring's capacity.
func (r *Ring) Cap() int { return len(r.buf) }

// Dropped returns how many deliveries to slow subscribers were skipped.
func (r *Ring) Dropped() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

// Add stores rec, evicting the oldest record when full. A record whose id is
// already kept replaces it for Get; both stay in Recent until evicted.
func (r *Ring) Add(_ context.Context, rec Record) error {
	if rec.ID == "" {
		return errors.New("overlap: record without an id")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == len(r.buf) {
		old := r.buf[r.next]
		if i, ok := r.byID[old.ID]; ok && i == r.next {
			delete(r.byID, old.ID)
		}
	} else {
		r.n++
	}
	r.buf[r.next] = rec
	r.byID[rec.ID] = r.next
	r.next = (r.next + 1) % len(r.buf)
	for ch := range r.subs {
		select {
		case ch <- rec:
		default:
			r.dropped++
		}
	}
	return nil
}

// Recent returns up to n records, newest first.
func (r *Ring) Recent(_ context.Context, n int) ([]Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n <= 0 || n > r.n {
		n = r.n
	}
	out := make([]Record, n)
	for i := range n {
		out[i] = r.buf[(r.next-1-i+2*len(r.buf))%len(r.buf)]
	}
	return out, nil
}

// Get returns the record with the given id.
func (r *Ring) Get(_ context.Context, id string) (Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.byID[id]
	if !ok {
		return Record{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return r.buf[i], nil
}

// Subscribe returns a channel of records added from now on; it is closed
// when ctx is done.
func (r *Ring) Subscribe(ctx context.Context) (<-chan Record, error) {
	ch := make(chan Record, subscriberBuffer)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		delete(r.subs, ch)
		close(ch)
		r.mu.Unlock()
	}()
	return ch, nil
}

// Metrics are the overlap's Prometheus histograms: soo_overlap_mse and
// soo_overlap_cosine, labelled by adapter ("" is the base model, shown as
// "base"), layer and site.
type Metrics struct {
	MSE    *prometheus.HistogramVec
	Cosine *prometheus.HistogramVec
}

// MSEBuckets are the MSE histogram's upper bounds: decades from 1e-6 to 1e4.
var MSEBuckets = prometheus.ExponentialBuckets(1e-6, 10, 11)

// CosineBuckets are the cosine histogram's upper bounds: -0.9 to 1 by 0.1.
var CosineBuckets = prometheus.LinearBuckets(-0.9, 0.1, 20)

// NewMetrics creates the histograms and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	labels := []string{"adapter", "layer", "site"}
	m := &Metrics{
		MSE: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "soo_overlap_mse", Help: "Self/other overlap: MSE between pooled self and other activations, per request.",
			Buckets: MSEBuckets,
		}, labels),
		Cosine: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "soo_overlap_cosine", Help: "Self/other overlap: cosine similarity of pooled self and other activations, per request.",
			Buckets: CosineBuckets,
		}, labels),
	}
	for _, c := range []prometheus.Collector{m.MSE, m.Cosine} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("overlap: register metrics: %w", err)
		}
	}
	return m, nil
}

// Observe records every (layer, site) of r under adapter ("" for the base).
// A value that is not finite is not observed: a NaN would make the
// histogram's sum NaN for good.
func (m *Metrics) Observe(adapter string, r *Result) {
	if adapter == "" {
		adapter = "base"
	}
	for _, l := range r.Layers {
		layer := strconv.Itoa(l.Layer)
		if finite(l.MSE) {
			m.MSE.WithLabelValues(adapter, layer, l.Site).Observe(l.MSE)
		}
		if finite(l.Cosine) {
			m.Cosine.WithLabelValues(adapter, layer, l.Site).Observe(l.Cosine)
		}
	}
}

// Recorder is what a request handler calls once an overlap is measured: it
// stores the record and updates the histograms. Either part may be nil.
type Recorder struct {
	Store   Store
	Metrics *Metrics
}

// Record stores rec and observes its result.
func (rc *Recorder) Record(ctx context.Context, rec Record) error {
	if rc == nil || rec.Result == nil {
		return nil
	}
	if rc.Metrics != nil {
		rc.Metrics.Observe(rec.Adapter, rec.Result)
	}
	if rc.Store != nil {
		if err := rc.Store.Add(ctx, rec); err != nil {
			return fmt.Errorf("overlap: store record %s: %w", rec.ID, err)
		}
	}
	return nil
}
