package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPipelineSmoke runs train (both variants), soo-finetune and eval on a
// tiny budget and checks that checkpoints, plots and tables come out.
func TestPipelineSmoke(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	run := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if err := Main(context.Background(), args, &out, &errb); err != nil {
			t.Fatalf("soo rl %s: %v\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out.String()
	}
	tiny := []string{"--episodes", "12", "--episode-len", "20", "--batch", "32", "--steps-per-update", "20"}
	run(append([]string{"train", "--variant", "honest", "--out", p("h.json")}, tiny...)...)
	run(append([]string{"train", "--variant", "deceptive", "--out", p("d.json")}, tiny...)...)
	out := run(append([]string{"soo-finetune", "--from", p("d.json"), "--soo-batch", "16", "--out", p("s.json")}, tiny...)...)
	if !strings.Contains(out, "SOO steps") {
		t.Fatalf("fine-tune output: %s", out)
	}
	out = run("eval", "--honest", p("h.json"), "--deceptive", p("d.json"), "--soo", p("s.json"),
		"--episodes", "5", "--episode-len", "20", "--class-seeds", "2", "--class-episodes", "1,3", "--traj", "2", "--out", p("ev"))
	for _, want := range []string{"| soo |", "soo vs honest", "classification accuracy"} {
		if !strings.Contains(out, want) {
			t.Fatalf("eval output lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"h_returns.png", "ev/surface_soo.png", "ev/behaviour_diff.png", "ev/traj_deceptive.png", "ev/classification.png", "ev/eval.json"} {
		if st, err := os.Stat(p(f)); err != nil || st.Size() == 0 {
			t.Fatalf("missing output %s: %v", f, err)
		}
	}
	var errb bytes.Buffer
	if err := Main(context.Background(), []string{"train", "--variant", "sneaky", "--out", p("x.json")}, &errb, &errb); err == nil {
		t.Fatal("bad variant accepted")
	}
}
