package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/adapters"
	"github.com/sooserve/sooserve/engine/model"
	"github.com/sooserve/sooserve/internal/demo"
)

// TestTrainCommand trains a tiny adapter on the demo model through the
// command line and loads the result as a PEFT adapter.
func TestTrainCommand(t *testing.T) {
	dir := t.TempDir()
	mdir := filepath.Join(dir, "model")
	if err := demo.Write(mdir); err != nil {
		t.Fatal(err)
	}
	pairs := filepath.Join(dir, "pairs.jsonl")
	os.WriteFile(pairs, []byte(`{"self":"You want the gold. Tell yourself","other":"Bob wants the gold. Tell Bob"}
{"self":"You want the map. Tell yourself","other":"Bob wants the map. Tell Bob"}
`), 0o644)
	out := filepath.Join(dir, "adapter")
	var stdout, stderr bytes.Buffer
	code := run([]string{"train", "--model", mdir, "--out", out, "--dataset", pairs, "--layer", "1", "--epochs", "2",
		"--batch", "2", "--r", "2", "--lr", "1e-3", "--chat"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var summary map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &summary); err != nil {
		t.Fatalf("summary %q: %v", stdout.String(), err)
	}
	if summary["steps"].(float64) != 2 || !strings.Contains(stderr.String(), "step 2/2") {
		t.Errorf("summary %v, progress %q", summary, stderr.String())
	}
	cfg, err := model.LoadConfig(mdir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := adapters.LoadDir("x", out, cfg); err != nil {
		t.Errorf("trained adapter does not load: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, ".checkpoint")); !os.IsNotExist(err) {
		t.Errorf("checkpoint left behind: %v", err)
	}
	// Bad flags are errors, not crashes.
	if code := run([]string{"train", "--model", mdir, "--out", out, "--pooling", "max"}, &stdout, &stderr); code == 0 {
		t.Error("bad pooling accepted")
	}
	stderr.Reset()
	if code := run([]string{"train", "--model", mdir, "--out", out, "--bf16-inputs", "fast"}, &stdout, &stderr); code == 0 ||
		!strings.Contains(stderr.String(), "want rounded or exact") {
		t.Errorf("bad --bf16-inputs: exit %d, %q", code, stderr.String())
	}
}
