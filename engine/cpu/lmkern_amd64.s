//go:build amd64 && !purego

#include "textflag.h"

// The AVX2 kernels of full-parameter training (lmkern_amd64.go): expf over
// eight lanes, operation for operation as the scalar expf, and 8×8 blocks
// of a transpose.

DATA lmexp<>+0(SB)/8, $0x3fb8aa3b3fb8aa3b
DATA lmexp<>+8(SB)/8, $0x3fb8aa3b3fb8aa3b
DATA lmexp<>+16(SB)/8, $0x3fb8aa3b3fb8aa3b
DATA lmexp<>+24(SB)/8, $0x3fb8aa3b3fb8aa3b
DATA lmexp<>+32(SB)/8, $0x4b4000004b400000
DATA lmexp<>+40(SB)/8, $0x4b4000004b400000
DATA lmexp<>+48(SB)/8, $0x4b4000004b400000
DATA lmexp<>+56(SB)/8, $0x4b4000004b400000
DATA lmexp<>+64(SB)/8, $0x3f3180003f318000
DATA lmexp<>+72(SB)/8, $0x3f3180003f318000
DATA lmexp<>+80(SB)/8, $0x3f3180003f318000
DATA lmexp<>+88(SB)/8, $0x3f3180003f318000
DATA lmexp<>+96(SB)/8, $0xb95e8083b95e8083
DATA lmexp<>+104(SB)/8, $0xb95e8083b95e8083
DATA lmexp<>+112(SB)/8, $0xb95e8083b95e8083
DATA lmexp<>+120(SB)/8, $0xb95e8083b95e8083
DATA lmexp<>+128(SB)/8, $0x3950696739506967
DATA lmexp<>+136(SB)/8, $0x3950696739506967
DATA lmexp<>+144(SB)/8, $0x3950696739506967
DATA lmexp<>+152(SB)/8, $0x3950696739506967
DATA lmexp<>+160(SB)/8, $0x3ab743ce3ab743ce
DATA lmexp<>+168(SB)/8, $0x3ab743ce3ab743ce
DATA lmexp<>+176(SB)/8, $0x3ab743ce3ab743ce
DATA lmexp<>+184(SB)/8, $0x3ab743ce3ab743ce
DATA lmexp<>+192(SB)/8, $0x3c0889083c088908
DATA lmexp<>+200(SB)/8, $0x3c0889083c088908
DATA lmexp<>+208(SB)/8, $0x3c0889083c088908
DATA lmexp<>+216(SB)/8, $0x3c0889083c088908
DATA lmexp<>+224(SB)/8, $0x3d2aa9c13d2aa9c1
DATA lmexp<>+232(SB)/8, $0x3d2aa9c13d2aa9c1
DATA lmexp<>+240(SB)/8, $0x3d2aa9c13d2aa9c1
DATA lmexp<>+248(SB)/8, $0x3d2aa9c13d2aa9c1
DATA lmexp<>+256(SB)/8, $0x3e2aaaaa3e2aaaaa
DATA lmexp<>+264(SB)/8, $0x3e2aaaaa3e2aaaaa
DATA lmexp<>+272(SB)/8, $0x3e2aaaaa3e2aaaaa
DATA lmexp<>+280(SB)/8, $0x3e2aaaaa3e2aaaaa
DATA lmexp<>+288(SB)/8, $0x3f0000003f000000
DATA lmexp<>+296(SB)/8, $0x3f0000003f000000
DATA lmexp<>+304(SB)/8, $0x3f0000003f000000
DATA lmexp<>+312(SB)/8, $0x3f0000003f000000
DATA lmexp<>+320(SB)/8, $0x3f8000003f800000
DATA lmexp<>+328(SB)/8, $0x3f8000003f800000
DATA lmexp<>+336(SB)/8, $0x3f8000003f800000
DATA lmexp<>+344(SB)/8, $0x3f8000003f800000
DATA lmexp<>+352(SB)/8, $0x42b0000042b00000
DATA lmexp<>+360(SB)/8, $0x42b0000042b00000
DATA lmexp<>+368(SB)/8, $0x42b0000042b00000
DATA lmexp<>+376(SB)/8, $0x42b0000042b00000
DATA lmexp<>+384(SB)/8, $0xc2ae999ac2ae999a
DATA lmexp<>+392(SB)/8, $0xc2ae999ac2ae999a
DATA lmexp<>+400(SB)/8, $0xc2ae999ac2ae999a
DATA lmexp<>+408(SB)/8, $0xc2ae999ac2ae999a
DATA lmexp<>+416(SB)/8, $0x7f8000007f800000
DATA lmexp<>+424(SB)/8, $0x7f8000007f800000
DATA lmexp<>+432(SB)/8, $0x7f8000007f800000
DATA lmexp<>+440(SB)/8, $0x7f8000007f800000
GLOBL lmexp<>(SB), RODATA|NOPTR, $448

