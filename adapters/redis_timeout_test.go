package adapters

import (
	"testing"
	"time"
)

// TestTransferTimeout: file transfers get the client's timeout plus the
// time their size takes at transferRate, so a 512 MiB adapter (the upload
// limit) has about a minute and a small one stays near the client's bound.
func TestTransferTimeout(t *testing.T) {
	for _, tc := range []struct {
		base time.Duration
		n    int64
		want time.Duration
	}{
		{300 * time.Millisecond, 0, 300 * time.Millisecond},
		{300 * time.Millisecond, 8 << 20, 1300 * time.Millisecond},
		{300 * time.Millisecond, DefaultMaxBytes, 64300 * time.Millisecond},
	} {
		if got := transferTimeout(tc.base, tc.n); got != tc.want {
			t.Errorf("transferTimeout(%v, %d) = %v, want %v", tc.base, tc.n, got, tc.want)
		}
	}
}
