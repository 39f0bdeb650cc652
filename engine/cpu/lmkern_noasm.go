//go:build !amd64 || purego

package cpu

// expfsAVX2 is never called when haveAsm is false.
func expfsAVX2(dst, src *float32, n int, s, sub float32) {
	panic("cpu: no assembly kernels in this build")
}

// transpose8AVX2 is never called when haveAsm is false.
func transpose8AVX2(dst *float32, ldd int, src *float32, lds int, nb int) {
	panic("cpu: no assembly kernels in this build")
}
