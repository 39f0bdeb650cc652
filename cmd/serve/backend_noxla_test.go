//go:build !xla

package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/server"
)

// TestXLABackendNeedsTag: a binary built without the xla tag refuses
// --backend xla:cuda at load with an error that says how to get it.
func TestXLABackendNeedsTag(t *testing.T) {
	c, err := parse([]string{"--backend", "xla:cuda", "--data", t.TempDir()}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, err = load(context.Background(), c, server.New(server.Options{}), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "-tags xla") {
		t.Fatalf("--backend xla:cuda without the xla tag: %v", err)
	}
}
