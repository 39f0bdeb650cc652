//go:build !linux

package hugepages

// Alloc returns size bytes from the Go heap: huge pages are only asked for
// on Linux. The alignment to Size is kept so callers see the same layout.
func Alloc(size int) (*Region, error) {
	if size <= 0 {
		return &Region{}, nil
	}
	raw := make([]byte, size+Size)
	off := 0
	if rem := addr(raw) % Size; rem != 0 {
		off = int(Size - rem)
	}
	return &Region{Bytes: raw[off : off+size : off+size], free: func() error { return nil }}, nil
}
