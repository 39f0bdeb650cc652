//go:build linux

package hugepages

import (
	"fmt"
	"syscall"
)

// madvHugepage is Linux's MADV_HUGEPAGE.
const madvHugepage = 14

// Alloc returns size bytes of zeroed anonymous memory aligned to Size and
// marked for transparent huge pages (where the kernel has them enabled for
// madvise'd memory; elsewhere the memory is ordinary pages). The memory is
// outside the Go heap: only Free releases it.
func Alloc(size int) (*Region, error) {
	if size <= 0 {
		return &Region{}, nil
	}
	n := (size + Size - 1) &^ (Size - 1)
	raw, err := syscall.Mmap(-1, 0, n+Size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("hugepages: mmap %d bytes: %w", n+Size, err)
	}
	off := 0
	if rem := addr(raw) % Size; rem != 0 {
		off = int(Size - rem)
	}
	b := raw[off : off+n : off+n]
	// A kernel without transparent huge pages refuses the advice: the memory
	// then stays in ordinary pages, which is still correct.
	_ = syscall.Madvise(b, madvHugepage)
	return &Region{Bytes: b[:size], free: func() error {
		if err := syscall.Munmap(raw); err != nil {
			return fmt.Errorf("hugepages: munmap: %w", err)
		}
		return nil
	}}, nil
}
