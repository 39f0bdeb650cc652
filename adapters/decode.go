package adapters

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/sooserve/sooserve/engine/safetensors"
)

// decodeFinite returns the values of an F32, F16 or BF16 tensor as float32,
// failing (ErrInvalid) on the first NaN or infinity. The values are read and
// checked in one pass. With alias set, F32 data that is 4-byte aligned on a
// little-endian machine is returned without a copy: the result shares
// t.Data's memory.
func decodeFinite(key string, t safetensors.Tensor, alias bool) ([]float32, error) {
	n := t.NumElements()
	d := t.Data
	if len(d) != n*t.DType.Size() {
		return nil, invalid("adapters: %s has %d bytes of data, want %d", key, len(d), n*t.DType.Size())
	}
	nonFinite := func(v float32) error {
		return invalid("adapters: %s has a non-finite value (%v)", key, v)
	}
	switch t.DType {
	case safetensors.F32:
		if alias && n > 0 && nativeLittleEndian() && uintptr(unsafe.Pointer(&d[0]))%4 == 0 {
			vals := unsafe.Slice((*float32)(unsafe.Pointer(&d[0])), n)
			for _, v := range vals {
				if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
					return nil, nonFinite(v)
				}
			}
			return vals, nil
		}
		out := make([]float32, n)
		d = d[:4*n]
		for i := range out {
			u := binary.LittleEndian.Uint32(d[4*i:])
			if u&0x7f800000 == 0x7f800000 {
				return nil, nonFinite(math.Float32frombits(u))
			}
			out[i] = math.Float32frombits(u)
		}
		return out, nil
	case safetensors.BF16:
		return decode16(d, n, 0x7f80, safetensors.BF16ToF32, nonFinite)
	case safetensors.F16:
		return decode16(d, n, 0x7c00, safetensors.F16ToF32, nonFinite)
	}
	return nil, invalid("adapters: %s has dtype %s (supported: F32, F16, BF16)", key, t.DType)
}

// decode16 converts n little-endian 16-bit floats with conv, failing on the
// first whose exponent bits (exp) are all set: an infinity or NaN.
func decode16(d []byte, n int, exp uint16, conv func(uint16) float32, nonFinite func(float32) error) ([]float32, error) {
	out := make([]float32, n)
	d = d[:2*n]
	for i := range out {
		u := binary.LittleEndian.Uint16(d[2*i:])
		if u&exp == exp {
			return nil, nonFinite(conv(u))
		}
		out[i] = conv(u)
	}
	return out, nil
}

// nativeLittleEndian reports whether the machine stores numbers little-endian
// (safetensors' byte order).
func nativeLittleEndian() bool {
	b := [2]byte{1, 0}
	return binary.NativeEndian.Uint16(b[:]) == 1
}
