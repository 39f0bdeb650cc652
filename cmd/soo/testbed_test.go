package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTestbedBuildCommand runs `soo testbed build` in miniature: it writes
// the model directory and prints the final gate table; a second build over
// a finished one starts afresh, and a wrong subcommand is refused.
func TestTestbedBuildCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tb")
	args := []string{"build", "--out", out, "--seed", "3", "--vocab", "400", "--hidden", "32", "--layers", "1", "--heads", "2",
		"--kv-heads", "1", "--intermediate", "64", "--max-positions", "256", "--batch", "2", "--stage1-tokens", "2048",
		"--stage1-warmup", "2", "--stage2-tokens", "1024", "--stage2-warmup", "1", "--eval-items", "1", "--final-items", "1",
		"--threads", "2", "--untied"}
	var stdout, stderr bytes.Buffer
	if err := runTestbed(args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	for _, want := range []string{"wrote " + out, "stage 1 simple: 4 steps", "stage 2 full: 2 steps", "final (1 items x 2 orders per kind): burglar dec"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), "eval stage 2 full step 2") {
		t.Errorf("stderr lacks the evaluation lines:\n%s", stderr.String())
	}
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "gates.json", "README.md"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if err := runTestbed([]string{"bogus"}, &stdout, &stderr); err == nil {
		t.Error("an unknown subcommand is accepted")
	}
	if err := runTestbed([]string{"build"}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Errorf("a build without --out: %v", err)
	}
}
