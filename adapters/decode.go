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
	vals, _, err := decodeNorm(key, t, alias)
	return vals, err
}

// decodeNorm is decodeFinite that also returns the sum of the squares of
// the values (the squared Frobenius norm, in float64), computed in the same
// pass.
func decodeNorm(key string, t safetensors.Tensor, alias bool) ([]float32, float64, error) {
	n := t.NumElements()
	d := t.Data
	if len(d) != n*t.DType.Size() {
		return nil, 0, invalid("adapters: %s has %d bytes of data, want %d", key, len(d), n*t.DType.Size())
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
					return nil, 0, nonFinite(v)
				}
			}
			return vals, sumSquares(vals), nil
		}
		out := make([]float32, n)
		d = d[:4*n]
		for i := range out {
			u := binary.LittleEndian.Uint32(d[4*i:])
			if u&0x7f800000 == 0x7f800000 {
				return nil, 0, nonFinite(math.Float32frombits(u))
			}
			out[i] = math.Float32frombits(u)
		}
		return out, sumSquares(out), nil
	case safetensors.BF16:
		return decode16(d, n, 0x7f80, safetensors.BF16ToF32, nonFinite)
	case safetensors.F16:
		return decode16(d, n, 0x7c00, safetensors.F16ToF32, nonFinite)
	}
	return nil, 0, invalid("adapters: %s has dtype %s (supported: F32, F16, BF16)", key, t.DType)
}

// decode16 converts n little-endian 16-bit floats with conv, failing on the
// first whose exponent bits (exp) are all set: an infinity or NaN. It also
// returns the sum of the squares of the values.
func decode16(d []byte, n int, exp uint16, conv func(uint16) float32, nonFinite func(float32) error) ([]float32, float64, error) {
	out := make([]float32, n)
	d = d[:2*n]
	for i := range out {
		u := binary.LittleEndian.Uint16(d[2*i:])
		if u&exp == exp {
			return nil, 0, nonFinite(conv(u))
		}
		out[i] = conv(u)
	}
	return out, sumSquares(out), nil
}

// sumSquares returns the sum of the squares of v in float64 (four
// accumulators: the loop runs at the speed of the loads, not of one chain of
// dependent additions). A float32 squares to at most 1.2e77, so the sum of
// any tensor this package accepts is finite.
func sumSquares(v []float32) float64 {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(v); i += 4 {
		a, b, c, d := float64(v[i]), float64(v[i+1]), float64(v[i+2]), float64(v[i+3])
		s0 += a * a
		s1 += b * b
		s2 += c * c
		s3 += d * d
	}
	for ; i < len(v); i++ {
		a := float64(v[i])
		s0 += a * a
	}
	return (s0 + s1) + (s2 + s3)
}

// nativeLittleEndian reports whether the machine stores numbers little-endian
// (safetensors' byte order).
func nativeLittleEndian() bool {
	b := [2]byte{1, 0}
	return binary.NativeEndian.Uint16(b[:]) == 1
}
