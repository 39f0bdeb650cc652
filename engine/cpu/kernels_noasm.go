//go:build !amd64 || purego

package cpu

import "unsafe"

// haveAsm is false: this build has no assembly kernels.
const haveAsm = false

// haveAVX512 is false: this build has no assembly kernels.
const haveAVX512 = false

// haveBF16Dot is false: this build has no assembly kernels.
const haveBF16Dot = false

// tileBAsm is never called when haveBF16Dot is false.
func tileBAsm(T, R int, w unsafe.Pointer, ldw int, x *uint16, ldx, k int, out *float32, ldo, nt, ldr int) {
	panic("cpu: no assembly kernels in this build")
}

// packBF16Asm writes x rounded to bf16 (toBF16) to out.
func packBF16Asm(x []float32, out []uint16) {
	for i, v := range x {
		out[i] = toBF16(v)
	}
}

// tileZAsm is never called when haveAVX512 is false.
func tileZAsm(dt int, P, R int, w unsafe.Pointer, ldw int, xp *float32, ldp, k int, out *float32, ldo, nt, ldr int) {
	panic("cpu: no assembly kernels in this build")
}

// tileAsm is never called when haveAsm is false.
func tileAsm(dt int, T, R int, w unsafe.Pointer, ldw int, x *float32, ldx, k int, out *float32, ldo, nt, ldr int) {
	panic("cpu: no assembly kernels in this build")
}

// sumLoad returns the sum of x (a load loop for bandwidth measurement).
func sumLoad(x []float32) float32 {
	var a [8]float32
	n := len(x) &^ 7
	for i := 0; i < n; i += 8 {
		for l := range 8 {
			a[l] += x[i+l]
		}
	}
	s := reduce8(&a)
	for _, v := range x[n:] {
		s += v
	}
	return s
}

// wsumAsm is never called when haveAsm is false.
func wsumAsm(p, v []float32, ldv int, o []float32) int {
	panic("cpu: no assembly kernels in this build")
}

// siluMul sets g[i] = silu(g[i]) * u[i] (len(u) >= len(g)).
func siluMul(g, u []float32) {
	for i := range g {
		g[i] = silu(g[i]) * u[i]
	}
}

// loraBAVX is never called when haveAsm is false.
func loraBAVX(b *float32, r int, u *float32, out *float32, n8 int, scale float32) {
	panic("cpu: no assembly kernels in this build")
}

// loraB16AVX is never called when haveAsm is false.
func loraB16AVX(b *uint16, r int, u *float32, out *float32, n8 int, scale float32) {
	panic("cpu: no assembly kernels in this build")
}

// expSumAVX is never called when haveAsm is false.
func expSumAVX(p *float32, n int, m float32, lanes *[8]float32) {
	panic("cpu: no assembly kernels in this build")
}

// expSumZAVX is never called when haveAVX512 is false.
func expSumZAVX(p *float32, n int, m float32, lanes *[8]float32) {
	panic("cpu: no assembly kernels in this build")
}

// wsumZAsm is never called when haveAVX512 is false.
func wsumZAsm(G, W int, p *float32, ldp int, v *float32, ldv, n int, o *float32, ldo int) {
	panic("cpu: no assembly kernels in this build")
}

// scoresZAsm is never called when haveAVX512 is false.
func scoresZAsm(G, W int, q *float32, hd int, kt *float32, ldk int, o *float32, ldo, nb int) {
	panic("cpu: no assembly kernels in this build")
}

// scoresYAsm is never called when haveAsm is false.
func scoresYAsm(G int, q *float32, hd int, kt *float32, ldk int, o *float32, ldo, nb int) {
	panic("cpu: no assembly kernels in this build")
}

// maxAVX is never called when haveAsm is false.
func maxAVX(p *float32, n int) float32 {
	panic("cpu: no assembly kernels in this build")
}
