package model_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"github.com/sooserve/sooserve/engine"
	"github.com/sooserve/sooserve/engine/cpu"
	"github.com/sooserve/sooserve/engine/model"
)

// TestMoveToHugePages: after the move every matrix lives in new memory with
// the same values, and the cpu executor computes bit-identical logits.
func TestMoveToHugePages(t *testing.T) {
	for _, dir := range []string{"tiny-llama", "tiny-llama-bf16", "tiny-gemma2"} {
		t.Run(dir, func(t *testing.T) {
			m, err := model.Load(filepath.Join("../../testdata/models", dir), model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			logits := func() []float32 {
				ex := cpu.New(m, cpu.Options{Threads: 2})
				s := ex.NewSequence()
				defer s.Release()
				out, err := ex.Forward(context.Background(), []engine.Row{{Seq: s, Tokens: []int32{1, 5, 9, 2}, Logits: engine.LogitsAll}})
				if err != nil {
					t.Fatal(err)
				}
				return out[0].Logits.Data
			}
			before := logits()
			q := m.Layers[0].Proj[model.Q].W
			oldQ := q.Bytes()
			oldPtr := dataPtr(&q)
			n, err := m.MoveToHugePages()
			if err != nil {
				t.Fatal(err)
			}
			moved := m.Layers[0].Proj[model.Q].W
			if n < oldQ || dataPtr(&moved) == oldPtr || dataPtr(&moved)%64 != 0 {
				t.Errorf("moved %d bytes; q_proj at %#x (was %#x)", n, dataPtr(&moved), oldPtr)
			}
			if m.Config.TieEmbeddings != (m.LMHead == &m.Embed) {
				t.Error("tied LM head no longer shares the embedding")
			}
			if after := logits(); !slices.Equal(before, after) {
				t.Error("logits changed after the move")
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func dataPtr(w *model.Matrix) uintptr {
	if w.DType == model.F32 {
		return uintptr(unsafe.Pointer(unsafe.SliceData(w.F32)))
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(w.U16)))
}
