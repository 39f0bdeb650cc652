package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sooserve/sooserve/internal/demo"
)

// probeReport is the JSON of `soo probe`, read back loosely.
type probeReport struct {
	Model, Adapter, Format, Scenarios, Rule string
	Conflict, Self, Pairs, Folds            int
	Lambda                                  float64
	MinAccuracy                             float64 `json:"min_accuracy"`
	Sites                                   []map[string]any
	Decision                                map[string]any
}

// checkProbeReport checks the report's shape: one row per layer and site in
// table order, each with every field, finite and in range.
func checkProbeReport(t *testing.T, r probeReport, layers int, sites []string) {
	t.Helper()
	if len(r.Sites) != layers*len(sites) {
		t.Fatalf("%d rows, want %d layers x %d sites", len(r.Sites), layers, len(sites))
	}
	fields := []string{"probe_accuracy", "other_as_conflict", "self_as_conflict", "transfer", "cosine",
		"scenario_norm", "soo_norm", "soo_mse", "score"}
	for i, row := range r.Sites {
		if row["layer"] != float64(i/len(sites)) || row["site"] != sites[i%len(sites)] {
			t.Errorf("row %d is layer %v %v", i, row["layer"], row["site"])
		}
		for _, f := range fields {
			v, ok := row[f].(float64)
			if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("row %d: %s = %v", i, f, row[f])
			}
		}
		for _, f := range []string{"probe_accuracy", "other_as_conflict", "self_as_conflict", "score"} {
			if v := row[f].(float64); v < 0 || v > 1 {
				t.Errorf("row %d: %s = %v, want a value in [0, 1]", i, f, v)
			}
		}
		if c := row["cosine"].(float64); c < -1 || c > 1 {
			t.Errorf("row %d: cosine %v", i, c)
		}
		if row["soo_mse"].(float64) <= 0 {
			t.Errorf("row %d: SOO MSE %v, want > 0 (self and other fragments differ)", i, row["soo_mse"])
		}
	}
	if r.Decision != nil && r.Decision["score"].(float64) <= 0 {
		t.Errorf("decision %v has no positive score", r.Decision)
	}
}

