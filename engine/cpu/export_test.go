package cpu

import "github.com/sooserve/sooserve/engine"

// KVCapacity returns how many positions s's first layer's V cache has room
// for, and its transposed K cache.
func KVCapacity(s engine.Sequence) (v, k int) {
	q := s.(*Sequence)
	kv := q.ex.cfg.KVDim()
	return cap(q.v[0]) / kv, len(q.kt[0]) / kv
}