// func expfsAVX2(dst, src *float32, n int, s, sub float32)
// dst[i] = expf(s·src[i] - sub) for i < n, n a multiple of 8.
TEXT ·expfsAVX2(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	VBROADCASTSS s+24(FP), Y15
	VBROADCASTSS sub+28(FP), Y14
	TESTQ CX, CX
	JZ expfs_done
expfs_loop:
	VMOVUPS (SI), Y0
	VMULPS Y15, Y0, Y0
	VSUBPS Y14, Y0, Y0          // x = s·v - sub
	VMULPS lmexp<>+0(SB), Y0, Y1
	VADDPS lmexp<>+32(SB), Y1, Y1 // t = x·log2e + magic
	VPSUBD lmexp<>+32(SB), Y1, Y2 // k = bits(t) - bits(magic)
	VSUBPS lmexp<>+32(SB), Y1, Y1 // fk = t - magic
	VMULPS lmexp<>+64(SB), Y1, Y3
	VSUBPS Y3, Y0, Y3           // r = x - fk·ln2hi
	VMULPS lmexp<>+96(SB), Y1, Y1
	VSUBPS Y1, Y3, Y3           // r -= fk·ln2lo
	VMOVUPS lmexp<>+128(SB), Y1
	VMULPS Y3, Y1, Y1
	VADDPS lmexp<>+160(SB), Y1, Y1
	VMULPS Y3, Y1, Y1
	VADDPS lmexp<>+192(SB), Y1, Y1
	VMULPS Y3, Y1, Y1
	VADDPS lmexp<>+224(SB), Y1, Y1
	VMULPS Y3, Y1, Y1
	VADDPS lmexp<>+256(SB), Y1, Y1
	VMULPS Y3, Y1, Y1
	VADDPS lmexp<>+288(SB), Y1, Y1    // p
	VMULPS Y3, Y3, Y4           // r·r
	VMULPS Y4, Y1, Y1
	VADDPS Y3, Y1, Y1
	VADDPS lmexp<>+320(SB), Y1, Y1   // y = p·r² + r + 1
	VPSLLD $23, Y2, Y2
	VPADDD Y2, Y1, Y1           // y·2^k
	VCMPPS $0x1e, lmexp<>+352(SB), Y0, Y5   // x > 88
	VBLENDVPS Y5, lmexp<>+416(SB), Y1, Y1
	VCMPPS $0x19, lmexp<>+384(SB), Y0, Y6   // !(x >= -87.3), NaN included
	VCMPPS $3, Y0, Y0, Y7             // x is NaN
	VANDPS Y0, Y7, Y7
	VBLENDVPS Y6, Y7, Y1, Y1
	VMOVUPS Y1, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ CX
	JNZ expfs_loop
expfs_done:
	VZEROUPPER
	RET

// func transpose8AVX2(dst *float32, ldd int, src *float32, lds int, nb int)
// For nb blocks j: dst[(8j+c)·ldd + r] = src[r·lds + 8j + c], r, c < 8.
TEXT ·transpose8AVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ ldd+8(FP), DX
	SHLQ $2, DX
	MOVQ src+16(FP), SI
	MOVQ lds+24(FP), BX
	SHLQ $2, BX
	MOVQ nb+32(FP), CX
	LEAQ (BX)(BX*2), R11        // 3·lds
	LEAQ (DX)(DX*2), R13        // 3·ldd
	TESTQ CX, CX
	JZ tr_done
tr_loop:
	LEAQ (SI)(BX*4), R12
	VMOVUPS (SI), Y0
	VMOVUPS (SI)(BX*1), Y1
	VMOVUPS (SI)(BX*2), Y2
	VMOVUPS (SI)(R11*1), Y3
	VMOVUPS (R12), Y4
	VMOVUPS (R12)(BX*1), Y5
	VMOVUPS (R12)(BX*2), Y6
	VMOVUPS (R12)(R11*1), Y7
	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12
	VUNPCKHPS Y5, Y4, Y13
	VUNPCKLPS Y7, Y6, Y14
	VUNPCKHPS Y7, Y6, Y15
	VSHUFPS $0x44, Y10, Y8, Y0
	VSHUFPS $0xee, Y10, Y8, Y1
	VSHUFPS $0x44, Y11, Y9, Y2
	VSHUFPS $0xee, Y11, Y9, Y3
	VSHUFPS $0x44, Y14, Y12, Y4
	VSHUFPS $0xee, Y14, Y12, Y5
	VSHUFPS $0x44, Y15, Y13, Y6
	VSHUFPS $0xee, Y15, Y13, Y7
	VPERM2F128 $0x20, Y4, Y0, Y8
	VPERM2F128 $0x20, Y5, Y1, Y9
	VPERM2F128 $0x20, Y6, Y2, Y10
	VPERM2F128 $0x20, Y7, Y3, Y11
	VPERM2F128 $0x31, Y4, Y0, Y12
	VPERM2F128 $0x31, Y5, Y1, Y13
	VPERM2F128 $0x31, Y6, Y2, Y14
	VPERM2F128 $0x31, Y7, Y3, Y15
	LEAQ (DI)(DX*4), R14
	VMOVUPS Y8, (DI)
	VMOVUPS Y9, (DI)(DX*1)
	VMOVUPS Y10, (DI)(DX*2)
	VMOVUPS Y11, (DI)(R13*1)
	VMOVUPS Y12, (R14)
	VMOVUPS Y13, (R14)(DX*1)
	VMOVUPS Y14, (R14)(DX*2)
	VMOVUPS Y15, (R14)(R13*1)
	ADDQ $32, SI
	LEAQ (DI)(DX*8), DI
	DECQ CX
	JNZ tr_loop
tr_done:
	VZEROUPPER
	RET
