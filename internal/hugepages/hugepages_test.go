package hugepages

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

func TestAlloc(t *testing.T) {
	for _, size := range []int{1, 4096, Size - 1, Size, 3*Size + 17} {
		r, err := Alloc(size)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Bytes) != size || addr(r.Bytes)%Size != 0 {
			t.Fatalf("size %d: got %d bytes at %#x", size, len(r.Bytes), addr(r.Bytes))
		}
		for i := range r.Bytes {
			if r.Bytes[i] != 0 {
				t.Fatalf("size %d: byte %d is %d", size, i, r.Bytes[i])
			}
			r.Bytes[i] = byte(i)
		}
		if err := r.Free(); err != nil {
			t.Fatal(err)
		}
		if err := r.Free(); err != nil {
			t.Fatal("second Free:", err)
		}
	}
	if r, err := Alloc(0); err != nil || len(r.Bytes) != 0 {
		t.Fatalf("Alloc(0) = %v, %v", r, err)
	}
}

// TestHugePagesUsed checks, where the kernel offers transparent huge pages
// for madvise'd memory, that a written region is really backed by them.
func TestHugePagesUsed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("huge pages are only asked for on Linux")
	}
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || !(strings.Contains(string(mode), "[madvise]") || strings.Contains(string(mode), "[always]")) {
		t.Skipf("transparent huge pages not offered for madvise'd memory (%q, %v)", mode, err)
	}
	before := anonHuge(t)
	r, err := Alloc(8 * Size)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Free()
	for i := 0; i < len(r.Bytes); i += 4096 {
		r.Bytes[i] = 1
	}
	if got := anonHuge(t) - before; got < 4*Size/1024 {
		t.Errorf("AnonHugePages grew by %d kB for a 16 MB region (want at least 8192 kB)", got)
	}
}

// anonHuge is this process's AnonHugePages in kB.
func anonHuge(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Skip(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "AnonHugePages:" {
			var n int
			for _, c := range f[1] {
				n = n*10 + int(c-'0')
			}
			return n
		}
	}
	t.Skip("no AnonHugePages in smaps_rollup")
	return 0
}
