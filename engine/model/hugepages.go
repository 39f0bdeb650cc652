package model

import (
	"fmt"
	"unsafe"

	"github.com/sooserve/sooserve/internal/hugepages"
)

// MoveToHugePages copies every weight matrix into one region of
// transparent-huge-page memory (internal/hugepages) and points the model at
// the copies, so a decode step's weight streams cross a page boundary every
// 2 MB instead of every 4 KB. It returns the bytes moved. Close frees the
// region (after the model's file mappings); the old memory is released by the
// garbage collector or, for mapped files, by Close as before. Norms, biases
// and adapters stay where they are.
func (m *Model) MoveToHugePages() (int64, error) {
	mats := []*Matrix{&m.Embed}
	for l := range m.Layers {
		for p := range m.Layers[l].Proj {
			if m.Layers[l].Proj[p].W.Rows > 0 {
				mats = append(mats, &m.Layers[l].Proj[p].W)
			}
		}
	}
	if m.LMHead != nil && m.LMHead != &m.Embed {
		mats = append(mats, m.LMHead)
	}
	const align = 64 // each matrix starts on a cache line
	total := 0
	for _, w := range mats {
		total += (int(w.Bytes()) + align - 1) &^ (align - 1)
	}
	r, err := hugepages.Alloc(total)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	pos := 0
	for _, w := range mats {
		n := int(w.Bytes())
		if n == 0 {
			continue
		}
		dst := unsafe.Pointer(&r.Bytes[pos])
		switch w.DType {
		case F32:
			f := unsafe.Slice((*float32)(dst), len(w.F32))
			copy(f, w.F32)
			w.F32 = f
		default:
			u := unsafe.Slice((*uint16)(dst), len(w.U16))
			copy(u, w.U16)
			w.U16 = u
		}
		pos += (n + align - 1) &^ (align - 1)
	}
	prev := m.closer
	m.closer = func() error {
		var err error
		if prev != nil {
			err = prev()
		}
		if ferr := r.Free(); ferr != nil && err == nil {
			err = ferr
		}
		return err
	}
	return int64(total), nil
}
