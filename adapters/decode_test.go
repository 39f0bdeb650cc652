package adapters_test

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/safetensors"
)

// TestDecodeFinite checks the one-pass decoding of adapter weights: every
// dtype decodes as safetensors does, F32 is shared (not copied) only when
// aliasing is asked for and the data is aligned, and a NaN or infinity
// anywhere is an ErrInvalid error naming the tensor.
func TestDecodeFinite(t *testing.T) {
	vals := []float32{0, 1, -2.5, 3e-8, -65504, 0.333}
	buf := make([]byte, 4*len(vals)+4)
	for _, dtype := range []safetensors.DType{safetensors.F32, safetensors.F16, safetensors.BF16} {
		for _, off := range []int{0, 1} { // aligned, misaligned
			ten := safetensors.FromFloat32("t", dtype, []int{len(vals)}, vals)
			data := buf[off : off+len(ten.Data)]
			copy(data, ten.Data)
			ten.Data = data
			want, err := ten.Float32()
			if err != nil {
				t.Fatal(err)
			}
			for _, alias := range []bool{false, true} {
				got, err := adapters.DecodeFinite("t", ten, alias)
				if err != nil || !slices.Equal(got, want) {
					t.Fatalf("%s off %d alias %v: %v, %v; want %v", dtype, off, alias, got, err, want)
				}
				shared := unsafe.Pointer(&got[0]) == unsafe.Pointer(&data[0])
				if shared != (alias && off == 0 && dtype == safetensors.F32) {
					t.Errorf("%s off %d alias %v: shares the data: %v", dtype, off, alias, shared)
				}
			}
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
				b := safetensors.FromFloat32("t", dtype, []int{len(vals)}, append(slices.Clone(vals[:4]), bad, 1))
				copy(data, b.Data)
				for _, alias := range []bool{false, true} {
					if _, err := adapters.DecodeFinite("t", ten, alias); err == nil || !strings.Contains(err.Error(), "non-finite") {
						t.Errorf("%s off %d alias %v: %v accepted (%v)", dtype, off, alias, bad, err)
					}
				}
			}
		}
	}
	short := safetensors.Tensor{Name: "t", DType: safetensors.F32, Shape: []int{4}, Data: binary.LittleEndian.AppendUint32(nil, 1)}
	if _, err := adapters.DecodeFinite("t", short, true); err == nil {
		t.Error("short data accepted")
	}
}
