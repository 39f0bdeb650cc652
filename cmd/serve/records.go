package main

import (
	"context"

	"github.com/sooserve/sooserve/internal/depend"
	"github.com/sooserve/sooserve/overlap"
)

// redisRecords is the overlap record store in Redis with its connectivity
// failures reported as depend.ErrUnavailable naming Redis, so the routes
// that read records answer 503 dependency_unavailable when Redis is down.
type redisRecords struct{ overlap.Store }

// Add implements overlap.Store.
func (r redisRecords) Add(ctx context.Context, rec overlap.Record) error {
	return depend.Classify("redis", r.Store.Add(ctx, rec))
}

// Recent implements overlap.Store.
func (r redisRecords) Recent(ctx context.Context, n int) ([]overlap.Record, error) {
	recs, err := r.Store.Recent(ctx, n)
	return recs, depend.Classify("redis", err)
}

// Get implements overlap.Store.
func (r redisRecords) Get(ctx context.Context, id string) (overlap.Record, error) {
	rec, err := r.Store.Get(ctx, id)
	return rec, depend.Classify("redis", err)
}

// Subscribe implements overlap.Store.
func (r redisRecords) Subscribe(ctx context.Context) (<-chan overlap.Record, error) {
	ch, err := r.Store.Subscribe(ctx)
	return ch, depend.Classify("redis", err)
}
