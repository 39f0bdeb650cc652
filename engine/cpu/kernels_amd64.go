//go:build amd64 && !purego

package cpu

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

//go:generate go run kernels_gen.go

// cpuid1ECX returns ECX of CPUID leaf 1 (bit 29: F16C).
func cpuid1ECX() uint32

// haveAsm reports whether this CPU runs the AVX2/FMA/F16C kernels. It is
// computed once at init and never changes.
var haveAsm = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpuid1ECX()&(1<<29) != 0

// haveAVX512 reports whether this CPU (and OS) runs the AVX-512 pair kernels
// (AVX-512 F and DQ). It is computed once at init and never changes.
var haveAVX512 = haveAsm && cpu.X86.HasAVX512F && cpu.X86.HasAVX512DQ

// haveBF16Dot reports whether this CPU runs the AVX512_BF16 kernels
// (VDPBF16PS). It is computed once at init and never changes.
var haveBF16Dot = haveAVX512 && cpu.X86.HasAVX512BF16

// tileBAsm runs nt tiles of the generated AVX512_BF16 kernel for T tokens
// and R rows (see tileBTab).
func tileBAsm(T, R int, w unsafe.Pointer, ldw int, x *uint16, ldx, k int, out *float32, ldo, nt, ldr int) {
	tileBTab[T-1][R-1](w, ldw, x, ldx, k, out, ldo, nt, ldr)
}

// packBF16Asm writes x rounded to bf16 (toBF16) to out (len(out) >=
// len(x)) with VCVTNE2PS2BF16 where the CPU has it.
func packBF16Asm(x []float32, out []uint16) {
	n := 0
	if haveBF16Dot && len(x) >= 32 {
		n = len(x) &^ 31
		_ = out[n-1]
		packBF16AVX(&x[0], n, &out[0])
	}
	for i, v := range x[n:] {
		out[n+i] = toBF16(v)
	}
}

// tileZAsm runs nt tiles of the generated AVX-512 kernel for P token pairs
// and R rows (see tileZTab).
func tileZAsm(dt int, P, R int, w unsafe.Pointer, ldw int, xp *float32, ldp, k int, out *float32, ldo, nt, ldr int) {
	tileZTab[dt][P-1][R-1](w, ldw, xp, ldp, k, out, ldo, nt, ldr)
}

// tileAsm runs nt tiles of the generated T×R kernel for dtype dt (see tileTab).
func tileAsm(dt int, T, R int, w unsafe.Pointer, ldw int, x *float32, ldx, k int, out *float32, ldo, nt, ldr int) {
	tileTab[dt][T-1][R-1](w, ldw, x, ldx, k, out, ldo, nt, ldr)
}

// sumLoad returns the sum of x (a load loop for bandwidth measurement).
func sumLoad(x []float32) float32 {
	n := len(x) &^ 31
	var s float32
	if haveAsm && n > 0 {
		s = sumAVX(&x[0], n)
	} else {
		n = 0
	}
	for _, v := range x[n:] {
		s += v
	}
	return s
}

// wsumAsm writes o[c] = Σ_j p[j]·v[j*ldv+c] (fused, in order of j) for the
// first len(o)&^7 columns and returns how many it did.
func wsumAsm(p, v []float32, ldv int, o []float32) int {
	n, c := len(p), 0
	if n == 0 {
		return 0
	}
	for c+8 <= len(o) {
		w := min(8, (len(o)-c)/8)
		_ = v[(n-1)*ldv+c+8*w-1]
		wsumTab[w-1](&p[0], &v[c], ldv, n, &o[c])
		c += 8 * w
	}
	return c
}

// siluMul sets g[i] = silu(g[i]) * u[i] (len(u) >= len(g)), with the AVX2
// kernel where the CPU has it: the same bits as the scalar loop.
func siluMul(g, u []float32) {
	n := len(g) &^ 7
	if haveAsm && n > 0 {
		siluMulAVX(&g[0], &u[0], n)
	} else {
		n = 0
	}
	for i := n; i < len(g); i++ {
		g[i] = silu(g[i]) * u[i]
	}
}

// wsumZAsm runs the AVX-512 weighted-sum kernel for G heads over W
// 16-column vectors (see wsumZTab).
func wsumZAsm(G, W int, p *float32, ldp int, v *float32, ldv, n int, o *float32, ldo int) {
	wsumZTab[G-1][W-1](p, ldp, v, ldv, n, o, ldo)
}

// scoresZAsm runs the AVX-512 score kernel for G heads over nb blocks of W
// 16-key vectors (see scoresZTab).
func scoresZAsm(G, W int, q *float32, hd int, kt *float32, ldk int, o *float32, ldo, nb int) {
	scoresZTab[G-1][W-1](q, hd, kt, ldk, o, ldo, nb)
}

// scoresYAsm runs the AVX2 score kernel for G heads over nb blocks of 16
// keys (see scoresYTab).
func scoresYAsm(G int, q *float32, hd int, kt *float32, ldk int, o *float32, ldo, nb int) {
	scoresYTab[0][G-1](q, hd, kt, ldk, o, ldo, nb)
}
