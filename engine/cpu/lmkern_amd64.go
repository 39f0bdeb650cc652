//go:build amd64 && !purego

package cpu

// expfsAVX2 sets dst[i] = expf(s·src[i] - sub) for i < n (a multiple of 8),
// eight lanes at a time with expf's own float32 operations, so that it
// agrees with expfs bit for bit. It needs AVX2 (haveAsm).
//
//go:noescape
func expfsAVX2(dst, src *float32, n int, s, sub float32)

// transpose8AVX2 transposes nb 8×8 blocks: for block j,
// dst[(8j+c)·ldd + r] = src[r·lds + 8j + c] for r, c < 8. It needs AVX2
// (haveAsm).
//
//go:noescape
func transpose8AVX2(dst *float32, ldd int, src *float32, lds int, nb int)