func TestProbeDemoModel(t *testing.T) {
	dir := t.TempDir()
	modelDir := filepath.Join(dir, "demo")
	if err := demo.Write(modelDir); err != nil {
		t.Fatal(err)
	}
	jsonPath := filepath.Join(dir, "probe.json")
	var out, errb bytes.Buffer
	args := []string{"probe", "--model", modelDir, "--n", "5", "--world-seed", "7", "--json", jsonPath}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	s := out.String()
	for _, want := range []string{"10 conflict vs 10 self scenarios (5-fold probe, λ 1), 156 SOO pairs (chat format)",
		"layer", "probe acc", "attn_out", "mlp_out", "resid_post", "decision site:", "rule: score = cosine × transfer", "wrote " + jsonPath} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var r probeReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if r.Model != modelDir || r.Adapter != "" || r.Format != "chat" || !strings.Contains(r.Scenarios, "seed 7") ||
		r.Conflict != 10 || r.Self != 10 || r.Pairs != 156 || r.Folds != 5 || r.Lambda != 1 || r.MinAccuracy != 0.75 ||
		!strings.HasPrefix(r.Rule, "score = cosine × transfer") {
		t.Errorf("report header: %+v", r)
	}
	if !bytes.Contains(b, []byte(`"decision":`)) {
		t.Errorf("the JSON has no \"decision\" key (null when no site qualifies)")
	}
	checkProbeReport(t, r, demo.Layers, []string{"attn_out", "mlp_out", "resid_post"})

	// The same run is deterministic: byte-identical JSON on stdout.
	var again bytes.Buffer
	args = []string{"probe", "--model", modelDir, "--n", "5", "--world-seed", "7", "--json", "-"}
	if code := run(args, &again, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !bytes.Equal(bytes.TrimSpace(again.Bytes()), bytes.TrimSpace(b)) {
		t.Errorf("a second run differs:\n%s\nvs\n%s", again.String(), b)
	}
}

func TestProbeScenarioFileAdapterRaw(t *testing.T) {
	// A model without a chat template (tiny-llama and the overlap
	// tokenizer), through a PEFT adapter, with scenarios and pairs from files
	// and raw fragments.
	dir := t.TempDir()
	conv := func(s string) []map[string]string { return []map[string]string{{"role": "user", "content": s}} }
	var conflict, self [][]map[string]string
	var pairs []map[string]string
	for _, item := range []string{"vase", "ring", "watch", "coin", "book", "clock"} {
		conflict = append(conflict, conv("Bob wants to steal the "+item+". Where is it?"))
		self = append(self, conv("You want to steal the "+item+". Where is it?"))
		pairs = append(pairs, map[string]string{"self": "You want the " + item, "other": "Bob wants the " + item})
	}
	scen, _ := json.Marshal(map[string]any{"conflict": conflict, "self": self})
	scenPath, pairsPath := filepath.Join(dir, "scen.json"), filepath.Join(dir, "pairs.json")
	pairsJSON, _ := json.Marshal(pairs)
	if err := os.WriteFile(scenPath, scen, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pairsPath, pairsJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	adapter := td("adapters", "tiny-llama-lora")
	var out, errb bytes.Buffer
	args := []string{"probe", "--model", td("models", "tiny-llama"), "--tokenizer", td("overlap", "tokenizer"),
		"--adapter", adapter, "--scenarios", scenPath, "--dataset", pairsPath, "--format", "raw",
		"--layers", "0,2", "--sites", "attn_out,resid_post", "--folds", "3", "--lambda", "0.5", "--min-accuracy", "0", "--json", "-"}
	if code := run(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "no chat template: the scenarios are read as plain text") {
		t.Errorf("no note about the missing chat template: %s", errb.String())
	}
	var r probeReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r.Adapter != adapter || r.Format != "raw" || r.Scenarios != scenPath || r.Conflict != 6 || r.Self != 6 ||
		r.Pairs != 6 || r.Folds != 3 || r.Lambda != 0.5 || r.MinAccuracy != 0 {
		t.Errorf("report header: %+v", r)
	}
	if len(r.Sites) != 4 {
		t.Fatalf("%d rows, want 2 layers x 2 sites", len(r.Sites))
	}
	for i, want := range []struct {
		layer float64
		site  string
	}{{0, "attn_out"}, {0, "resid_post"}, {2, "attn_out"}, {2, "resid_post"}} {
		if r.Sites[i]["layer"] != want.layer || r.Sites[i]["site"] != want.site {
			t.Errorf("row %d is layer %v %v, want %v %s", i, r.Sites[i]["layer"], r.Sites[i]["site"], want.layer, want.site)
		}
	}

	// The adapter changes the activations, so the report differs from the
	// base model's.
	var base bytes.Buffer
	args = []string{"probe", "--model", td("models", "tiny-llama"), "--tokenizer", td("overlap", "tokenizer"),
		"--scenarios", scenPath, "--dataset", pairsPath, "--format", "raw", "--layers", "0,2", "--sites", "attn_out,resid_post",
		"--folds", "3", "--lambda", "0.5", "--min-accuracy", "0", "--json", "-"}
	if code := run(args, &base, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rb probeReport
	if err := json.Unmarshal(base.Bytes(), &rb); err != nil {
		t.Fatal(err)
	}
	if rb.Sites[3]["soo_mse"] == r.Sites[3]["soo_mse"] {
		t.Errorf("the adapter left layer 2's SOO MSE at %v", rb.Sites[3]["soo_mse"])
	}
}

func TestProbeErrors(t *testing.T) {
	model, tok := td("models", "tiny-llama"), td("overlap", "tokenizer")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"probe"}, "--model is required"},
		{[]string{"probe", "--model", model, "--format", "full"}, "unknown fragment format"},
		{[]string{"probe", "--model", model, "--sites", "attn"}, "unknown site"},
		{[]string{"probe", "--model", model, "--layers", "a"}, `"a" is not an integer`},
		{[]string{"probe", "--model", model, "--folds", "1"}, "want at least 2"},
		{[]string{"probe", "--model", model, "--lambda", "0"}, "want a positive penalty"},
		{[]string{"probe", "--model", model, "--min-accuracy", "2"}, "want a value in [0, 1]"},
		{[]string{"probe", "--model", model, "--conflict-kinds", "thief"}, `unknown kind "thief"`},
		{[]string{"probe", "--model", model, "--scenarios", "/nonexistent.json"}, "--scenarios"},
		{[]string{"probe", "--model", model, "--tokenizer", tok, "--n", "3"}, "no chat template: fragments in chat format need one"},
		{[]string{"probe", "--model", model, "--tokenizer", tok, "--n", "3", "--format", "raw", "--layers", "7"}, "layer 7 is not in a model of 3 layers"},
		{[]string{"probe", "--model", model, "--tokenizer", tok, "--n", "2", "--format", "raw"}, "at least 5 samples of each class"},
		{[]string{"probe", "--model", model, "extra"}, "unexpected arguments"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code == 0 || !strings.Contains(errb.String(), tc.msg) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, errb.String(), tc.msg)
		}
	}
}
