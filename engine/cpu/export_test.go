package cpu

import "github.com/sooserve/sooserve/engine"

// KVCapacity returns how many positions s's first layer's K cache has room for.
func KVCapacity(s engine.Sequence) int {
	q := s.(*Sequence)
	return cap(q.k[0]) / q.ex.cfg.KVDim()
}
